"""Models exported by PyTorch itself (torch.onnx.export, the TorchScript exporter and
the newer torch.export one): a LeNet, a VGG-style and a ResNet-style CNN, trained briefly
on the shipped MNIST subset so that their accuracy means something. Imported, they give
PyTorch's outputs (1e-4), the same eval accuracy, and one epoch of fine-tuning equal to
PyTorch fine-tuning the model the file describes. Needs torch and the import extra (CI
installs both, and onnxscript for the newer exporter)."""

import copy
import json
import os
import warnings

import numpy as np
import pytest

# CI installs torch and onnxscript (.ci/run, the test extra): there a missing one fails
torch = __import__("torch") if os.environ.get("CI") else pytest.importorskip("torch")
from safetensors.numpy import load_file  # noqa: E402
from torch import nn  # noqa: E402

from nntrainer_cli.pipeline import prepare  # noqa: E402

from helpers import REPO, run  # noqa: E402

MNIST = os.path.join(REPO, "datasets", "mnist")
RECORDS, BATCH, LR = 448, 64, 0.05   # the fine-tuning epoch: 7 batches of the 500 validation records
TOL = 1e-4


class ConvBN(nn.Sequential):
    """A convolution and its batch norm: the exporters fold them into one Conv."""
    def __init__(self, i, o, bias=True):
        super().__init__(nn.Conv2d(i, o, 3, padding=1, bias=bias), nn.BatchNorm2d(o))


def fold(module):
    """The model an export describes: every ConvBN folded into its convolution."""
    for name, child in module.named_children():
        if isinstance(child, ConvBN):
            setattr(module, name, torch.nn.utils.fusion.fuse_conv_bn_eval(child[0], child[1]))
        else:
            fold(child)
    return module


def lenet():
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def vgg():
    return nn.Sequential(ConvBN(1, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), ConvBN(8, 16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(64, 10))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = ConvBN(c, c, bias=False), ConvBN(c, c, bias=False)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class ResNet(nn.Module):
    """Residual Adds, folded batch norms, global average pooling, and a batch norm after
    the pooling that no convolution absorbs: it stays a BatchNormalization."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(1, 8, bias=False), nn.ReLU())
        self.blocks = nn.Sequential(Block(8), nn.MaxPool2d(2), Block(8))
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
        return self.head(self.norm(torch.flatten(x, 1)))


ARCHS = {"lenet": lenet, "vgg": vgg, "resnet": ResNet}
EXPORTERS = ["torchscript", "dynamo"]
_trained = {}


def mnist(split, n=None):
    d = np.load(os.path.join(MNIST, f"{split}.npz"))
    return (torch.tensor(d["x"][:n].reshape(-1, 1, 28, 28) / np.float32(255)),
            torch.tensor(d["y"][:n].astype(np.int64)))


def pretrained(arch):
    """The model after one epoch in PyTorch (moving statistics included)."""
    if arch not in _trained:
        torch.manual_seed(0)
        model, (x, y) = ARCHS[arch](), mnist("train")
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for b in range(0, len(x), BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b:b + BATCH]), y[b:b + BATCH]).backward()
            opt.step()
        _trained[arch] = fold(model.eval()).requires_grad_()   # folding a missing bias
        # makes a frozen one; the import trains it, and so must the reference
    return _trained[arch]


def imported(tmp_path, arch, exporter):
    """The pretrained model exported by torch and imported by us: (model file, weights)."""
    if exporter == "dynamo" and not os.environ.get("CI"):
        pytest.importorskip("onnxscript")
    model, src = pretrained(arch), str(tmp_path / f"{arch}.onnx")
    x = torch.zeros(BATCH, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":   # the batch fixed at BATCH: it must not matter
            torch.onnx.export(model, (x,), src, dynamo=True, verbose=False)
        else:
            torch.onnx.export(model, (x,), src, dynamo=False, input_names=["input"],
                              dynamic_axes={"input": {0: "batch"}})
    ini = tmp_path / f"{arch}.ini"
    res = run("import", src, "-o", str(ini))
    assert res.exit_code == 0, res.output
    return str(ini), str(tmp_path / f"{arch}.bin")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_imported_export_predicts_and_evaluates_as_pytorch_does(tmp_path, arch, exporter):
    ini, weights = imported(tmp_path, arch, exporter)
    test = os.path.join(MNIST, "test.npz")
    out = tmp_path / "p.npy"
    assert run("predict", ini, "-w", weights, "--data", test, "-o", str(out)).exit_code == 0
    x, y = mnist("test")
    with torch.no_grad():
        want = torch.softmax(pretrained(arch)(x), 1).numpy()
    ours = np.load(out)
    assert np.abs(ours - want).max() <= TOL
    accuracy = float((want.argmax(1) == y.numpy()).mean())
    assert accuracy > 0.2, "the pretrained model is at chance (0.1): a weak test"
    report = tmp_path / "eval.json"
    assert run("eval", ini, "-w", weights, "--data", test, "--report", str(report)).exit_code == 0
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(accuracy, abs=1e-9)


def torch_epoch(model, x, y, dtype, layout=torch.contiguous_format):
    """One epoch of SGD in PyTorch, in order, on a copy of the model in a memory
    `layout` (channels_last picks other float32 kernels): its parameters."""
    model = copy.deepcopy(model).to(dtype).to(memory_format=layout).train()
    x = x.to(memory_format=layout)
    for m in model.modules():   # the import passes dropout through; so must the reference
        if isinstance(m, nn.Dropout):
            m.eval()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for b in range(0, RECORDS, BATCH):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[b:b + BATCH].to(dtype)), y[b:b + BATCH]).backward()
        opt.step()
    return [p.detach().double().numpy() for p in model.parameters()]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fine_tuning_the_import_matches_pytorch(tmp_path, arch, exporter):
    ini, weights = imported(tmp_path, arch, exporter)
    x, y = mnist("valid", RECORDS)   # data the pretraining did not see
    data = tmp_path / "tune.npz"
    np.savez(data, x=(x.numpy().reshape(RECORDS, -1) * 255).round().astype(np.uint8),
             y=y.numpy().astype(np.uint8))
    end = tmp_path / "end.safetensors"
    res = run("train", ini, "-q", "--init-weights", weights, "--no-shuffle", "-b", str(BATCH),
              "--save", str(end), "--set", "model.epochs=1", "--set", "optimizer.type=sgd",
              "--set", f"optimizer.learning_rate={LR}", "--set", "train_set.type=file",
              "--set", f"train_set.path={data}")
    assert res.exit_code == 0, res.output

    # the reference in float64, and in float32 to show what float32 alone costs
    start = [p.detach().double().numpy() for p in pretrained(arch).parameters()]
    want = torch_epoch(pretrained(arch), x, y, torch.float64)
    f32 = [torch_epoch(pretrained(arch), x, y, torch.float32, layout)
           for layout in (torch.contiguous_format, torch.channels_last)]
    saved, graph = load_file(str(end)), prepare(ini).graph
    ours = [saved[f"{n.name}:{w.name}"] for n in graph.nodes for w in n.ctx.weights
            if w.trainable]
    assert len(ours) == len(want)
    # An ill-conditioned model (the ResNet's batch norm after pooling) drifts from float64
    # in float32 whoever computes it, so PyTorch's own float32 drift is the bar: its
    # largest over the model and over two memory layouts, since which tensor drifts most
    # is chance, and so is how far, kernel by kernel and thread by thread. Measured on
    # the ResNet's worst tensor, PyTorch contiguous and channels_last: 1.3e-4 and 5.0e-5
    # on an AVX2 host, 5.8e-5 and 5.0e-4 on an AVX-512 one, where ours is 8.2e-4 on 2
    # threads (5.0e-4 on 1): within the bar of 1.0e-3, by 20%.
    bar = max(TOL, 2 * max(float(np.abs(t32 - t).max())
                           for epoch in f32 for t, t32 in zip(want, epoch)))
    for mine, t in zip(ours, want):
        mine = (mine.T if mine.ndim == 2 else mine).reshape(t.shape)
        assert np.abs(mine - t).max() <= bar
    moved = max(float(np.abs(t - s).max()) for t, s in zip(want, start))
    assert moved > 100 * TOL, "the weights hardly moved: no test"
