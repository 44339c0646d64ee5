"""From layer sections to a finalized layer graph.

Implicit structure is made explicit the way NNTrainer's realizers do it, in the same
order: previous-input chaining, `flatten = true` and `activation = …` as separate
nodes, the loss layer from [Model] loss, and a `multiout` node wherever one output
feeds several layers. The graph is then sorted topologically (NNTrainer's DFS order,
so weight files line up) and every layer is finalized with its input shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nntrainer_cli.config import props as P
from nntrainer_cli.config.sections import Section
from nntrainer_cli.config.model import ModelConfig
from nntrainer_cli.errors import ConfigError
from nntrainer_cli.layers import REGISTRY, FinalizeContext, Layer, LayerError
from nntrainer_cli.layers.activation import check_name
from nntrainer_cli.layers.base import NODE_SCHEMA, WEIGHT_SCHEMA

LEGACY_TYPES = {"input": "input with input_shape", "fullyconnected": "fully_connected with unit",
                "batchnormalization": "batch_normalization",
                "output": "fully_connected with unit and activation"}
UNSUPPORTED_KEYS = ("distribute", "shared_from", "packed", "weight_dtype", "loss_scale",
                    "engine", "lora_rank", "lora_alpha")


@dataclass
class Node:
    name: str
    layer: Layer
    section: Section            # where it was written (realized nodes: their origin)
    inputs: list[tuple[str, int]] = field(default_factory=list)
    trainable: bool = True
    input_shape: tuple | None = None
    clip: float | None = None   # clip_grad_by_norm: apply after backward, by global norm
    # filled by finalize
    ctx: FinalizeContext | None = None
    consumers: list[tuple[str, int]] = field(default_factory=list)  # per output index

    @property
    def type(self) -> str:
        return self.layer.type

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return self.section.error(message, key)


@dataclass
class LayerGraph:
    nodes: list[Node]            # topological order
    batch_size: int
    training: bool = True        # False: no loss anywhere, so a forward-only graph
    frugal: int = 0              # memory over speed (0: off; else divides conv's work buffers)
    apply_parts: int = 1         # apply_gradient slots per layer (more when frugal)
    tiles: dict[str, int] = field(default_factory=dict)   # tileable layers' row tiles
    micro_batches: int = 1       # a step's batch runs in this many parts of batch_size

    def __post_init__(self):
        self.by_name = {n.name: n for n in self.nodes}

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if not n.inputs]

    @property
    def learns_by_gradient(self) -> bool:
        """Whether any weight is trained by an optimizer (not so for a model whose only
        learning is centroid_knn's enrollment)."""
        return self.training and any(w.trainable for n in self.nodes for w in n.ctx.weights)

    @property
    def step_batch(self) -> int:
        """The records of one optimizer step: the model's batch, which the arena holds
        in `micro_batches` parts of `batch_size` when a budget splits it."""
        return self.batch_size * self.micro_batches

    @property
    def splittable(self) -> bool:
        """Whether a training step may run in micro-batches: gradients summed, or an
        enrollment's records taken in the same order; batch norm's statistics gathered
        over the parts (not an input normalized by the batch's range)."""
        return self.training and all(n.layer.splits() for n in self.nodes)

    @property
    def losses(self) -> list[Node]:
        return [n for n in self.nodes if n.layer.is_loss]

    def producer_shape(self, conn: tuple[str, int]) -> tuple:
        return self.by_name[conn[0]].ctx.output_shapes[conn[1]]


def _make_node(section: Section) -> Node:
    type_entry = section.get("type")
    if type_entry is None:
        raise section.error("missing required key 'type' (the layer type, e.g. fully_connected)")
    kind = type_entry.value.lower()
    cls = REGISTRY.get(kind)
    if cls is None and kind.endswith("layer") and kind[:-5] in LEGACY_TYPES:
        raise section.error(f"unknown layer type {type_entry.value!r}: NNTrainer's early "
                            "syntax (also refused by NNTrainer today); write type = "
                            f"{LEGACY_TYPES[kind[:-5]]}", "type")
    if cls is None:
        raise section.error(f"unknown layer type {type_entry.value!r}"
                            f"{P.did_you_mean(kind, REGISTRY)}", "type")
    for key in UNSUPPORTED_KEYS:
        if key in section.entries:
            raise section.error("not supported by nntrainer_cli", key)
    schema = {**NODE_SCHEMA, **(WEIGHT_SCHEMA if cls.weighted else {}), **cls.schema}
    values = P.parse_section(section, schema, ignore=("type",))
    if values["activation"] is not None:
        try:
            values["activation"] = check_name(values["activation"])
        except ValueError as e:
            raise section.error(str(e), "activation") from None
    layer = cls(section.name, values)
    return Node(section.name, layer, section, inputs=list(values["input_layers"] or []),
                trainable=values["trainable"], input_shape=values["input_shape"])


def _realized(origin: Node, suffix: str, kind: str, props: dict[str, Any]) -> Node:
    name = f"{origin.name}/{suffix}"
    return Node(name, REGISTRY[kind](name, props), origin.section,
                inputs=[(origin.name, 0)], trainable=origin.trainable)


def _insert_after(nodes: list[Node], origin: Node, new: Node) -> None:
    """Put `new` right after `origin` and move origin's consumers onto it."""
    for n in nodes:
        n.inputs = [(new.name, i) if c == origin.name else (c, i) for c, i in n.inputs]
    nodes.insert(nodes.index(origin) + 1, new)


def _chain(nodes: list[Node], model_inputs: set[str]) -> None:
    for i, n in enumerate(nodes):
        if n.inputs or n.input_shape is not None or n.name in model_inputs:
            continue
        if i == 0:
            raise n.error("the first layer needs input_shape (or input_layers)")
        n.inputs = [(nodes[i - 1].name, 0)]


def _attach_loss(nodes: list[Node], cfg: ModelConfig, require_loss: bool) -> bool:
    """Add loss layers after the outputs; False when the model has none and may be
    planned for inference only."""
    consumed = {c for n in nodes for c, _ in n.inputs}
    loss = cfg.model["loss"]
    if loss is None and not require_loss and not any(n.layer.is_loss for n in nodes):
        return False
    for out in [n for n in nodes if n.name not in consumed and not n.layer.is_loss]:
        if loss is None:
            raise cfg.model_section.error(
                f"layer [{out.name}] is an output but no loss is set: add 'loss = cross' or "
                "'loss = mse' to [Model], or a loss layer")
        kind = loss
        if loss == "cross":
            act = out.layer.p.get("activation") if out.type == "activation" else None
            if act not in ("softmax", "sigmoid"):
                after = " (its 'flatten = true' comes after the activation: flatten in an " \
                    "earlier layer)" if out.name.endswith("flatten_realized") else ""
                raise cfg.model_section.error(
                    f"loss = cross needs the last layer [{out.section.name}] to end in "
                    f"'activation = softmax' or 'sigmoid'{after}", "loss")
            kind = "cross_" + act
            nodes.remove(out)
            for n in nodes:
                n.inputs = [(out.inputs[0][0], out.inputs[0][1]) if c == out.name else (c, i)
                            for c, i in n.inputs]
            feed = out.inputs[0]
        else:
            feed = (out.name, 0)
        name = kind
        k = 0
        while any(n.name == name for n in nodes):
            k += 1
            name = f"{kind}{k}"
        nodes.append(Node(name, REGISTRY[kind](name, {}), out.section, inputs=[feed],
                          trainable=out.trainable))
    return True


def _multiout(nodes: list[Node]) -> None:
    uses: dict[tuple[str, int], list[tuple[Node, int]]] = {}
    for n in nodes:
        for k, conn in enumerate(n.inputs):
            uses.setdefault(conn, []).append((n, k))
    for (producer, idx), readers in uses.items():
        if len(readers) < 2:
            continue
        origin = next(n for n in nodes if n.name == producer)
        name = f"{producer}/generated_out_{idx}"
        while any(n.name == name for n in nodes):
            name += "_"
        mo = Node(name, REGISTRY["multiout"](name, {"outputs": len(readers)}), origin.section,
                  inputs=[(producer, idx)], trainable=origin.trainable)
        for j, (reader, k) in enumerate(readers):
            reader.inputs[k] = (name, j)
        nodes.insert(nodes.index(origin) + 1, mo)


def _sort(nodes: list[Node]) -> list[Node]:
    """NNTrainer's order: DFS over the node list, each node after all its consumers,
    reversed. Also finds cycles."""
    consumers: dict[str, list[str]] = {n.name: [] for n in nodes}
    for n in nodes:
        for c, _ in n.inputs:
            consumers[c].append(n.name)
    state: dict[str, int] = {}
    post: list[str] = []
    by_name = {n.name: n for n in nodes}
    for root in nodes:
        if root.name in state:
            continue
        stack = [(root.name, iter(consumers[root.name]))]
        state[root.name] = 1
        while stack:
            name, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[name] = 2
                post.append(name)
            elif state.get(nxt) == 1:
                raise by_name[nxt].error(f"the graph has a cycle through [{nxt}] and [{name}]",
                                         "input_layers")
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(consumers[nxt])))
    return [by_name[n] for n in reversed(post)]


def _finalize(graph: LayerGraph) -> None:
    batch = graph.batch_size
    requested: dict[str, int] = {}
    for node in graph.nodes:
        for c, i in node.inputs:
            requested[c] = max(requested.get(c, 1), i + 1)
    for node in graph.nodes:
        lo, hi = node.layer.inputs
        count = max(len(node.inputs), 1)
        if count < lo or (hi is not None and count > hi):
            raise node.error(f"a {node.type} layer takes {lo}..{hi} inputs, got {count}",
                             "input_layers")
        if node.inputs:
            for c, i in node.inputs:
                if i >= len(graph.by_name[c].ctx.output_shapes):
                    raise node.error(f"[{c}] has no output {i}", "input_layers")
            shapes = [graph.producer_shape(c) for c in node.inputs]
            if node.input_shape is not None and (batch,) + node.input_shape != shapes[0]:
                raise node.error(f"input_shape {':'.join(map(str, node.input_shape))} does not "
                                 f"match the incoming shape {':'.join(map(str, shapes[0][1:]))}",
                                 "input_shape")
        elif node.input_shape is None:
            raise node.error("a layer without input_layers needs input_shape", "input_shape")
        else:
            shapes = [(batch,) + node.input_shape]
        ctx = FinalizeContext(shapes, trainable=node.trainable,
                              requested_outputs=requested.get(node.name, 1),
                              frugal=graph.frugal, tiles=graph.tiles.get(node.name, 1),
                              parts=graph.micro_batches)
        try:
            node.layer.finalize(ctx)
        except LayerError as e:
            raise node.error(str(e), e.key) from None
        ctx.access = ctx.access or node.layer.access
        node.ctx = ctx
        node.consumers = [None] * len(ctx.output_shapes)
    for node in graph.nodes:
        for k, (c, i) in enumerate(node.inputs):
            graph.by_name[c].consumers[i] = (node.name, k)   # indices checked above


FRUGAL_APPLY_PARTS = 4


def _check_gradient_flow(graph: LayerGraph) -> None:
    """A layer that passes no gradient back (centroid_knn, augmentation) may have
    nothing trainable before it: those weights would never learn."""
    trained: dict[str, str] = {}   # node → the trainable layer upstream of it
    for n in graph.nodes:
        source = next((trained[c] for c, _ in n.inputs if c in trained), None)
        if source is not None and not n.layer.differentiable:
            move = "" if n.layer.is_loss else f" (or put the {n.type} layer before it)"
            raise n.error(f"a {n.type} layer passes no gradient back, but [{source}] before "
                          f"it is trainable: set trainable = false there{move}")
        if source is None and any(w.trainable for w in n.ctx.weights):
            source = n.section.name
        if source is not None:
            trained[n.name] = source


def build_graph(cfg: ModelConfig, batch_size: int | None = None,
                require_loss: bool = True, frugal: int = 0,
                inference: bool = False, tiles: dict[str, int] | None = None,
                micro_batches: int = 1) -> LayerGraph:
    """The finalized graph. Without `require_loss`, a model with no loss at all gives
    a forward-only graph (for planning inference) instead of an error. `frugal` trades
    speed for memory, for tight budgets: relu keeps a one-byte mask, each layer's
    gradient is applied in parts (so less optimizer state is needed at once), and conv
    builds its columns for `frugal` times fewer samples at a time. Results are bit-for-bit
    the same. `inference` plans forward only (the loss layer kept for its metrics): no
    gradients, derivatives or optimizer state. `tiles` cuts tileable layers' weights
    into that many row tiles, each with slots of its own (a budget below a whole
    layer's needs). `micro_batches` runs each step's batch in that many equal parts,
    their gradients summed before the update (a budget below one batch's activations)."""
    nodes = [_make_node(s) for s in cfg.layers]
    seen: dict[str, Node] = {}
    for n in nodes:
        if n.name in seen:
            raise n.error(f"layer name [{n.name}] is used twice")
        seen[n.name] = n
    model_inputs = {c for c, _ in cfg.model["input_layers"] or []}
    _chain(nodes, model_inputs)
    for n in nodes:
        for c, _ in n.inputs:
            if c not in seen:
                raise n.error(f"no layer named [{c}]{P.did_you_mean(c, seen)}", "input_layers")
    _sort(nodes)  # finds cycles before they confuse the realizers
    for n in list(nodes):
        if n.layer.p.get("flatten"):
            _insert_after(nodes, n, _realized(n, "flatten_realized", "flatten",
                                              {"start_dimension": 1, "end_dimension": 3}))
    for n in list(nodes):
        act = n.layer.p.get("activation")
        if n.type != "activation" and act not in (None, "none"):
            _insert_after(nodes, n, _realized(n, "activation_realized", "activation",
                                              {"activation": act}))
    training = _attach_loss(nodes, cfg, require_loss) and not inference
    _multiout(nodes)
    for n in nodes:  # NNTrainer pushes the model's value to every layer
        n.clip = cfg.model["clip_grad_by_norm"] or n.layer.p.get("clip_grad_by_norm")
    batch = batch_size or cfg.model["batch_size"]
    if batch % micro_batches:
        raise AssertionError(f"batch {batch} in {micro_batches} parts")   # the planner's bug
    graph = LayerGraph(_sort(nodes), batch // micro_batches, training, frugal,
                       FRUGAL_APPLY_PARTS if frugal else 1, dict(tiles or {}), micro_batches)
    for name in graph.tiles:
        if name not in graph.by_name or not graph.by_name[name].layer.tileable:
            raise AssertionError(f"{name} is not a tileable layer")   # the planner's bug
    _finalize(graph)
    if training:
        _check_gradient_flow(graph)
    if micro_batches > 1 and not graph.splittable:
        raise AssertionError("micro-batches of a model that cannot be split")   # likewise
    return graph
