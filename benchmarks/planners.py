"""Peak arena size per planner against the liveness lower bound and the naive sum, for
every shipped config and every supported NNTrainer INI in ../shared, at one batch size.

    python benchmarks/planners.py [--batch 32] [--json benchmarks/results/planners.json]

Prints a Markdown table (the one in the README) and optionally writes the raw figures."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

from nntrainer_cli.errors import UserError
from nntrainer_cli.pipeline import prepare
from nntrainer_cli.plan.planners import PLANNERS, Item, check_valid, lower_bound, peak_of

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CORPUS = os.path.join(REPO, "..", "shared", "nntrainer-ini")


def models() -> list[tuple[str, str]]:
    found = [(os.path.relpath(p, REPO), p) for p in sorted(glob.glob(os.path.join(REPO, "configs", "*.ini")))]
    found += [(os.path.relpath(p, CORPUS), p)
              for p in sorted(glob.glob(os.path.join(CORPUS, "**", "*.ini"), recursive=True))]
    return found


def measure(path: str, batch: int) -> dict | None:
    try:
        p = prepare(path, batch_size=batch, planner="naive", require_loss=False)
    except UserError:
        return None  # refused by `check` (plugin layers, TFLite backbones, …)
    roots = [s for s in p.plan.specs.values() if not s.alias_of]
    items = [Item(s.bytes, s.first, s.last) for s in roots]
    row = {"tensors": len(items), "lower_bound": lower_bound(items),
           "naive": sum(it.size for it in items), "planners": {}}
    for name, planner in PLANNERS.items():
        start = time.perf_counter()
        offsets = planner(items)
        seconds = time.perf_counter() - start
        peak = peak_of(items, offsets)
        assert not check_valid(items, offsets, peak), f"{name} invalid on {path}"
        row["planners"][name] = {"peak": peak, "seconds": round(seconds, 4)}
    row["best"] = min(v["peak"] for v in row["planners"].values())
    return row


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    results = {}
    names = [n for n in PLANNERS if n != "naive"]
    print(f"batch {args.batch}; MiB; ratio = best / lower bound\n")
    print("| model | lower bound | " + " | ".join(names) + " | naive | best/LB | saved vs naive |")
    print("|---|" + "---:|" * (len(names) + 4))
    for label, path in models():
        row = measure(path, args.batch)
        if row is None:
            continue
        results[label] = row
        cells = [mib(row["planners"][n]["peak"]) for n in names]
        print(f"| {label} | {mib(row['lower_bound'])} | " + " | ".join(cells) +
              f" | {mib(row['naive'])} | {row['best'] / row['lower_bound']:.3f} | "
              f"{1 - row['best'] / row['naive']:.0%} |")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "models": results}, f, indent=2)


if __name__ == "__main__":
    main()
