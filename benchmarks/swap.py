"""Training time, bytes moved and I/O wait under memory budgets (100/75/50/25% of the
plan without swap, and the smallest budget that works), each in its own process, with
the weights compared to the run without swap. Every run is made with tracemalloc for the
measured peak, and twice without it for the time (tracing slows small kernels; the
faster of the two counts).

    python benchmarks/swap.py [--direct] [--json benchmarks/results/swap.json] [MODEL ...]

Default models: configs/*.ini and benchmarks/models/wide_mlp.ini, each for as many
epochs as make its run without swap last 2 s (one epoch of the digits MLP takes 0.07 s,
where start-up noise would decide the ratio).
Time and I/O figures come from the run without tracemalloc, the measured peak from the
other; "frugal" marks budgets met only with smaller conv work buffers. "I/O copy + wait"
is the compute thread's time on swap I/O: copying loads the page cache holds (and
stores) itself, then waiting for the background thread; "loads cache/thread" counts the
tensors loaded each way (a load the thread made had to wait for the disk, or came while
the thread was busy).
--direct opens the swap file with O_DIRECT, so reads come from the disk, not the page
cache. Prints the Markdown table used in the README."""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARES = ("75%", "50%", "25%", "min")
MIN_SECONDS = 2.0  # epochs enough for the run without swap to take this long


def timed(model: str, work: str, extra: list[str]) -> dict:
    """The faster of two runs without tracemalloc (for time and I/O wait): a shared VM's
    timings jitter by tens of percent from run to run."""
    runs = [train(model, work, "timed", extra + ["--no-tracemalloc"]) for _ in range(2)]
    return min(runs, key=lambda r: r["seconds"])


def train(model: str, work: str, name: str, extra: list[str]) -> dict:
    save, report = os.path.join(work, name + ".bin"), os.path.join(work, name + ".json")
    cmd = [sys.executable, "-m", "nntrainer_cli", "train", model, "-q", "--no-shuffle", "--save", save, "--report", report, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode == 2 and "smallest budget that works" in res.stderr:
        smallest = int(re.search(r"works is ([\d,]+)", res.stderr).group(1).replace(",", ""))
        return {"infeasible": True, "smallest": smallest}
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    with open(report) as f:
        out = json.load(f)
    with open(save, "rb") as f:
        out["weights"] = f.read()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--direct", action="store_true", help="O_DIRECT swap file")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    models = args.models or sorted(glob.glob(os.path.join(REPO, "configs", "*.ini"))) + \
        [os.path.join(HERE, "models", "wide_mlp.ini")]
    rows = []
    print("| model | budget | resident | measured/budget | time | vs no swap | out/in per run "
          "| I/O copy + wait | loads cache/thread | same weights |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    with tempfile.TemporaryDirectory() as work:
        for model in models:
            label = os.path.relpath(model, REPO)
            one = timed(model, work, ["--epochs", "1"])["seconds"]
            epochs = max(1, math.ceil(MIN_SECONDS / one))
            base = train(model, work, "base", ["--epochs", str(epochs)])
            peak = base["memory"]["planned_peak_bytes"]
            t0 = timed(model, work, ["--epochs", str(epochs)])["seconds"]
            label += f" ({epochs} epoch{'s' if epochs > 1 else ''})"
            print(f"| {label} | none ({peak / 2**20:.2f} MiB) | | | {t0:.2f} s | 1.00 | | | | |")
            for share in SHARES:
                extra = ["--epochs", str(epochs), "--swap-dir", work] + \
                    (["--swap-direct"] if args.direct else [])
                if share == "min":
                    extra += ["--set", "model.memory_swap=true"]
                else:
                    extra += ["--memory-budget", share]
                r = train(model, work, "swap", extra)
                row = {"model": label, "share": share, "no_swap_peak": peak, "no_swap_s": t0}
                if r.get("infeasible"):
                    row.update(r)
                    print(f"| {label} | {share} | needs {r['smallest'] / peak:.0%} of the plan "
                          f"| | | | | | | |")
                else:
                    m, s = r["memory"], dict(r["memory"]["swap"])
                    fast = timed(model, work, extra)
                    r["seconds"] = fast["seconds"]
                    s.update({k: fast["memory"]["swap"][k] for k in (
                        "io_wait_seconds", "inline_io_seconds", "loads_inline",
                        "loads_background")})
                    row.update(budget=s["budget_bytes"], resident=s["resident_peak_bytes"],
                               measured=m["measured_peak_bytes"], seconds=r["seconds"],
                               frugal=s["frugal"],
                               bytes_out=s["bytes_out"], bytes_in=s["bytes_in"],
                               io_wait=s["io_wait_seconds"], io_inline=s["inline_io_seconds"],
                               loads_inline=s["loads_inline"],
                               loads_background=s["loads_background"],
                               identical=r["weights"] == base["weights"])
                    name = f"{share} = " if share != "min" else "smallest = "
                    name = ("frugal " if s["frugal"] > 1 else "") + name
                    print(f"| {label} | {name}{s['budget_bytes'] / 2**20:.2f} MiB "
                          f"({s['budget_bytes'] / peak:.0%}) | {s['resident_peak_bytes'] / 2**20:.2f} MiB "
                          f"| {m['measured_peak_bytes'] / s['budget_bytes']:.2f} "
                          f"| {r['seconds']:.2f} s | {r['seconds'] / t0:.2f} "
                          f"| {s['bytes_out'] / 2**20:.0f} / {s['bytes_in'] / 2**20:.0f} MiB "
                          f"| {s['inline_io_seconds']:.2f} + {s['io_wait_seconds']:.2f} s "
                          f"| {s['loads_inline']} / {s['loads_background']} "
                          f"| {'yes' if row['identical'] else 'NO'} |")
                rows.append(row)
                sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"direct": args.direct, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
