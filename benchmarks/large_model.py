"""A model larger than the memory it trains in: the deep MLP of
benchmarks/models/deep_mlp_50m.ini (784, 48 hidden layers of 1024, 10 classes: 50.4 M
parameters; weights plus Adam state about 600 MB, a 590 MiB plan) on the first
batches of MNIST-5k, in order.

1. Without a budget, with `--memory-budget 64MiB` (the swap file in the page cache),
   with `--memory-budget 64MiB --swap-direct`, and with `--memory-budget 8MiB` (every
   layer tiled), in alternating rounds: seconds per step
   (median of the run's steps; the median and spread over the rounds), measured peak,
   resident arena, and whether the weights equal the run without a budget, byte for byte
   (tiled runs: the largest difference relative to the largest weight).
2. Inside a memory cgroup limiting the whole process to `--limit` MiB (default 128, under
   a quarter of the plan), `--memory-budget auto --swap-direct`: the same figures.
3. The smallest whole-process limit (bisected to 2 MiB, as benchmarks/memory_limit.py
   does) for ours (auto + swap-direct) and for PyTorch on the same model, batch and
   optimizer (Adam).

    sudo python benchmarks/large_model.py [--steps 10] [--rounds 3] [--json FILE]

Parts 2 and 3 need root and a writable /sys/fs/cgroup/memory (v1); without them only
part 1 runs."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from compare_torch import ENV, HERE, data_file, with_optimizer
from memory_limit import CGROUP, run_limited, smallest

MODEL = os.path.join(HERE, "models", "deep_mlp_50m.ini")
BATCH = 64
SIDES = {"no budget": [], "64 MiB budget": ["--memory-budget", "64MiB"],
         "64 MiB budget, swap-direct": ["--memory-budget", "64MiB", "--swap-direct"],
         "8 MiB budget (tiled)": ["--memory-budget", "8MiB"]}


def command(work: str, data: str, name: str, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "nntrainer_cli", "train", MODEL, "-q", "--no-shuffle",
            "--epochs", "1", "--no-run-dir", "--set", f"train_set.path={data}",
            "--save", os.path.join(work, f"{name}.bin"),
            "--report", os.path.join(work, f"{name}.json"), "--swap-dir", work, *flags]


def difference(reference: str, other: str) -> float:
    """The largest weight difference relative to the largest weight, read through a
    memory map in chunks (no copy of the model in this process)."""
    a, b = (np.memmap(p, "<f4", "r", shape=(os.path.getsize(p) // 4 - 2,))
            for p in (reference, other))
    step = 1 << 22
    most = max(float(np.abs(a[i:i + step]).max()) for i in range(0, len(a), step))
    return max(float(np.abs(a[i:i + step] - b[i:i + step]).max())
               for i in range(0, len(a), step)) / most


def figures(work: str, name: str, reference: str | None) -> tuple[dict, str]:
    """A run's figures, and its weights' digest (held as a digest: a child process
    forked from one holding 200 MB of weights would start that large)."""
    with open(os.path.join(work, f"{name}.json")) as f:
        r = json.load(f)
    with open(os.path.join(work, f"{name}.bin"), "rb") as f:
        weights = hashlib.file_digest(f, "sha256").hexdigest()
    m = r["memory"]
    tiles = m["swap"]["tiles"] if m["swap"] else {}
    differs = None
    if tiles and reference is not None and weights != reference:
        differs = difference(os.path.join(work, "no_budget.bin"),
                             os.path.join(work, f"{name}.bin"))
    return {"step_seconds": r["step_seconds_median"], "planned_peak": m["planned_peak_bytes"],
            "tiles": tiles, "difference": differs,
            "measured_peak": m["measured_peak_bytes"],
            "arena": m["swap"]["resident_peak_bytes"] if m["swap"] else m["planned_peak_bytes"],
            "budget": m["swap"]["budget_bytes"] if m["swap"] else None,
            "rss_peak": m["rss_peak_bytes"],
            "same_weights": None if reference is None else weights == reference}, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="training steps per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=128, help="MiB for the whole process")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    results: dict = {"steps": args.steps, "batch": BATCH, "rounds": {}, "cores": os.cpu_count()}
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    with tempfile.TemporaryDirectory() as work:
        data = data_file(work, MODEL, BATCH, args.steps, "mnist")
        reference = None
        for k in range(args.rounds):
            for side, flags in SIDES.items():
                name = side.replace(" ", "_").replace(",", "")
                subprocess.run(command(work, data, name, flags), check=True, env=ENV)
                row, weights = figures(work, name, reference)
                if reference is None:
                    reference = weights   # the first run without a budget
                results["rounds"].setdefault(side, []).append(row)
        print(f"deep MLP, 50.4 M parameters, Adam, batch {BATCH}, {args.steps} steps, 2 threads; "
              f"seconds per step: median of {args.rounds} rounds (lowest-highest)\n")
        print("| run | s per step | planned peak (no swap) | resident arena | measured peak "
              "| process peak RSS | same weights |")
        print("|---|---:|---:|---:|---:|---:|---|")

        def show(side: str, rows: list[dict]) -> None:
            steps = [r["step_seconds"] for r in rows]
            r = rows[0]
            same = "yes" if all(x["same_weights"] is not False for x in rows) else "NO"
            if r["difference"] is not None:   # tiled: equal within float summation order
                same = f"tiled, {max(x['difference'] for x in rows):.0e}"
            print(f"| {side} | {statistics.median(steps):.3f} ({min(steps):.3f}-{max(steps):.3f}) "
                  f"| {mib(r['planned_peak'])} | {mib(r['arena'])} | {mib(r['measured_peak'])} "
                  f"| {mib(r['rss_peak'])} | {same} |")

        for side, rows in results["rounds"].items():
            show(side, rows)
        if os.geteuid() != 0 or not os.access(CGROUP, os.W_OK):
            print(f"\n(no cgroup parts: needs root and a writable {CGROUP})")
        else:
            flags = ["--memory-budget", "auto", "--swap-direct"]
            side = f"cgroup limit {args.limit} MiB, budget auto, swap-direct"
            ok, why = run_limited(command(work, data, "limited", flags), args.limit)
            if not ok:
                print(f"| {side} | failed: {why} |")
            else:
                row, _ = figures(work, "limited", reference)
                results["limited"] = {"limit_mib": args.limit, **row}
                show(side, [row])
            ours, ours_why = smallest(command(work, data, "bisect", flags))
            variant = with_optimizer(MODEL, "adam", work)
            torch_cmd = [sys.executable, os.path.join(HERE, "compare_torch.py"),
                         "--torch-worker", variant, str(BATCH), data, str(args.steps), "adam"]
            theirs, torch_why = smallest(torch_cmd, 256, 4096)
            results["smallest_limit_mib"] = {"ours": ours, "ours_below": ours_why,
                                             "torch": theirs, "torch_below": torch_why}
            print(f"\nsmallest whole-process limit: ours (auto, swap-direct) {ours} MiB "
                  f"(below: {ours_why}); PyTorch {theirs} MiB (below: {torch_why})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
