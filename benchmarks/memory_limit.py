"""The smallest memory a whole training process can live in, as on a small device: each
run goes into its own cgroup (v1 memory controller) whose limit covers everything the
process holds (interpreter, libraries' buffers, arena, data, and page cache such as a
swap file's), and the kernel kills it when it needs more. The limit is bisected to
2 MiB for PyTorch and for ours: plain, and with --memory-budget auto (which reads the
limit, plans within it, and under a cgroup opens the swap file with O_DIRECT, so that
no page cache counts against the limit).

    sudo python benchmarks/memory_limit.py [--steps 10] [--json FILE]

Needs root and a writable /sys/fs/cgroup/memory (it says so otherwise). Each side runs
the same model, batch, optimizer (SGD, lr 0.01) and data as benchmarks/compare_torch.py,
2 threads. For ours, the report of a run at the smallest limit found gives the
breakdown: the process's resident memory before the model is built (interpreter,
numpy, data), the arena (resident part under a budget) and the growth beyond it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from compare_torch import ENV, data_file, selected, with_optimizer

CGROUP = "/sys/fs/cgroup/memory"
SIDES = {  # name: extra flags for ours (None: PyTorch)
    "torch": None,
    "ours": [],
    "ours, budget auto": ["--memory-budget", "auto"],
}
LOW, HIGH = 16, 1024   # MiB: the search range


def run_limited(cmd: list[str], mib: int) -> tuple[bool, str]:
    """Run `cmd` in a new cgroup limited to `mib` MiB: whether it trained, and why not."""
    group = os.path.join(CGROUP, f"nntrainer-bench-{os.getpid()}")
    os.mkdir(group)
    try:
        for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            path = os.path.join(group, name)
            if os.path.exists(path):
                with open(path, "w") as f:
                    f.write(str(mib * 2**20))
        join = lambda: open(os.path.join(group, "cgroup.procs"), "w").write(str(os.getpid()))  # noqa: E731
        res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, preexec_fn=join)
    finally:
        os.rmdir(group)
    if res.returncode == 0:
        return True, ""
    if res.returncode < 0:
        return False, "killed by the kernel (out of memory)"
    last = (res.stderr.strip().splitlines() or ["?"])[-1]
    return False, last[:160]


def smallest(cmd: list[str], low: int = LOW, high: int = HIGH) -> tuple[int | None, str]:
    """The smallest limit (MiB, 2 MiB steps, between `low` and `high`) at which `cmd`
    trains, and why the next lower one failed."""
    ok, why = run_limited(cmd, high)
    if not ok:
        return None, why
    lo, hi, reason = low, high, ""
    ok, why = run_limited(cmd, lo)
    if ok:
        return lo, "trains at the lowest limit tried"
    reason = why
    while hi - lo > 2:
        mid = (lo + hi) // 2
        ok, why = run_limited(cmd, mid)
        if ok:
            hi = mid
        else:
            lo, reason = mid, why
    return hi, reason


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="training steps per run")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--only", help="run only models whose name contains this")
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.access(CGROUP, os.W_OK):
        sys.exit(f"needs root and a writable {CGROUP} (cgroup v1 memory controller)")
    rows = []
    print(f"smallest whole-process memory limit (MiB, bisected to 2 MiB) at which {args.steps} "
          "training steps finish; SGD, 2 threads\n")
    print("| model | batch | side | smallest limit | below it | resident before model "
          "| arena | growth beyond it |")
    print("|---|---:|---|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for name, model, batch, kind, steps in selected(args.only, args.steps):
            data = data_file(work, model, batch, steps, kind)
            variant = with_optimizer(model, "sgd", work)
            compare = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   "compare_torch.py")
            for side, flags in SIDES.items():
                report = os.path.join(work, "r.json")
                if flags is None:
                    cmd = [sys.executable, compare, "--torch-worker", variant, str(batch),
                           data, str(steps), "sgd"]
                else:
                    cmd = [sys.executable, "-m", "nntrainer_cli", "train", variant, "-q",
                           "--epochs", "1", "--batch-size", str(batch), "--no-shuffle",
                           "--report", report, "--set", f"train_set.path={data}", *flags,
                           *(["--swap-dir", work] if flags else [])]
                limit, why = smallest(cmd)
                row = {"model": name, "batch": batch, "side": side, "limit_mib": limit,
                       "below": why}
                figures = ["-", "-", "-"]
                if flags is not None and limit is not None:
                    run_limited(cmd, limit)   # the report of a run at that limit
                    with open(report) as f:
                        m = json.load(f)["memory"]
                    arena = m["swap"]["resident_peak_bytes"] if m["swap"] else \
                        m["planned_peak_bytes"]
                    before = m["rss_peak_bytes"] - m["rss_delta_bytes"]
                    row.update(rss_before=before, arena=arena,
                               growth_beyond=m["rss_delta_bytes"] - arena)
                    figures = [f"{v / 2**20:.1f}" for v in (before, arena,
                                                            m["rss_delta_bytes"] - arena)]
                rows.append(row)
                print(f"| {name} | {batch} | {side} | {limit if limit else 'none'} | {why} | "
                      f"{' | '.join(figures)} |")
                sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
