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

import re
from dataclasses import dataclass, field

import numpy as np

from nntrainer_cli.config.sections import Entry, Section
from nntrainer_cli.errors import ConfigError

PASS_THROUGH = {"Dropout", "Identity"}
ACTIVATIONS = {"Relu": "relu", "LeakyRelu": "leaky_relu", "Sigmoid": "sigmoid",
               "Tanh": "tanh", "Softmax": "softmax"}
LEAKY_SLOPE = 0.01   # NNTrainer's fixed slope: other alphas cannot be expressed
DEFAULT_BATCH = 32


def _load(path: str):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ConfigError("importing ONNX needs the 'import' extra: pip install "
                          "'nntrainer_cli[import]'", file=path) from None
    try:
        model = onnx.load(path)
    except FileNotFoundError:
        raise ConfigError("no such file", file=path) from None
    except Exception as e:  # protobuf's DecodeError and kin: not an ONNX file
        raise ConfigError(f"not a readable ONNX model ({type(e).__name__})", file=path) from None
    return model, numpy_helper


@dataclass
class Imported:
    """The model file's sections and the weights by plan name."""
    sections: list[Section]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Builder:
    def __init__(self, path: str, graph, to_array, prefix: str = ""):
        self.path, self.graph, self.to_array, self.prefix = path, graph, to_array, prefix
        self.consts = {t.name: to_array(t) for t in graph.initializer}
        self.layers: list[Section] = []
        self.weights: dict[str, np.ndarray] = {}
        self.source: dict[str, tuple[str, int]] = {}   # ONNX value → (our layer, rank)
        self.names: set[str] = set()
        self.uses: dict[str, int] = {}
        for node in graph.node:
            for v in node.input:
                self.uses[v] = self.uses.get(v, 0) + 1

    def refuse(self, node, why: str) -> ConfigError:
        return ConfigError(f"node {node.name or '(unnamed)'} ({node.op_type}): {why}",
                           file=self.path)

    def name(self, raw: str, fallback: str) -> str:
        base = self.prefix + (re.sub(r"[^-_./a-z0-9]", "_", raw.lower()).lstrip("-_./")
                              or fallback)
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def layer(self, node, kind: str, inputs: list[str], rank: int, **props) -> str:
        name = self.name(node.name, f"{kind}{len(self.layers)}")
        section = Section(name, 0, self.path)
        section.entries["type"] = Entry("type", kind, 0)
        section.entries["input_layers"] = Entry(
            "input_layers", ", ".join(self.input_of(node, v)[0] for v in inputs), 0)
        for k, v in props.items():
            section.entries[k] = Entry(k, str(v), 0)
        self.layers.append(section)
        self.source[node.output[0]] = (name, rank)
        return name

    def input_of(self, node, value: str) -> tuple[str, int]:
        if value not in self.source:
            raise self.refuse(node, f"input {value!r} is not produced by a supported node "
                                    "(a weight used as data?)")
        return self.source[value]

    def const(self, node, value: str, what: str) -> np.ndarray:
        if value not in self.consts:
            raise self.refuse(node, f"{what} must be a constant (an initializer)")
        return self.consts[value].astype(np.float32)


def _attrs(node) -> dict:
    import onnx.helper
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(node, b: _Builder, attrs) -> str:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise b.refuse(node, f"auto_pad {attrs['auto_pad'].decode()} is not supported; "
                             "export with explicit pads")
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    return f"{top},{bottom},{left},{right}"   # ONNX: begins then ends; ours: t, b, l, r


def _conv(node, b: _Builder, a) -> None:
    if a.get("group", 1) != 1:
        raise b.refuse(node, f"group = {a['group']} (depthwise or grouped convolution) is "
                             "not supported yet")
    w = b.const(node, node.input[1], "the filter")
    if w.ndim != 4:
        raise b.refuse(node, f"only 2-D convolutions are supported, got a {w.ndim}-D filter")
    props = dict(filters=w.shape[0], kernel_size=f"{w.shape[2]},{w.shape[3]}",
                 stride=",".join(map(str, a.get("strides", [1, 1]))),
                 dilation=",".join(map(str, a.get("dilations", [1, 1]))),
                 padding=_pads(node, b, a))
    has_bias = len(node.input) > 2 and node.input[2]
    if not has_bias:
        props["disable_bias"] = "true"
    name = b.layer(node, "conv2d", node.input[:1], 4, **props)
    b.weights[f"{name}:filter"] = w
    if has_bias:
        b.weights[f"{name}:bias"] = b.const(node, node.input[2], "the bias")


def _dense(node, b: _Builder, w: np.ndarray, bias: np.ndarray | None) -> None:
    _, rank = b.input_of(node, node.input[0])
    if rank != 2:
        raise b.refuse(node, "a dense layer needs a flattened (N, features) input")
    props = dict(unit=w.shape[1]) if bias is not None else dict(unit=w.shape[1],
                                                                disable_bias="true")
    name = b.layer(node, "fully_connected", node.input[:1], 2, **props)
    b.weights[f"{name}:weight"] = np.ascontiguousarray(w)
    if bias is not None:
        b.weights[f"{name}:bias"] = bias.reshape(-1)


def _gemm(node, b: _Builder, a) -> None:
    if a.get("transA", 0):
        raise b.refuse(node, "transA = 1 is not supported")
    w = b.const(node, node.input[1], "B (the weight)")
    w = w.T if a.get("transB", 0) else w
    w = w * np.float32(a.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = b.const(node, node.input[2], "C (the bias)") * np.float32(a.get("beta", 1.0))
        if bias.size != w.shape[1]:
            raise b.refuse(node, f"C of shape {bias.shape} is not one bias per unit")
    _dense(node, b, w, bias)


def _matmul(node, b: _Builder, nodes, k) -> int:
    """MatMul with a constant (in, out) weight, and the Add of a bias right after it
    when there is one: one dense layer. Returns how many nodes it took."""
    w = b.const(node, node.input[1], "the second operand (the weight)")
    if w.ndim != 2:
        raise b.refuse(node, "only a matrix product with a 2-D weight is supported")
    nxt = nodes[k + 1] if k + 1 < len(nodes) else None
    if nxt is not None and nxt.op_type == "Add" and node.output[0] in nxt.input \
            and b.uses.get(node.output[0]) == 1:
        other = [v for v in nxt.input if v != node.output[0]]
        if other and other[0] in b.consts:
            bias = b.consts[other[0]].astype(np.float32)
            if bias.size == w.shape[1]:
                node_out = nxt.output[0]
                _dense(node, b, w, bias)
                b.source[node_out] = b.source.pop(node.output[0])
                return 2
    _dense(node, b, w, None)
    return 1


def _pool(node, b: _Builder, a, kind: str) -> None:
    if a.get("ceil_mode", 0):
        raise b.refuse(node, "ceil_mode = 1 is not supported")
    pads = _pads(node, b, a)
    if kind == "average" and a.get("count_include_pad", 0) and set(pads.split(",")) != {"0"}:
        raise b.refuse(node, "count_include_pad = 1 with padding is not supported (padding "
                             "is left out of the average here)")
    if a.get("dilations", [1, 1]) != [1, 1]:
        raise b.refuse(node, "dilated pooling is not supported")
    k = a["kernel_shape"]
    b.layer(node, "pooling2d", node.input[:1], 4, pooling=kind, pool_size=f"{k[0]},{k[1]}",
            stride=",".join(map(str, a.get("strides", [1, 1]))), padding=pads)


def _batch_norm(node, b: _Builder, a) -> None:
    if a.get("training_mode", 0):
        raise b.refuse(node, "a training-mode BatchNormalization is not supported")
    _, rank = b.input_of(node, node.input[0])
    name = b.layer(node, "batch_normalization", node.input[:1], rank,
                   epsilon=f"{a.get('epsilon', 1e-5):.7g}", momentum=f"{a.get('momentum', 0.9):.7g}",
                   axis=1 if rank == 4 else 3)
    for onnx_input, ours in zip(node.input[1:5], ("gamma", "beta", "moving_mean",
                                                   "moving_variance")):
        b.weights[f"{name}:{ours}"] = b.const(node, onnx_input, ours)


def _flatten_to(node, b: _Builder) -> None:
    _, rank = b.input_of(node, node.input[0])
    if rank == 2:   # already N×F
        b.source[node.output[0]] = b.source[node.input[0]]
        return
    b.layer(node, "flatten", node.input[:1], 2)


def _reshape(node, b: _Builder) -> None:
    shape = b.consts.get(node.input[1])
    if shape is None or shape.ndim != 1 or len(shape) != 2 or shape[0] not in (0, -1, 1) \
            and shape[1] != -1:
        raise b.refuse(node, f"only a reshape to (batch, -1) is supported, got "
                             f"{None if shape is None else shape.tolist()}")
    _flatten_to(node, b)


def _constant(node, b: _Builder, a) -> None:
    if "value" not in a:
        raise b.refuse(node, "only a tensor-valued Constant is supported")
    b.consts[node.output[0]] = b.to_array(a["value"])


def convert(path: str, prefix: str = "") -> Imported:
    """The whole model; with a `prefix` (a backbone), layer names are prefixed with it
    and neither [Model] nor a softmax is added."""
    model, numpy_helper = _load(path)
    g = model.graph
    b = _Builder(path, g, numpy_helper.to_array, prefix)
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
    b.source[data[0].name] = (name, len(dims))
    nodes, k = list(g.node), 0
    while k < len(nodes):
        node, k = nodes[k], k + 1
        a, op = _attrs(node), node.op_type
        if op == "Conv":
            _conv(node, b, a)
        elif op == "Gemm":
            _gemm(node, b, a)
        elif op == "MatMul":
            k += _matmul(node, b, nodes, k - 1) - 1
        elif op in ACTIVATIONS:
            _, rank = b.input_of(node, node.input[0])
            if op == "LeakyRelu" and abs(a.get("alpha", 0.01) - LEAKY_SLOPE) > 1e-6:
                raise b.refuse(node, f"alpha {a['alpha']} (only NNTrainer's {LEAKY_SLOPE})")
            if op == "Softmax" and a.get("axis", -1) not in (-1, rank - 1):
                raise b.refuse(node, f"softmax over axis {a['axis']} (only the last)")
            b.layer(node, "activation", node.input[:1], rank, activation=ACTIVATIONS[op])
        elif op in ("MaxPool", "AveragePool"):
            _pool(node, b, a, "max" if op == "MaxPool" else "average")
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            b.layer(node, "pooling2d", node.input[:1], 4,
                    pooling="global_average" if op == "GlobalAveragePool" else "global_max")
        elif op == "BatchNormalization":
            _batch_norm(node, b, a)
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
            _flatten_to(node, b)
        elif op == "Reshape":
            _reshape(node, b)
        elif op in PASS_THROUGH:
            b.source[node.output[0]] = b.input_of(node, node.input[0])
        elif op == "Constant":
            _constant(node, b, a)
        else:
            raise b.refuse(node, "this operator is not supported")
    out, _ = b.input_of(g.node[-1] if g.node else g.output[0], g.output[0].name)
    if prefix:   # the output last, so that the next layer in the file chains to it
        b.layers.sort(key=lambda section: section.name == out)
        return Imported(b.layers, b.weights)
    return _finish(path, b, out)


def _finish(path: str, b: _Builder, out: str) -> Imported:
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
