"""Time per epoch of configs/lenet_mnist.ini: nntrainer_cli against PyTorch (CPU) on the
same recipe.

    pip install -e .[bench]
    python benchmarks/epoch_torch.py [--rounds 5] [--epochs 3] [--json FILE]

The recipe is the config's: its model (our parsed graph, run with torch.nn modules on
the PyTorch side, as in compare_torch.py), Adam at its learning rate, batch 32, the
3,500 training images reshuffled every epoch (109 whole batches), and the 500
validation images evaluated at each epoch's end. An epoch's time runs from its first
batch to the end of its validation, reading the data included; ours is the `seconds`
of each epoch in `nntrainer train --report`. Each run is its own process with 2
threads; the sides alternate, --rounds times; a run's figure is its median epoch after
the first, and the table gives the median over rounds with the spread."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from compare_torch import ENV, REPO, THREADS, environment, spread, torch_net

CONFIG = os.path.join(REPO, "configs", "lenet_mnist.ini")


def ours(epochs: int, work: str) -> list[float]:
    report = os.path.join(work, "ours.json")
    subprocess.run([sys.executable, "-m", "nntrainer_cli", "train", CONFIG, "-q",
                    "--no-tracemalloc", "--no-run-dir", "--epochs", str(epochs),
                    "--report", report], check=True, env=ENV)
    with open(report) as f:
        return [e["seconds"] for e in json.load(f)["epochs"]]


def theirs(epochs: int) -> list[float]:
    out = subprocess.run([sys.executable, __file__, "--torch-worker", str(epochs)],
                         check=True, env=ENV, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_worker(epochs: int) -> None:
    import torch
    from torch.nn import functional as F

    from nntrainer_cli.pipeline import prepare

    torch.set_num_threads(THREADS)
    p = prepare(CONFIG)
    batch, shape = p.graph.batch_size, p.graph.inputs[0].ctx.input_shapes[0][1:]

    def load(name):
        with np.load(os.path.join(REPO, "datasets", "mnist", name)) as f:
            return f["x"], f["y"].astype(np.int64)
    train, valid = load("train.npz"), load("valid.npz")
    net = torch_net(p.graph)
    opt = torch.optim.Adam(net.parameters(), lr=p.cfg.optimizer_props["learning_rate"])
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(len(train[0]))
        for i in range(0, len(order) - batch + 1, batch):
            rows = order[i:i + batch]
            x = torch.from_numpy(train[0][rows].astype(np.float32) / 255).reshape((-1,) + shape)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), torch.from_numpy(train[1][rows])).backward()
            opt.step()
        with torch.no_grad():
            for i in range(0, len(valid[0]), batch):
                x = torch.from_numpy(valid[0][i:i + batch].astype(np.float32) / 255)
                F.cross_entropy(net(x.reshape((-1,) + shape)),
                                torch.from_numpy(valid[1][i:i + batch]))
        seconds.append(time.perf_counter() - start)
    print(json.dumps(seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not counted)")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--torch-worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        torch_worker(args.torch_worker)
        return
    runs = {"torch": [], "ours": []}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.rounds):
            runs["torch"].append(theirs(args.epochs))
            runs["ours"].append(ours(args.epochs, work))
    med = {k: [float(np.median(r[1:])) for r in v] for k, v in runs.items()}
    info = environment()
    print(f"{info['cpu']}, {info['cores']} cores; torch {info['torch']}; {THREADS} threads "
          f"each side; {args.rounds} alternating rounds of {args.epochs} epochs\n")
    print("| config | torch s/epoch | ours s/epoch | ratio |\n|---|---:|---:|---:|")
    print(f"| lenet_mnist.ini (batch 32, Adam, 3,500 train + 500 valid) | "
          f"{spread(med['torch'], 2)} | {spread(med['ours'], 2)} | "
          f"{np.median(med['ours']) / np.median(med['torch']):.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": info, "threads": THREADS, "epochs": args.epochs,
                       "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
