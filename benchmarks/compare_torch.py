"""nntrainer_cli against PyTorch (CPU) on the same models, data, batch and thread count.

    pip install -e .[bench]
    python benchmarks/compare_torch.py [--rounds 5] [--steps 30] [--json FILE]

Each run is its own process with 2 threads (OMP, OpenBLAS, MKL and torch all pinned).
The sides run in alternating rounds (torch, ours, and for the MLP a bare numpy loop,
then again, --rounds times), so a slow spell of a shared machine hits both; each
figure is the median over the rounds, with the spread (lowest-highest) beside it.
A run's step time is its median step after 3 warm-up steps. Memory is measured the
same way on both sides: peak RSS during training minus RSS just before the model is
built (after imports and data set-up), with the kernel's high-water mark reset there
(/proc/self/clear_refs). The PyTorch model is built from the same model file (our
parsed graph, run with torch.nn modules and autograd).

The bare numpy loop ("numpy floor") is the MLP's own step written out by hand: the
same matrix products, relu, softmax cross entropy and optimizer update as ours, on
preallocated arrays, with no graph, plan or dispatch. It is the floor for our MLP step.
"Products alone" times, for every model, only the matrix products a step needs (conv
as im2col: forward, weight gradient, input derivative), each on ready contiguous
operands in its faster orientation: what an implementation on numpy's BLAS spends at
the least, before lowering, pooling, activations and the update.

Each round also measures a 512x512x512 float32 product on 2 threads (the last column):
the shared VM has states far apart, and the slower one moves our conv steps much more
than PyTorch's.

Prints the Markdown table used in the README, headed by the machine, the BLAS each
side uses (threadpoolctl) and the exact PyTorch build."""

from __future__ import annotations

import argparse
import json
import os
import platform
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
MODELS = {  # name: (model file, batch size, data: "mnist" or random records, most steps)
    "MLP 784-1024-1024-10": (os.path.join(HERE, "models", "mlp_784.ini"), 64, "mnist", None),
    "LeNet-5 28x28": (os.path.join(HERE, "models", "lenet5.ini"), 64, "mnist", None),
    "VGG-style 3x32x32": (os.path.join(HERE, "models", "vgg_cifar.ini"), 64, "random", None),
    "ResNet-18 (corpus) 3x32x32": (os.path.join(CORPUS, "Applications", "Resnet", "res",
                                                "resnet18.ini"), 16, "random", 12),
}
ENV = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "OPENBLAS_NUM_THREADS": str(THREADS),
       "MKL_NUM_THREADS": str(THREADS)}
FLOOR_MODELS = {"MLP 784-1024-1024-10"}   # models the bare numpy loop can run


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


def selected(only: str | None, steps: int):
    """The models to run (those whose name holds `only`, else all): name, model file,
    batch, data kind and steps (at most `steps`)."""
    for name, (model, batch, kind, most) in MODELS.items():
        if not only or only in name:
            yield name, model, batch, kind, min(steps, most or steps)


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
           "--save", os.path.join(work, "ours.bin"), "--no-run-dir",
           "--set", f"train_set.path={data}"]
    subprocess.run(cmd, check=True, env=ENV)
    with open(report) as f:
        r = json.load(f)
    m = r["memory"]
    return {"rss_delta": m["rss_delta_bytes"], "rss_peak": m["rss_peak_bytes"],
            "step_ms": 1000 * r["step_seconds_median"], "planned": m["planned_peak_bytes"],
            "reset": m["rss_peak_reset"]}


PROBE = """
import time, numpy as np
a = np.random.default_rng(0).random((512, 512), np.float32)
rates = []
for _ in range(5):   # the best of 5 batches of 20, after the first (threads starting)
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    rates.append(2 * 512**3 * 20 / (time.perf_counter() - t) / 1e9)
print(max(rates[1:]))
"""


def blas_rate() -> float:
    """The 512x512x512 float32 product's GFLOP/s at this moment, on the threads both
    sides get. The shared VM runs in states far apart (about 190 and 165 GFLOP/s here)
    that move our conv steps much more than PyTorch's, so every round records it."""
    return float(subprocess.run([sys.executable, "-c", PROBE], check=True, env=ENV,
                                capture_output=True, text=True).stdout)


def worker(kind, model, batch, data, steps, optimizer) -> dict:
    """A torch or numpy-floor run in its own process: its figures, as JSON."""
    cmd = [sys.executable, __file__, f"--{kind}-worker", model, str(batch), data, str(steps),
           optimizer]
    out = subprocess.run(cmd, check=True, env=ENV, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def load_batches(model, batch, data, steps):
    """The graph of `model`, and its training batches as float32 arrays and class ids."""
    from nntrainer_cli.pipeline import prepare

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
    batches = [(np.ascontiguousarray(xs[i:i + batch]), np.ascontiguousarray(ys[i:i + batch]))
               for i in range(0, len(xs) - batch + 1, batch)][:steps]
    return graph, classes, batches


# --- the bare numpy loop, run in its own process --------------------------------------
def floor_worker(model, batch, data, steps, optimizer) -> None:
    """The MLP's step by hand: fully connected layers with relu between them, softmax
    cross entropy, and our optimizer's own update, on preallocated float32 arrays."""
    from nntrainer_cli.optim.optimizers import make_optimizer
    from nntrainer_cli.runtime.measure import RssDelta, rss_peak_bytes

    graph, classes, batches = load_batches(model, batch, data, steps)
    units = [n.layer.p["unit"] for n in graph.nodes if n.type == "fully_connected"]
    sizes = [int(np.prod(graph.inputs[0].ctx.input_shapes[0][1:]))] + units
    opt = make_optimizer(optimizer, {"learning_rate": 0.01})
    rng = np.random.default_rng(0)
    f32 = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    with RssDelta() as rss:   # Xavier uniform, as ours: with smaller weights (±0.05) the
        # loop ran a third slower, likely on denormal numbers in the products
        ws = [rng.uniform(-1, 1, (a, b)).astype(np.float32) * np.float32(np.sqrt(6 / (a + b)))
              for a, b in zip(sizes, sizes[1:])]
        bs = [f32(b) for b in sizes[1:]]
        gws, gbs = [f32(*w.shape) for w in ws], [f32(*b.shape) for b in bs]
        state = [[f32(*w.shape) for _ in opt.state] for w in ws + bs]
        hs = [f32(batch, n) for n in sizes]            # inputs, then each layer's output
        ds = [f32(batch, n) for n in sizes]            # their derivatives
        onehot = f32(batch, classes)
        times = []
        for it, (x, y) in enumerate(batches):
            start = time.perf_counter()
            np.copyto(hs[0], x.reshape(batch, -1))
            for i, (w, b) in enumerate(zip(ws, bs)):
                np.matmul(hs[i], w, out=hs[i + 1])
                hs[i + 1] += b
                if i < len(ws) - 1:
                    np.maximum(hs[i + 1], 0, out=hs[i + 1])
            p = hs[-1]                                  # softmax, then its derivative
            p -= p.max(axis=1, keepdims=True)
            np.exp(p, out=p)
            p /= p.sum(axis=1, keepdims=True)
            onehot.fill(0)
            onehot[np.arange(batch), y] = 1
            np.subtract(p, onehot, out=ds[-1])
            ds[-1] /= batch
            for i in reversed(range(len(ws))):
                np.matmul(hs[i].T, ds[i + 1], out=gws[i])
                np.sum(ds[i + 1], axis=0, out=gbs[i])
                if i > 0:
                    np.matmul(ds[i + 1], ws[i].T, out=ds[i])
                    np.greater(hs[i], 0, out=hs[i])     # relu's derivative, as ours
                    ds[i] *= hs[i]
            for w, g, st in zip(ws + bs, gws + gbs, state):
                opt.apply(w, g, st, 0.01, it)
            times.append(time.perf_counter() - start)
    print(json.dumps({"rss_delta": rss.delta, "rss_peak": rss_peak_bytes(),
                      "step_ms": 1000 * float(np.median(times[WARMUP:] or times)),
                      "reset": rss.reset}))


# --- every matrix product of a step alone, run in its own process --------------------
def products(graph) -> list[tuple[int, int, int]]:
    """(M, K, N) of each product a training step needs at the least, with convolution
    as im2col: per conv2d and fully_connected layer its forward, and its weight gradient
    and input derivative where the step runs them (the plan's execution order)."""
    from nntrainer_cli.layers.base import Phase
    from nntrainer_cli.plan.order import execution_order

    _, slots, _ = execution_order(graph)
    shapes = []
    for n in graph.nodes:
        runs = slots[n.name].parts
        if n.type == "conv2d":
            batch, c, _, _ = n.ctx.input_shapes[0]
            _, f, oh, ow = n.ctx.output_shapes[0]
            kh, kw = n.layer.p["kernel_size"]
            pixels, k = batch * oh * ow, c * kh * kw
        elif n.type == "fully_connected":
            shape = n.ctx.input_shapes[0]
            pixels, k, f = int(np.prod(shape[:-1])), shape[-1], n.layer.p["unit"]
        else:
            continue
        shapes += [(pixels, k, f)] + [shape for phase, shape in (
            (Phase.CALC_GRADIENT, (f, pixels, k)), (Phase.CALC_DERIVATIVE, (pixels, f, k)))
            if phase in runs]
    return shapes


def gemm_worker(model, batch, data, steps, optimizer) -> None:
    """The step's products alone (`products`), on preallocated contiguous float32
    operands, each in the faster of its two orientations (A·B or Bᵀ·Aᵀ, as the last
    warm-up step timed them): what any im2col implementation on numpy's BLAS spends at the
    least, before lowering, pooling, activations and the update."""
    graph, _, _ = load_batches(model, batch, data, steps)
    rng = np.random.default_rng(0)
    pairs = []
    for m, k, n in products(graph):
        a, b = (rng.standard_normal(s, dtype=np.float32) for s in ((m, k), (k, n)))
        pairs.append([(a, b, np.empty((m, n), np.float32)),
                      (np.ascontiguousarray(b.T), np.ascontiguousarray(a.T),
                       np.empty((n, m), np.float32))])
    best = [0] * len(pairs)
    times = []
    for step in range(steps):
        if step < WARMUP:   # time both orientations of every product
            for i, both in enumerate(pairs):
                took = []
                for a, b, out in both:
                    start = time.perf_counter()
                    np.matmul(a, b, out=out)
                    took.append(time.perf_counter() - start)
                best[i] = int(took[1] < took[0])
            continue
        start = time.perf_counter()
        for both, i in zip(pairs, best):
            a, b, out = both[i]
            np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    print(json.dumps({"step_ms": 1000 * float(np.median(times))}))


# --- the PyTorch side, run in its own process ----------------------------------------
def torch_net(graph):
    """Our parsed graph as a torch module, node by node (conv, linear, batch norm,
    pooling, the activations, addition, concat)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

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

    return Net()


def torch_worker(model, batch, data, steps, optimizer) -> None:
    import torch
    from torch.nn import functional as F

    from nntrainer_cli.runtime.measure import RssDelta, rss_peak_bytes

    torch.set_num_threads(THREADS)
    graph, classes, arrays = load_batches(model, batch, data, steps)
    batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in arrays]

    with RssDelta() as rss:
        net = torch_net(graph)
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


def environment() -> dict:
    """What the figures depend on: the machine, and the libraries each side computes with."""
    import numpy
    import torch
    from threadpoolctl import threadpool_info

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    blas = [{k: lib.get(k) for k in ("internal_api", "version", "num_threads",
                                      "architecture")} for lib in threadpool_info()]
    build = torch.__config__.show().splitlines()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": numpy.__version__, "threadpools": blas, "torch": torch.__version__,
            "torch_build": [line.strip(" -") for line in build
                            if "Math Kernel" in line or "MKL-DNN" in line
                            or "CPU capability" in line]}


def spread(values: list[float], digits: int = 1) -> str:
    """Median and (lowest-highest) of one side's times."""
    return f"{np.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30,
                    help="training steps per run (ResNet-18: at most 12)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per model")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--only", help="run only models whose name contains this")
    ap.add_argument("--torch-worker", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--floor-worker", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--gemm-worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for kind, run in (("torch_worker", torch_worker), ("floor_worker", floor_worker),
                      ("gemm_worker", gemm_worker)):
        if getattr(args, kind):
            model, batch, data, steps, optimizer = getattr(args, kind)
            run(model, int(batch), data, int(steps), optimizer)
            return
    info = environment()
    rows = []
    blas = ", ".join(" ".join(str(b[k]) for k in ("internal_api", "version", "architecture")
                              if b[k]) for b in info["threadpools"])
    print(f"{info['cpu']}, {info['cores']} cores; Python {info['python']}, numpy "
          f"{info['numpy']} ({blas}); torch {info['torch']} "
          f"({'; '.join(info['torch_build'])})\n")
    print(f"{THREADS} threads each side; {args.rounds} alternating rounds of {args.steps} "
          f"steps (ResNet-18: 12); ms/step: median over rounds (lowest-highest) of each run's median step "
          f"after {WARMUP} warm-up steps; memory: peak RSS during training minus RSS "
          "before the model is built, median over rounds\n")
    print("| model | optimizer | batch | params | torch MiB | ours MiB | ratio | torch ms/step "
          "| ours ms/step | ratio | numpy floor ms/step | ours / floor | products alone ms/step "
          "| ours / products | BLAS GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for name, model, batch, kind, steps in selected(args.only, args.steps):
            data = data_file(work, model, batch, steps, kind)
            for optimizer in ("sgd", "adam"):
                variant = with_optimizer(model, optimizer, work)
                runs = {"torch": [], "ours": [], "floor": [], "gemm": [], "blas": []}
                for _ in range(args.rounds):
                    runs["blas"].append(blas_rate())
                    runs["torch"].append(worker("torch", variant, batch, data, steps,
                                                optimizer))
                    runs["ours"].append(ours(variant, batch, data, steps, optimizer, work))
                    if name in FLOOR_MODELS:
                        runs["floor"].append(worker("floor", variant, batch, data, steps,
                                                    optimizer))
                    runs["gemm"].append(worker("gemm", variant, batch, data, steps, optimizer))
                ms = {side: [r["step_ms"] for r in runs[side]]
                      for side in ("torch", "ours", "floor", "gemm")}
                mib = {side: float(np.median([r["rss_delta"] for r in runs[side]])) / 2**20
                       for side in ("torch", "ours")}
                t, o = np.median(ms["torch"]), np.median(ms["ours"])
                floor = (f"{spread(ms['floor'])} | {o / np.median(ms['floor']):.2f}"
                         if ms["floor"] else "- | -")
                gemm = f"{spread(ms['gemm'])} | {o / np.median(ms['gemm']):.2f}"
                print(f"| {name} | {optimizer} | {batch} | {runs['torch'][0]['params']:,} "
                      f"| {mib['torch']:.1f} | {mib['ours']:.1f} | {mib['ours'] / mib['torch']:.2f} "
                      f"| {spread(ms['torch'])} | {spread(ms['ours'])} | {o / t:.2f} | {floor} | {gemm} "
                      f"| {spread(runs['blas'], 0)} |")
                sys.stdout.flush()
                rows.append({"model": name, "optimizer": optimizer, "batch": batch,
                             "steps": steps, **runs})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": THREADS, "steps": args.steps, "rounds": args.rounds,
                       "environment": info, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
