"""Training time, bytes moved and I/O wait under memory budgets (100/75/50/25/10% of
the plan without swap, and the smallest budget that works), each in its own process,
with the weights compared to the run without swap: byte for byte, or where layers were
tiled or the batch split into micro-batches, the largest difference relative to the
largest weight. Every run is made once
with tracemalloc for the measured peak, and three times without it for the time
(tracing slows small kernels; the fastest counts, and the three rounds go over all
budgets in turn).

    python benchmarks/swap.py [--direct] [--batch-size N] [--json FILE.json] [MODEL ...]

Default models: configs/*.ini, benchmarks/models/wide_mlp.ini and mlp_784.ini, each for
as many epochs as make its run without swap last 2 s (one epoch of the digits MLP takes
0.07 s, where start-up noise would decide the ratio). Time and I/O figures come from the
fastest run without tracemalloc, the measured peak from the traced one; "frugal" marks
budgets met only with smaller conv work buffers. "I/O copy + wait" is the compute
thread's time on swap I/O: copying loads the page cache holds (and stores) itself, then
waiting for the background thread; "loads cache/thread" counts the tensors loaded each
way (a load the thread made had to wait for the disk, or came while the thread was
busy). --direct opens the swap file with O_DIRECT, so reads come from the disk, not the
page cache. --batch-size N runs every model at batch N instead of its own (how the cost
of micro-batches depends on the work each part does). Prints the Markdown table used in
the README."""

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

import numpy as np

from nntrainer_cli.runtime.weights import weight_floats
from nntrainer_cli.report.tables import parts_order

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARES = ("100%", "75%", "50%", "25%", "10%", "min")
MIN_SECONDS = 2.0  # epochs enough for the run without swap to take this long
ROUNDS = 3


def train(model: str, work: str, name: str, extra: list[str]) -> dict:
    save, report = os.path.join(work, name + ".bin"), os.path.join(work, name + ".json")
    cmd = [sys.executable, "-m", "nntrainer_cli", "train", model, "-q", "--no-shuffle",
           "--save", save, "--report", report, *extra]
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


def difference(a: bytes, b: bytes) -> float:
    """Largest weight difference relative to the largest weight (.bin weights, without
    Adam's state: before this was fixed, the 'adam' tag read as a float, 4e27, was
    the largest value, so every Adam model's figure came out near 1e-30)."""
    x, y = weight_floats(a), weight_floats(b)
    return float(np.abs(x - y).max() / np.abs(y).max()) if len(x) == len(y) else math.inf


def cut(tiles: dict, micro_batches: int, accumulate: bool) -> list[str]:
    """What a budget cut: each tiled layer (`fc1×4`), and the micro-batches, run slot by
    slot or (`accumulate`) one after another."""
    return [f"{n}×{k}" for n, k in tiles.items()] + \
        ([f"{micro_batches} micro-batches {parts_order(accumulate)}"] if micro_batches > 1 else [])


def same(row: dict) -> str:
    if row["identical"]:
        return "yes"
    parts = cut(row["tiles"], row["micro_batches"], row["accumulate"])
    if parts:   # tiled or split: equal within float summation order
        return f"{', '.join(parts)}: {row['difference']:.0e}"
    return "NO"


def bench(model: str, work: str, direct: bool, batch: int | None) -> list[dict]:
    """One model: a traced run per budget (measured peak, weights), then ROUNDS rounds
    of untraced runs over all budgets, keeping each one's fastest: the rounds spread a
    shared VM's drifting speed over every budget alike."""
    label = os.path.relpath(model, REPO)
    sized = ["-b", str(batch)] if batch else []
    one = train(model, work, "probe", ["--epochs", "1", "--no-tracemalloc", *sized])["seconds"]
    epochs = ["--epochs", str(max(1, math.ceil(MIN_SECONDS / one))), *sized]
    label += f" ({epochs[1]} epoch{'s' if epochs[1] != '1' else ''}" + \
        (f", batch {batch})" if batch else ")")
    swap = ["--swap-dir", work] + (["--swap-direct"] if direct else [])
    runs = {"none": epochs}
    for share in SHARES:
        runs[share] = epochs + swap + (["--set", "model.memory_swap=true"] if share == "min"
                                       else ["--memory-budget", share])
    traced = {name: train(model, work, "traced", extra) for name, extra in runs.items()}
    fastest: dict[str, dict] = {}
    for _ in range(ROUNDS):
        for name, extra in runs.items():
            if not traced[name].get("infeasible"):
                r = train(model, work, "timed", extra + ["--no-tracemalloc"])
                if name not in fastest or r["seconds"] < fastest[name]["seconds"]:
                    fastest[name] = r
    base, t0 = traced["none"], fastest["none"]["seconds"]
    peak = base["memory"]["planned_peak_bytes"]
    print(f"| {label} | none ({peak / 2**20:.2f} MiB) | | | {t0:.2f} s | 1.00 | | | | |")
    rows = []
    for share in SHARES:
        r = traced[share]
        row = {"model": label, "share": share, "no_swap_peak": peak, "no_swap_s": t0}
        rows.append(row)
        if r.get("infeasible"):
            row.update(r)
            print(f"| {label} | {share} | needs {r['smallest'] / peak:.0%} of the plan "
                  f"| | | | | | | |")
            continue
        m, s, fast = r["memory"], r["memory"]["swap"], fastest[share]
        io = fast["memory"]["swap"]
        row.update(budget=s["budget_bytes"], resident=s["resident_peak_bytes"],
                   measured=m["measured_peak_bytes"], seconds=fast["seconds"],
                   frugal=s["frugal"], bytes_out=s["bytes_out"], bytes_in=s["bytes_in"],
                   io_wait=io["io_wait_seconds"], io_inline=io["inline_io_seconds"],
                   loads_inline=io["loads_inline"], loads_background=io["loads_background"],
                   identical=r["weights"] == base["weights"], tiles=s["tiles"],
                   micro_batches=s["micro_batches"], accumulate=s["accumulate"],
                   difference=difference(r["weights"], base["weights"]))
        name = f"{share} = " if share != "min" else "smallest = "
        name = ("frugal " if s["frugal"] > 1 else "") + name
        print(f"| {label} | {name}{s['budget_bytes'] / 2**20:.2f} MiB "
              f"({s['budget_bytes'] / peak:.0%}) | {s['resident_peak_bytes'] / 2**20:.2f} MiB "
              f"| {m['measured_peak_bytes'] / s['budget_bytes']:.2f} "
              f"| {fast['seconds']:.2f} s | {fast['seconds'] / t0:.2f} "
              f"| {s['bytes_out'] / 2**20:.0f} / {s['bytes_in'] / 2**20:.0f} MiB "
              f"| {row['io_inline']:.2f} + {row['io_wait']:.2f} s "
              f"| {row['loads_inline']} / {row['loads_background']} "
              f"| {same(row)} |")
        sys.stdout.flush()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--direct", action="store_true", help="O_DIRECT swap file")
    ap.add_argument("--batch-size", type=int, help="every model at this batch size")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    models = args.models or sorted(glob.glob(os.path.join(REPO, "configs", "*.ini"))) + \
        [os.path.join(HERE, "models", m) for m in ("wide_mlp.ini", "mlp_784.ini")]
    rows = []
    print("| model | budget | resident | measured/budget | time | vs no swap | out/in per run "
          "| I/O copy + wait | loads cache/thread | same weights |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    with tempfile.TemporaryDirectory() as work:
        for model in models:
            rows += bench(model, work, args.direct, args.batch_size)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"direct": args.direct, "batch_size": args.batch_size, "runs": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
