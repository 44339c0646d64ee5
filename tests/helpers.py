"""Test helpers: the command line in-process, and one layer run on plain float64 arrays
outside any arena."""

from __future__ import annotations

import os

import numpy as np
from click.testing import CliRunner

from nntrainer_cli.cli import main
from nntrainer_cli.layers import REGISTRY, FinalizeContext, RunContext
from nntrainer_cli.layers.base import NODE_SCHEMA, WEIGHT_SCHEMA
from nntrainer_cli.runtime.weights import weight_floats

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
CORPUS = os.path.join(SHARED, "nntrainer-ini")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "configs", "digits_mlp.ini")

# file (relative to the corpus) → None if it must pass, else text its error must contain
CORPUS_EXPECTED = {
    "Applications/AlexNet/res/alex.ini": None,
    "Applications/Custom/LayerClient/res/custom_layer_client.ini": "unknown layer type 'custom_pow'",
    "Applications/Layers/res/Conv.ini": None,
    "Applications/Layers/res/LSTM.ini": None,
    "Applications/Layers/res/Linear.ini": None,
    "Applications/Layers/res/Model_A_Conv.ini": None,
    "Applications/Layers/res/Model_A_Linear.ini": None,
    "Applications/Layers/res/Model_C_Conv.ini": None,
    "Applications/Layers/res/Model_C_Linear.ini": None,
    "Applications/LogisticRegression/res/LogisticRegression.ini": None,
    "Applications/MNIST/res/mnist.ini": None,
    "Applications/MNIST/res/mnist_valid.ini": None,
    "Applications/ProductRatings/res/product_ratings_model.ini": None,
    "Applications/ReinforcementLearning/DeepQ/res/DeepQ.ini": None,
    "Applications/Resnet/res/resnet18.ini": None,
    "Applications/TFlite_export/res/fc_model.ini": None,
    "Applications/Tizen_native/CustomShortcut/res/model.ini": None,
    "Applications/TransferLearning/CIFAR_Classification/res/Classification.ini": None,
    "Applications/TransferLearning/CIFAR_Classification/res/Classification_func.ini":
        "TensorFlow Lite and NNStreamer backbones are not supported",
    "Applications/TransferLearning/CIFAR_Classification/res/Classification_new.ini":
        "unknown layer type 'InputLayer'",
    "Applications/TransferLearning/Draw_Classification/res/Training.ini":
        "TensorFlow Lite and NNStreamer backbones are not supported",
    "Applications/VGG/res/vgg.ini": None,
    "Applications/VGG/res/vgg_small.ini": None,
    "test/test_models/models/mnist.ini": None,
    "test/test_models/models/mnist_inf.ini": None,
    "test/test_models/models/simple_fc.ini": "no [Model] section",
    "test/test_models/models/simple_fc_backbone.ini": "no [Model] section",
}


# A frozen conv layer before a trainable head on the 8×8 digits (raw data at `data`):
# a prefix whose output the feature cache keeps. `optimizer` and `extra` (layers after
# the input) are filled in per test.
FROZEN_CONV = """[Model]
loss = cross
batch_size = 32
epochs = 3
[Optimizer]
{optimizer}
[train_set]
path = {data}
[in]
type = input
input_shape = 1:8:8
{extra}
[conv]
type = conv2d
filters = 4
kernel_size = 3,3
padding = same
activation = relu
trainable = false
[pool]
type = pooling2d
pooling = max
pool_size = 2,2
stride = 2,2
flatten = true
[head]
type = fully_connected
unit = 10
activation = softmax
"""


def frozen_conv(data, optimizer="type = adam\nlearning_rate = 0.01", extra="") -> str:
    return FROZEN_CONV.format(data=data, optimizer=optimizer, extra=extra)


def write_records(path, x, classes, n_classes: int) -> None:
    """NNTrainer raw data: per record the features, then the one-hot label, as float32."""
    labels = np.eye(n_classes)[classes]
    np.concatenate([x, labels], axis=1).astype("<f4").tofile(path)


def run(*args):
    """The command line in this process (click's CliRunner): exit code and output."""
    return CliRunner().invoke(main, list(args))


def make_layer(kind: str, **props):
    cls = REGISTRY[kind]
    schema = {**NODE_SCHEMA, **(WEIGHT_SCHEMA if cls.weighted else {}), **cls.schema}
    values = {k: p.default for k, p in schema.items()}
    values.update(props)
    return cls(kind, values)


class Harness:
    """Holds every tensor a layer requests as its own float64 array."""

    def __init__(self, layer, input_shapes, rng, requested_outputs=1):
        self.layer = layer
        fc = FinalizeContext([tuple(s) for s in input_shapes],
                             requested_outputs=requested_outputs)
        layer.finalize(fc)
        self.fc = fc
        # what a layer writes starts as NaN, as an arena's bytes start as whatever the
        # last tensor there left: a kernel that reads before it writes shows
        f = lambda s: np.full(s, np.nan)  # noqa: E731
        self.ctx = RunContext(
            inputs=[rng.standard_normal(s) for s in fc.input_shapes],
            outputs=[f(s) for s in fc.output_shapes],
            weights={w.name: rng.standard_normal(w.shape) * 0.5 for w in fc.weights},
            grads={w.name: np.zeros(w.shape) for w in fc.weights},
            in_grads=[f(s) for s in fc.input_shapes],
            out_grads=[f(s) for s in fc.output_shapes],
            temps={t.name: f(t.shape) if t.dtype == np.float32 else np.zeros(t.shape, t.dtype)
                   for t in fc.temps},
            rows=fc.input_shapes[0][0])
        if layer.is_loss:
            label = np.zeros(layer.label_shape(fc))
            flat = label.reshape(-1, label.shape[-1])
            flat[np.arange(len(flat)), rng.integers(0, label.shape[-1], len(flat))] = 1
            self.ctx.label = label
        self.probe = [rng.standard_normal(s) for s in fc.output_shapes]

    def objective(self) -> float:
        """Loss layers: their loss; other layers: Σ output·probe (so dL/dout = probe)."""
        self.layer.forward(self.ctx, True)
        if self.layer.is_loss:
            return self.ctx.loss
        return float(sum(np.vdot(o, p) for o, p in zip(self.ctx.outputs, self.probe)))

    def backward(self) -> None:
        self.objective()
        for g, p in zip(self.ctx.out_grads, self.probe):
            g[...] = p
        self.layer.calc_gradient(self.ctx)
        self.layer.calc_derivative(self.ctx)


def weight_difference(a: bytes, b: bytes) -> float:
    """The largest difference of two .bin files' weights, relative to the largest weight."""
    wa, wb = weight_floats(a), weight_floats(b)
    assert wa.shape == wb.shape
    return float(np.abs(wa - wb).max() / np.abs(wa).max())

