"""Accuracy under a memory budget: each shipped config trained with its own recipe
(epochs, optimizer, seed 0) without a budget and at 25% and 10% of its plan, each in
its own process; test accuracy and loss, the weights' largest difference from the run
without a budget (relative to the largest weight), what the budget cut (tiles,
micro-batches) and the time.

    python benchmarks/budget_accuracy.py [--json benchmarks/results/budget_accuracy.json] [CONFIG ...]

Tiles and micro-batches change the order of float sums, and Adam makes whole steps of
the rounding noise in a weight whose true gradient is 0 (a bias just before batch
norm). Training amplifies those differences over a whole recipe, so weights part, and
accuracy is what to compare."""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

from swap import cut, difference

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUDGETS = ("none", "25%", "10%")


def train(config: str, budget: str, work: str) -> dict:
    save, report = os.path.join(work, "w.bin"), os.path.join(work, "r.json")
    cmd = [sys.executable, "-m", "nntrainer_cli", "train", config, "-q", "--no-tracemalloc",
           "--no-run-dir", "--save", save, "--report", report, "--swap-dir", work]
    if budget != "none":
        cmd += ["--memory-budget", budget]
    subprocess.run(cmd, check=True, cwd=REPO)
    with open(report) as f:
        r = json.load(f)
    with open(save, "rb") as f:
        r["weights"] = f.read()
    return r


def what_cut(report: dict) -> str:
    swap = report["memory"]["swap"]
    if swap is None:
        return "-"
    return ", ".join(cut(swap["tiles"], swap["micro_batches"], swap["accumulate"])) \
        or "swap only"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    configs = args.configs or sorted(glob.glob(os.path.join(REPO, "configs", "*.ini")))
    rows = []
    print("| config | budget | cut | test acc. | test loss | weights vs none | time |")
    print("|---|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for config in configs:
            label = os.path.relpath(config, REPO)
            base = None
            for budget in BUDGETS:
                r = train(config, budget, work)
                base = base or r
                diff = difference(r["weights"], base["weights"])
                row = {"config": label, "budget": budget, "cut": what_cut(r),
                       "accuracy": r["test"]["accuracy"], "loss": r["test"]["loss"],
                       "difference": diff, "seconds": r["seconds"]}
                rows.append(row)
                print(f"| {label} | {budget} | {row['cut']} | {row['accuracy']:.4f} "
                      f"| {row['loss']:.4f} | {diff:.0e} | {row['seconds']:.1f} s |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
