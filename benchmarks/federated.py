"""Federated averaging figures, each run in its own process (`--report` JSON):

1. accuracy: configs/digits_mlp.ini trained centrally (`train`, its 30 epochs, with its
   learning rate 0.001 and with 0.003) against `federate` over 8 clients, Dirichlet(0.5)
   and IID, 10 rounds of 5 local epochs at 0.003 (each record is seen 50 times, against
   30 centrally); per seed (0..--seeds-1) the test accuracy, and the validation accuracy
   per round (median over seeds);
2. engines: the same federation with the local engine and with Flower (a server and 8
   client processes on 127.0.0.1), alternating, --rounds times: wall time from start to
   end, seconds per round after the first, and each process's peak resident memory.

Reports the median and the spread (min..max). Needs the `federated` extra (Flower).

    python benchmarks/federated.py [--seeds 5] [--rounds 5] [--json benchmarks/results/federated.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "configs", "digits_mlp.ini")
LR = ["--set", "learningratescheduler.learning_rate=0.003"]   # the clients' (FedAvg likes more)
FEDERATION = ["--clients", "8", "--rounds", "10", "--local-epochs", "5", *LR]


def nntrainer(*args: str) -> tuple[dict, float]:
    """The report of one run, and its wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nntrainer_cli", *args, "-q", "--report", out],
                       check=True, cwd=REPO)
        wall = time.perf_counter() - t0
        with open(out) as f:
            return json.load(f), wall


def spread(values: list[float], digits: int = 4) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}..{max(values):.{digits}f})")


def accuracy(seeds: int) -> dict:
    runs = {"centralized": [], "centralized lr 0.003": [], "dirichlet:0.5": [], "iid": []}
    for seed in range(seeds):
        runs["centralized"].append(nntrainer("train", MODEL, "--seed", str(seed))[0])
        runs["centralized lr 0.003"].append(nntrainer("train", MODEL, "--seed", str(seed),
                                                      *LR)[0])
        for split in ("dirichlet:0.5", "iid"):
            runs[split].append(nntrainer("federate", MODEL, *FEDERATION, "--partition", split,
                                         "--seed", str(seed))[0])
    return {name: {"test_accuracy": [r["test"]["accuracy"] for r in reports],
                   "val_accuracy_by_round": [
                       statistics.median(r["epochs"][k]["val_accuracy"] for r in reports)
                       for k in range(len(reports[0]["epochs"]))]}
            for name, reports in runs.items()}


def engines(rounds: int) -> dict:
    out = {"local": [], "flower": []}
    for _ in range(rounds):
        for engine in out:
            report, wall = nntrainer("federate", MODEL, *FEDERATION, "--partition",
                                     "dirichlet:0.5", "--engine", engine)
            fed = report["federation"]
            out[engine].append({
                "wall_seconds": wall,
                "round_seconds": statistics.median(e["seconds"] for e in report["epochs"][1:]),
                "outside_rounds_seconds": wall - sum(e["seconds"] for e in report["epochs"]),
                "process_peak_rss_bytes": report["memory"]["rss_peak_bytes"],
                "client_peak_rss_bytes": max((c["peak_rss_bytes"] or 0)
                                             for c in fed["rounds"][-1]),
                "test_accuracy": report["test"]["accuracy"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    acc, eng = accuracy(args.seeds), engines(args.rounds)
    print(f"test accuracy over seeds 0..{args.seeds - 1}, median (min..max):")
    for name, r in acc.items():
        print(f"  {name:20s} {spread(r['test_accuracy'])}")
        print(f"  {'':20s} val by round: "
              + " ".join(f"{v:.3f}" for v in r["val_accuracy_by_round"]))
    mib = 1 / 2**20
    print(f"engines over {args.rounds} alternating runs, median (min..max):")
    for name, runs in eng.items():
        col = lambda key, scale=1.0: spread([r[key] * scale for r in runs], 2)  # noqa: E731
        print(f"  {name:7s} wall {col('wall_seconds')} s, per round {col('round_seconds')} s, "
              f"outside the rounds {col('outside_rounds_seconds')} s, "
              f"this process {col('process_peak_rss_bytes', mib)} MiB"
              + (f", each client {col('client_peak_rss_bytes', mib)} MiB"
                 if name == "flower" else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"accuracy": acc, "engines": eng, "command": " ".join(sys.argv)}, f,
                      indent=1)


if __name__ == "__main__":
    main()
