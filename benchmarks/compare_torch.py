"""nntrainer_cli against PyTorch (CPU) on the same models, data, batch and thread count.

    pip install -e .[bench]
    python benchmarks/compare_torch.py [--steps 30] [--json benchmarks/results/torch.json]

Each run is its own process with 2 threads. Memory is measured the same way on both
sides: peak RSS during training minus RSS just before the model is built (after imports
and data set-up), with the kernel's high-water mark reset there (/proc/self/clear_refs);
the whole-process peak RSS is given too. Speed is the median step time after 3 warm-up
steps. The PyTorch model is built from the same model file (our parsed graph, run with
torch.nn modules and autograd). Prints the Markdown table used in the README."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CORPUS = os.path.join(REPO, "..", "shared", "nntrainer-ini")
THREADS = 2
WARMUP = 3
MODELS = {  # name: (model file, batch size, data: "mnist" or random records)
    "MLP 784-1024-1024-10": (os.path.join(HERE, "models", "mlp_784.ini"), 64, "mnist"),
    "LeNet-5 28x28": (os.path.join(HERE, "models", "lenet5.ini"), 64, "mnist"),
    "VGG-style 3x32x32": (os.path.join(HERE, "models", "vgg_cifar.ini"), 64, "random"),
    "ResNet-18 (corpus) 3x32x32": (os.path.join(CORPUS, "Applications", "Resnet", "res",
                                                "resnet18.ini"), 16, "random"),
}
ENV = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "OPENBLAS_NUM_THREADS": str(THREADS),
       "MKL_NUM_THREADS": str(THREADS)}


def data_file(work: str, model: str, batch: int, steps: int, kind: str) -> str:
    """The training data both sides read: MNIST-5k, or seeded random records."""
    n = batch * steps
    if kind == "mnist":
        path = os.path.join(work, f"mnist-{n}.npz")
        with np.load(os.path.join(REPO, "datasets", "mnist", "train.npz")) as f:
            np.savez(path, x=f["x"][:n], y=f["y"][:n])
        return path
    from nntrainer_cli.pipeline import prepare
    g = prepare(model, batch_size=batch).graph
    features = int(np.prod(g.inputs[0].ctx.input_shapes[0][1:]))
    classes = int(np.prod(g.losses[0].ctx.input_shapes[0][1:]))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, features)).astype("<f4")
    y = np.eye(classes, dtype="<f4")[rng.integers(0, classes, n)]
    path = os.path.join(work, f"random-{features}-{classes}-{n}.dat")
    np.concatenate([x, y], axis=1).tofile(path)
    return path


def with_optimizer(model: str, optimizer: str, work: str) -> str:
    """A copy of the model file whose [Optimizer] is plain `optimizer` at rate 0.01
    (the same on both sides), without a learning-rate schedule or save path."""
    from nntrainer_cli.config.reader import read_model_file
    from nntrainer_cli.config.sections import Entry
    from nntrainer_cli.config.writers import to_ini

    sections = [s for s in read_model_file(model) if s.name != "learningratescheduler"]
    for s in sections:
        if s.name == "optimizer":
            s.entries = {"type": Entry("type", optimizer, 0),
                         "learning_rate": Entry("learning_rate", "0.01", 0)}
        if s.name == "model":
            s.entries.pop("save_path", None)
    path = os.path.join(work, f"{os.path.basename(model)[:-4]}-{optimizer}.ini")
    with open(path, "w") as f:
        f.write(to_ini(sections))
    return path


def ours(model, batch, data, steps, optimizer, work) -> dict:
    report = os.path.join(work, "ours.json")
    cmd = [sys.executable, "-m", "nntrainer_cli", "train", model, "-q", "--no-tracemalloc",
           "--no-shuffle", "--epochs", "1", "--batch-size", str(batch), "--report", report,
           "--save", os.path.join(work, "ours.bin"),
           "--set", f"train_set.path={data}"]
    subprocess.run(cmd, check=True, env=ENV)
    with open(report) as f:
        r = json.load(f)
    m = r["memory"]
    return {"rss_delta": m["rss_delta_bytes"], "rss_peak": m["rss_peak_bytes"],
            "step_ms": 1000 * r["step_seconds_median"], "planned": m["planned_peak_bytes"],
            "reset": m["rss_peak_reset"]}


def torch_side(model, batch, data, steps, optimizer) -> dict:
    cmd = [sys.executable, __file__, "--torch-worker", model, str(batch), data, str(steps),
           optimizer]
    out = subprocess.run(cmd, check=True, env=ENV, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- the PyTorch side, run in its own process ----------------------------------------
def torch_worker(model, batch, data, steps, optimizer) -> None:
    import torch
    from torch import nn
    from torch.nn import functional as F

    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.runtime.measure import RssDelta, rss_peak_bytes

    torch.set_num_threads(THREADS)
    graph = prepare(model, batch_size=batch).graph
    in_shape = graph.inputs[0].ctx.input_shapes[0][1:]
    classes = int(np.prod(graph.losses[0].ctx.input_shapes[0][1:]))
    if data.endswith(".npz"):
        with np.load(data) as f:
            xs = (f["x"].astype(np.float32) / 255).reshape((-1,) + in_shape)
            ys = f["y"].astype(np.int64)
    else:
        raw = np.fromfile(data, "<f4").reshape(-1, int(np.prod(in_shape)) + classes)
        xs, ys = raw[:, :-classes].reshape((-1,) + in_shape), raw[:, -classes:].argmax(1)
    batches = [(torch.from_numpy(np.ascontiguousarray(xs[i:i + batch])),
                torch.from_numpy(np.ascontiguousarray(ys[i:i + batch])))
               for i in range(0, len(xs) - batch + 1, batch)][:steps]

    class Net(nn.Module):
        """Our graph, node by node, with torch modules."""

        def __init__(self):
            super().__init__()
            self.mods = nn.ModuleDict()
            for n in graph.nodes:
                p, t, shapes = n.layer.p, n.type, n.ctx.input_shapes
                key = n.name.replace("/", "_").replace(".", "_")
                if t == "fully_connected":
                    self.mods[key] = nn.Linear(shapes[0][-1], p["unit"], bias=not p["disable_bias"])
                elif t == "conv2d":
                    top, bottom, left, right = n.layer.win.pad
                    self.mods[key] = nn.Sequential(
                        nn.ZeroPad2d((left, right, top, bottom)),
                        nn.Conv2d(shapes[0][1], p["filters"], p["kernel_size"], p["stride"],
                                  dilation=p["dilation"], bias=not p["disable_bias"]))
                elif t == "batch_normalization":
                    self.mods[key] = nn.BatchNorm2d(shapes[0][1], eps=p["epsilon"],
                                                    momentum=1 - p["momentum"])

        def forward(self, x):
            values = {}
            for n in graph.nodes:
                ins = [values[(c, i)] for c, i in n.inputs] or [x]
                p, t = n.layer.p, n.type
                key = n.name.replace("/", "_").replace(".", "_")
                if t in ("input", "multiout", "output"):
                    out = [ins[0]] * len(n.ctx.output_shapes)
                elif t in ("flatten", "reshape"):
                    out = [ins[0].reshape((len(ins[0]),) + n.ctx.output_shapes[0][1:])]
                elif t == "fully_connected":
                    out = [self.mods[key](ins[0])]
                elif t in ("conv2d", "batch_normalization"):
                    out = [self.mods[key](ins[0])]
                elif t == "pooling2d":
                    kind = p["pooling"]
                    if kind.startswith("global"):
                        out = [(F.adaptive_max_pool2d if kind == "global_max"
                                else F.adaptive_avg_pool2d)(ins[0], 1)]
                    else:
                        pool = F.max_pool2d if kind == "max" else F.avg_pool2d
                        out = [pool(ins[0], p["pool_size"], p["stride"])]
                elif t == "activation":
                    out = [{"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                            "softmax": lambda v: F.softmax(v, -1)}[p["activation"]](ins[0])]
                elif t == "addition":
                    out = [sum(ins)]
                elif t == "concat":
                    out = [torch.cat(ins, dim=n.layer.axis)]
                elif t == "cross_softmax":
                    return ins[0].reshape(len(x), -1)
                else:
                    raise SystemExit(f"no torch version of {t}")
                for i, o in enumerate(out):
                    values[(n.name, i)] = o

    with RssDelta() as rss:
        net = Net()
        opt = (torch.optim.SGD(net.parameters(), lr=0.01) if optimizer == "sgd"
               else torch.optim.Adam(net.parameters(), lr=0.01))
        times = []
        for x, y in batches:
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in net.parameters())
    print(json.dumps({"rss_delta": rss.delta, "rss_peak": rss_peak_bytes(), "params": params,
                      "step_ms": 1000 * float(np.median(times[WARMUP:] or times)),
                      "reset": rss.reset}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps per run")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--only", help="run only models whose name contains this")
    ap.add_argument("--torch-worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        model, batch, data, steps, optimizer = args.torch_worker
        torch_worker(model, int(batch), data, int(steps), optimizer)
        return
    rows = []
    print(f"{THREADS} threads each side; median step after {WARMUP} warm-up steps; memory = "
          "peak RSS during training minus RSS before the model is built\n")
    print("| model | optimizer | batch | params | torch MiB | ours MiB | ratio | torch ms/step "
          "| ours ms/step | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for name, (model, batch, kind) in MODELS.items():
            if args.only and args.only not in name:
                continue
            data = data_file(work, model, batch, args.steps, kind)
            for optimizer in ("sgd", "adam"):
                variant = with_optimizer(model, optimizer, work)
                t = torch_side(variant, batch, data, args.steps, optimizer)
                o = ours(variant, batch, data, args.steps, optimizer, work)
                row = {"model": name, "optimizer": optimizer, "batch": batch, "torch": t,
                       "ours": o}
                rows.append(row)
                mib = lambda b: b / 2**20  # noqa: E731
                print(f"| {name} | {optimizer} | {batch} | {t['params']:,} "
                      f"| {mib(t['rss_delta']):.1f} | {mib(o['rss_delta']):.1f} "
                      f"| {o['rss_delta'] / t['rss_delta']:.2f} | {t['step_ms']:.1f} "
                      f"| {o['step_ms']:.1f} | {o['step_ms'] / t['step_ms']:.2f} |")
                sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": THREADS, "steps": args.steps, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
