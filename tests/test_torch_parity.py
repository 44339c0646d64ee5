"""Numerical parity with PyTorch (optional: runs only when torch is installed,
`pip install -e .[bench]`). The same initial weights, the same batches in the same
order, one epoch of SGD or Adam; the final weights must agree.

The PyTorch side is written independently of our kernels: it walks our graph and runs
each node with torch's own functions and autograd, so only the model description is
shared."""

import os

import numpy as np
import pytest

# CI installs torch (.ci/run), so there a missing torch is a failure, not a skip
torch = __import__("torch") if os.environ.get("CI") else pytest.importorskip("torch")
F = torch.nn.functional

from nntrainer_cli.optim.schedulers import make_schedule  # noqa: E402
from nntrainer_cli.pipeline import prepare  # noqa: E402
from nntrainer_cli.runtime.executor import Executor  # noqa: E402

from helpers import REPO, run  # noqa: E402

DIGITS = os.path.join(REPO, "datasets", "digits", "train.dat")
RECORDS = 256  # 8 batches of 32
HEAD = """[Model]
loss = cross
batch_size = 32
epochs = 1
[Optimizer]
type = {optimizer}
learning_rate = {lr}
{extra}
[train_set]
type = file
path = {data}
[input]
type = input
input_shape = 1:8:8
"""
MODELS = {
    "mlp": """[flat]\ntype = flatten\n[fc1]\ntype = fully_connected\nunit = 32\nactivation = relu
[out]\ntype = fully_connected\nunit = 10\nactivation = softmax\n""",
    "conv_pool": """[conv]\ntype = conv2d\nfilters = 4\nkernel_size = 3,3\npadding = same
activation = relu
[pool]\ntype = pooling2d\npooling = max\npool_size = 2,2\nstride = 2,2\nflatten = true
[out]\ntype = fully_connected\nunit = 10\nactivation = softmax\n""",
    "batch_norm": """[conv]\ntype = conv2d\nfilters = 4\nkernel_size = 3,3\ndisable_bias = true
[bn]\ntype = batch_normalization\nactivation = relu
[pool]\ntype = pooling2d\npooling = average\npool_size = 2,2\nstride = 2,2\nflatten = true
[out]\ntype = fully_connected\nunit = 10\nactivation = softmax\n""",
    "residual": """[stem]\ntype = conv2d\nfilters = 4\nkernel_size = 3,3\npadding = same
activation = relu
[branch]\ntype = conv2d\nfilters = 4\nkernel_size = 3,3\npadding = same\ninput_layers = stem
[sum]\ntype = addition\ninput_layers = stem, branch\nactivation = tanh\nflatten = true
[out]\ntype = fully_connected\nunit = 10\nactivation = softmax\n""",
}
OPTIMIZERS = {"sgd": ("0.1", "", 1e-4), "adam": ("0.01", "torch_ref = true", 1e-3)}


def torch_step_fn(graph, params):
    """Forward of our graph with torch functions; returns the loss."""
    def forward(x, y):
        values = {}
        for n in graph.nodes:
            ins = [values[(c, i)] for c, i in n.inputs] or [x]
            p, t, w = n.layer.p, n.type, params.get(n.name, {})
            if t in ("input", "multiout", "flatten", "output"):
                out = [ins[0].reshape(n.ctx.output_shapes[0])] * len(n.ctx.output_shapes)
            elif t == "fully_connected":
                out = [ins[0] @ w["weight"] + w["bias"]]
            elif t == "conv2d":
                win = n.layer.win
                top, bottom, left, right = win.pad
                padded = F.pad(ins[0], (left, right, top, bottom))
                out = [F.conv2d(padded, w["filter"], w.get("bias"), stride=win.stride)]
            elif t == "pooling2d":
                pool = F.max_pool2d if p["pooling"] == "max" else F.avg_pool2d
                out = [pool(ins[0], p["pool_size"], p["stride"])]
            elif t == "batch_normalization":
                out = [F.batch_norm(ins[0], w["moving_mean"], w["moving_variance"], w["gamma"],
                                    w["beta"], training=True, momentum=1 - p["momentum"],
                                    eps=p["epsilon"])]
            elif t == "activation":
                out = [{"relu": F.relu, "tanh": torch.tanh}[p["activation"]](ins[0])]
            elif t == "addition":
                out = [sum(ins)]
            elif t == "cross_softmax":
                logits = ins[0].reshape(len(x), -1)
                return F.cross_entropy(logits, y.reshape(len(x), -1).argmax(1))
            else:
                raise AssertionError(f"no torch mirror for {t}")
            for i, o in enumerate(out):
                values[(n.name, i)] = o
    return forward


def read_weights(path, graph):
    """Our .bin file as {layer: {weight: array}} in graph order."""
    flat, at, out = np.fromfile(path, "<f4"), 0, {}
    for n in graph.nodes:
        for w in n.ctx.weights:
            size = int(np.prod(w.shape))
            out.setdefault(n.name, {})[w.name] = flat[at:at + size].reshape(w.shape)
            at += size
    return out


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_one_epoch_matches_pytorch(tmp_path, model, optimizer):
    torch.manual_seed(0)
    data = tmp_path / "train.dat"
    data.write_bytes(open(DIGITS, "rb").read()[:RECORDS * 74 * 4])
    lr, extra, tol = OPTIMIZERS[optimizer]
    ini = tmp_path / "m.ini"
    ini.write_text(HEAD.format(optimizer=optimizer, lr=lr, extra=extra, data=data) + MODELS[model])
    start, end = tmp_path / "start.bin", tmp_path / "end.bin"
    prepared = prepare(str(ini))
    graph = prepared.graph
    # our initializers make the starting point, saved as a weights-only init file
    ex = Executor(graph, prepared.plan, prepared.optimizer, make_schedule(prepared.cfg))
    ex.initialize(np.random.default_rng(0))
    with open(start, "wb") as f:
        for name in ex.weight_names():
            f.write(ex.view(name, 0).tobytes())
    res = run("train", str(ini), "-q", "--init-weights", str(start), "--no-shuffle",
              "--save", str(end))
    assert res.exit_code == 0, res.output

    params = {n: {k: torch.tensor(v.copy(), dtype=torch.float64, requires_grad=True)
                  for k, v in ws.items()} for n, ws in read_weights(start, graph).items()}
    trainable = [params[n.name][w.name] for n in graph.nodes for w in n.ctx.weights
                 if w.trainable]
    for n in graph.nodes:  # moving statistics are state, not parameters
        for w in n.ctx.weights:
            if not w.trainable:
                params[n.name][w.name].requires_grad_(False)
    opt = (torch.optim.SGD(trainable, lr=float(lr)) if optimizer == "sgd"
           else torch.optim.Adam(trainable, lr=float(lr), betas=(0.9, 0.999), eps=1e-7))
    records = np.fromfile(data, "<f4").reshape(RECORDS, 74)
    step = torch_step_fn(graph, params)
    for b in range(0, RECORDS, 32):
        x = torch.tensor(records[b:b + 32, :64], dtype=torch.float64).reshape(32, 1, 8, 8)
        y = torch.tensor(records[b:b + 32, 64:], dtype=torch.float64)
        opt.zero_grad()
        step(x, y).backward()
        opt.step()

    ours = read_weights(end, graph)
    start_w = read_weights(start, graph)
    for n in graph.nodes:
        for w in n.ctx.weights:
            if not w.trainable:
                continue
            theirs = params[n.name][w.name].detach().numpy()
            diff = np.abs(ours[n.name][w.name] - theirs).max()
            moved = np.abs(theirs - start_w[n.name][w.name]).max()
            assert diff <= tol, f"{model}/{optimizer} {n.name}.{w.name}: max |diff| {diff:.2e}"
            assert moved > 10 * tol or w.name == "bias", "the weights hardly moved: no test"
