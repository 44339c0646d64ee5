"""An ONNX graph as a model of ours: sections for the model file and the weights by
their plan names (`conv1:filter`, `fc:weight`, `bn:moving_mean`, ...), in our layouts.

Covers what torch and Keras exports of classic CNNs and MLPs hold: Conv, Gemm,
MatMul (+ Add), Relu, LeakyRelu, Sigmoid, Tanh, Softmax, MaxPool, AveragePool,
GlobalAveragePool, GlobalMaxPool, BatchNormalization, Add, Concat, Flatten, Reshape of
the flatten kind, Dropout, Identity and Constant. Anything else is refused before a
file is written, naming the node, its op and why. Tensors are NCHW (rank 4) or N×F
(rank 2, our N:1:1:F); the batch dimension is ours to choose, whatever the export
fixed it to."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from nntrainer_cli.config.reader import MODEL_EXTENSIONS
from nntrainer_cli.config.sections import Entry, Section
from nntrainer_cli.errors import ConfigError

from . import onnx_ops as ops

PASS_THROUGH = {"Dropout", "Identity"}
ACTIVATIONS = {"Relu": "relu", "LeakyRelu": "leaky_relu", "Sigmoid": "sigmoid",
               "Tanh": "tanh", "Softmax": "softmax"}
LEAKY_SLOPE = 0.01   # NNTrainer's fixed slope: other alphas cannot be expressed
DEFAULT_BATCH = 32


def _load(path: str):
    if path.lower().endswith(MODEL_EXTENSIONS):
        raise ConfigError("a model config already: train, plan or convert it as it is",
                          file=path)
    try:
        import onnx
        from onnx import external_data_helper, numpy_helper
    except ImportError:
        raise ConfigError("importing ONNX needs the 'import' extra: pip install "
                          "'nntrainer_cli[import]'", file=path) from None
    try:
        model = onnx.load(path, load_external_data=False)
    except FileNotFoundError:
        raise ConfigError("no such file", file=path) from None
    except Exception as e:  # protobuf's DecodeError and kin: not an ONNX file
        raise ConfigError(f"not a readable ONNX model ({type(e).__name__})", file=path) from None
    _check_external_data(path, model, external_data_helper)
    try:
        external_data_helper.load_external_data_for_model(model, os.path.dirname(path) or ".")
    except Exception as e:   # what the check above cannot foresee
        raise ConfigError(f"its external weights are unreadable ({type(e).__name__})",
                          file=path) from None
    return model, numpy_helper


def _check_external_data(path: str, model, helper) -> None:
    """Large exports keep their weights in a file beside the model (`x.onnx.data`):
    it must be there and hold every tensor it is said to hold."""
    for t in model.graph.initializer:
        if not helper.uses_external_data(t):
            continue
        info = helper.ExternalDataInfo(t)
        where = os.path.join(os.path.dirname(path), info.location)
        if os.path.basename(info.location) != info.location:
            raise ConfigError(f"tensor {t.name!r}: its weights file {info.location!r} must "
                              "be beside the model", file=path)
        need = (info.offset or 0) + (info.length or 0)
        if not os.path.isfile(where):
            raise ConfigError(f"tensor {t.name!r}: its weights file {info.location} is "
                              "missing (it must be beside the model)", file=path)
        if os.path.getsize(where) < need:
            raise ConfigError(f"tensor {t.name!r}: its weights file {info.location} is "
                              f"{os.path.getsize(where):,} bytes, shorter than the "
                              f"{need:,} it needs (cut short?)", file=path)


@dataclass
class Imported:
    """The model file's sections and the weights by plan name."""
    sections: list[Section]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def convert(path: str, prefix: str = "") -> Imported:
    """The whole model; with a `prefix` (a backbone), layer names are prefixed with it
    and neither [Model] nor a softmax is added."""
    model, numpy_helper = _load(path)
    g = model.graph
    b = ops.Builder(path, model, numpy_helper.to_array, prefix)
    data = [v for v in g.input if v.name not in b.consts]
    if len(data) != 1 or len(g.output) != 1:
        raise ConfigError(f"expected one input and one output, got {len(data)} and "
                          f"{len(g.output)}", file=path)
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in data[0].type.tensor_type.shape.dim]
    if len(dims) not in (2, 4) or any(d is None or d <= 0 for d in dims[1:]):
        raise ConfigError(f"input {data[0].name!r} must be N×F or N×C×H×W with fixed sizes "
                          f"after the batch, got {dims}", file=path)
    shape = f"1:1:{dims[1]}" if len(dims) == 2 else ":".join(map(str, dims[1:]))
    name = b.name(data[0].name, "input")
    section = Section(name, 0, path)
    section.entries["type"] = Entry("type", "input", 0)
    section.entries["input_shape"] = Entry("input_shape", shape, 0)
    b.layers.append(section)
    b.source[data[0].name], b.batch = (name, len(dims)), dims[0]
    nodes, k = list(g.node), 0
    while k < len(nodes):
        node, k = nodes[k], k + 1
        a, op = ops.attrs(node), node.op_type
        if op == "Conv":
            ops.conv(node, b, a)
        elif op == "Gemm":
            ops.gemm(node, b, a)
        elif op == "MatMul":
            k += ops.matmul(node, b, nodes, k - 1) - 1
        elif op in ACTIVATIONS:
            _, rank = b.input_of(node, node.input[0])
            if op == "LeakyRelu" and abs(a.get("alpha", 0.01) - LEAKY_SLOPE) > 1e-6:
                raise b.refuse(node, f"alpha {a['alpha']} (only NNTrainer's {LEAKY_SLOPE})")
            if op == "Softmax" and a.get("axis", -1) not in (-1, rank - 1):
                raise b.refuse(node, f"softmax over axis {a['axis']} (only the last)")
            b.layer(node, "activation", node.input[:1], rank, activation=ACTIVATIONS[op])
        elif op in ("MaxPool", "AveragePool"):
            ops.pool(node, b, a, "max" if op == "MaxPool" else "average")
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            b.layer(node, "pooling2d", node.input[:1], 4,
                    pooling="global_average" if op == "GlobalAveragePool" else "global_max")
        elif op == "BatchNormalization":
            ops.batch_norm(node, b, a)
        elif op == "Add":
            if any(v in b.consts for v in node.input):
                raise b.refuse(node, "adding a constant is supported only as a MatMul's bias")
            _, rank = b.input_of(node, node.input[0])
            b.layer(node, "addition", list(node.input), rank)
        elif op == "Concat":
            _, rank = b.input_of(node, node.input[0])
            axis = a["axis"] % rank
            if axis == 0:
                raise b.refuse(node, "concatenating along the batch is not supported")
            b.layer(node, "concat", list(node.input), rank, axis=axis if rank == 4 else 3)
        elif op == "Flatten":
            if a.get("axis", 1) != 1:
                raise b.refuse(node, f"flatten from axis {a['axis']} (only from axis 1)")
            ops.flatten_to(node, b)
        elif op == "Reshape":
            ops.reshape(node, b, a)
        elif op in ("ReduceMean", "ReduceMax"):
            ops.reduce(node, b, a, "average" if op == "ReduceMean" else "max")
        elif op in PASS_THROUGH and node.input[0] in b.consts:   # a weight shared by name
            b.consts[node.output[0]] = b.consts[node.input[0]]
        elif op in PASS_THROUGH:
            b.source[node.output[0]] = b.input_of(node, node.input[0])
        elif op == "Constant":
            ops.constant(node, b, a)
        else:
            raise b.refuse(node, "this operator is not supported")
    out, _ = b.input_of(g.node[-1] if g.node else g.output[0], g.output[0].name)
    if prefix:   # the output last, so that the next layer in the file chains to it
        b.layers.sort(key=lambda section: section.name == out)
        return Imported(b.layers, b.weights)
    return _finish(path, b, out)


def _finish(path: str, b: ops.Builder, out: str) -> Imported:
    """[Model] with cross-entropy when the graph ends in softmax; otherwise a softmax
    layer is added so the model trains with it (argmax, and so accuracy, unchanged)."""
    notes = []
    last = next(s for s in b.layers if s.name == out).get("activation")
    if last is None or last.value != "softmax":
        name = b.name("softmax", "softmax")
        section = Section(name, 0, path)
        section.entries["type"] = Entry("type", "activation", 0)
        section.entries["input_layers"] = Entry("input_layers", out, 0)
        section.entries["activation"] = Entry("activation", "softmax", 0)
        b.layers.append(section)
        notes.append(f"the model ends in logits: added [{name}] (softmax) so that it trains "
                     "with cross-entropy; its outputs are now probabilities")
    model = Section("model", 0, path)
    for k, v in (("type", "NeuralNetwork"), ("epochs", "1"), ("batch_size", str(DEFAULT_BATCH)),
                 ("loss", "cross")):
        model.entries[k] = Entry(k, v, 0)
    optimizer = Section("optimizer", 0, path)
    for k, v in (("type", "adam"), ("learning_rate", "0.0001")):
        optimizer.entries[k] = Entry(k, v, 0)
    return Imported([model, optimizer] + b.layers, b.weights, notes)
