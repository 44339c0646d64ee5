"""One function per ONNX operator, each adding our layer (and its weights, in our
layouts) to the model under construction, or refusing the node in one line."""

from __future__ import annotations

import re

import numpy as np

from nntrainer_cli.config.sections import Entry, Section
from nntrainer_cli.errors import ConfigError

class Builder:
    def __init__(self, path: str, model, to_array, prefix: str = ""):
        self.path, self.model, self.to_array, self.prefix = path, model, to_array, prefix
        graph = model.graph
        self.batch: int | None = None   # the batch size the export fixed, if it did
        self.shapes: dict[str, list] | None = None   # from shape inference, when needed
        self.consts = {t.name: to_array(t) for t in graph.initializer}
        self.layers: list[Section] = []
        self.weights: dict[str, np.ndarray] = {}
        self.source: dict[str, tuple[str, int]] = {}   # ONNX value → (our layer, rank)
        self.names: set[str] = set()
        self.uses: dict[str, int] = {}
        for node in graph.node:
            for v in node.input:
                self.uses[v] = self.uses.get(v, 0) + 1

    def features(self, value: str) -> int:
        """Elements per record of a value, by ONNX shape inference (-1 when unknown)."""
        if self.shapes is None:
            import onnx
            g = onnx.shape_inference.infer_shapes(self.model).graph
            self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                                    for d in v.type.tensor_type.shape.dim]
                           for v in [*g.value_info, *g.input, *g.output]}
        dims = self.shapes.get(value)
        return int(np.prod(dims[1:])) if dims and None not in dims[1:] else -1

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


def attrs(node) -> dict:
    import onnx.helper
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def padding(node, b: Builder, attrs) -> str:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise b.refuse(node, f"auto_pad {attrs['auto_pad'].decode()} is not supported; "
                             "export with explicit pads")
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    return f"{top},{bottom},{left},{right}"   # ONNX: begins then ends; ours: t, b, l, r


def conv(node, b: Builder, a) -> None:
    if a.get("group", 1) != 1:
        raise b.refuse(node, f"group = {a['group']} (depthwise or grouped convolution) is "
                             "not supported yet")
    w = b.const(node, node.input[1], "the filter")
    if w.ndim != 4:
        raise b.refuse(node, f"only 2-D convolutions are supported, got a {w.ndim}-D filter")
    props = dict(filters=w.shape[0], kernel_size=f"{w.shape[2]},{w.shape[3]}",
                 stride=",".join(map(str, a.get("strides", [1, 1]))),
                 dilation=",".join(map(str, a.get("dilations", [1, 1]))),
                 padding=padding(node, b, a))
    has_bias = len(node.input) > 2 and node.input[2]
    if not has_bias:
        props["disable_bias"] = "true"
    name = b.layer(node, "conv2d", node.input[:1], 4, **props)
    b.weights[f"{name}:filter"] = w
    if has_bias:
        b.weights[f"{name}:bias"] = b.const(node, node.input[2], "the bias")


def dense(node, b: Builder, w: np.ndarray, bias: np.ndarray | None) -> None:
    _, rank = b.input_of(node, node.input[0])
    if rank != 2:
        raise b.refuse(node, "a dense layer needs a flattened (N, features) input")
    props = dict(unit=w.shape[1]) if bias is not None else dict(unit=w.shape[1],
                                                                disable_bias="true")
    name = b.layer(node, "fully_connected", node.input[:1], 2, **props)
    b.weights[f"{name}:weight"] = np.ascontiguousarray(w)
    if bias is not None:
        b.weights[f"{name}:bias"] = bias.reshape(-1)


def gemm(node, b: Builder, a) -> None:
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
    dense(node, b, w, bias)


def matmul(node, b: Builder, nodes, k) -> int:
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
                dense(node, b, w, bias)
                b.source[node_out] = b.source.pop(node.output[0])
                return 2
    dense(node, b, w, None)
    return 1


def pool(node, b: Builder, a, kind: str) -> None:
    if a.get("ceil_mode", 0):
        raise b.refuse(node, "ceil_mode = 1 is not supported")
    pads = padding(node, b, a)
    if kind == "average" and a.get("count_include_pad", 0) and set(pads.split(",")) != {"0"}:
        raise b.refuse(node, "count_include_pad = 1 with padding is not supported (padding "
                             "is left out of the average here)")
    if a.get("dilations", [1, 1]) != [1, 1]:
        raise b.refuse(node, "dilated pooling is not supported")
    k = a["kernel_shape"]
    b.layer(node, "pooling2d", node.input[:1], 4, pooling=kind, pool_size=f"{k[0]},{k[1]}",
            stride=",".join(map(str, a.get("strides", [1, 1]))), padding=pads)


def batch_norm(node, b: Builder, a) -> None:
    if a.get("training_mode", 0):
        raise b.refuse(node, "a training-mode BatchNormalization is not supported")
    _, rank = b.input_of(node, node.input[0])
    name = b.layer(node, "batch_normalization", node.input[:1], rank,
                   epsilon=f"{a.get('epsilon', 1e-5):.7g}", momentum=f"{a.get('momentum', 0.9):.7g}",
                   axis=1 if rank == 4 else 3)
    for onnx_input, ours in zip(node.input[1:5], ("gamma", "beta", "moving_mean",
                                                   "moving_variance")):
        b.weights[f"{name}:{ours}"] = b.const(node, onnx_input, ours)


def flatten_to(node, b: Builder) -> None:
    _, rank = b.input_of(node, node.input[0])
    if rank == 2:   # already N×F
        b.source[node.output[0]] = b.source[node.input[0]]
        return
    b.layer(node, "flatten", node.input[:1], 2)


def reshape(node, b: Builder, a) -> None:
    """A flatten written as a reshape: to (batch, -1), (batch, F) or (-1, F), where the
    batch may be 0 (copied), or the size the export fixed it to."""
    shape = b.consts.get(node.input[1])
    batches = {-1, b.batch} | ({0} if not a.get("allowzero", 0) else set())
    features = b.features(node.input[0])
    if shape is None or shape.shape != (2,) or not (
            shape[0] in batches and shape[1] == -1 or shape[1] == features != -1 and (
                shape[0] in batches or shape[0] == -1)):
        raise b.refuse(node, f"only a flatten to (batch, -1) is supported, got "
                             f"{None if shape is None else shape.tolist()}")
    flatten_to(node, b)


def reduce(node, b: Builder, a, kind: str) -> None:
    """ReduceMean/ReduceMax over H and W: the global pooling torch's newer exporter
    writes for adaptive_avg_pool2d(x, 1) and x.mean((2, 3))."""
    axes = a.get("axes") if "axes" in a else (
        b.const(node, node.input[1], "axes").astype(int).tolist() if len(node.input) > 1
        and node.input[1] else None)
    if axes is None or b.input_of(node, node.input[0])[1] != 4 or \
            sorted(x % 4 for x in axes) != [2, 3]:
        raise b.refuse(node, f"only a reduction over the spatial axes (2, 3) of N×C×H×W "
                             f"is supported, got axes {axes}")
    if a.get("keepdims", 1):
        b.layer(node, "pooling2d", node.input[:1], 4, pooling=f"global_{kind}")
    else:
        b.layer(node, "pooling2d", node.input[:1], 2, pooling=f"global_{kind}", flatten="true")


def constant(node, b: Builder, a) -> None:
    if "value" not in a:
        raise b.refuse(node, "only a tensor-valued Constant is supported")
    b.consts[node.output[0]] = b.to_array(a["value"])
