"""The execution order of one training iteration, NNTrainer-style: forward of every
layer in topological order, then backward in reverse with calc_gradient,
calc_derivative and apply_gradient slots per layer. Only phases that really run get
a slot: a layer without trainable weights has no calc_gradient/apply_gradient, and a
layer whose inputs need no derivative (the input layer, a frozen prefix) no
calc_derivative. Layers with clip_grad_by_norm skip their own apply_gradient: one
last slot clips all their gradients by the global norm and applies them, so those
gradients stay live to the end (NNTrainer does the same)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nntrainer_cli.graph import LayerGraph, Node
from nntrainer_cli.layers.base import Phase

CLIP_SLOT_NODE = "(clipped layers)"


@dataclass(frozen=True, slots=True)
class Slot:
    index: int
    node: str
    phase: Phase
    part: int = 0   # a tiled layer's tile, or which rows an apply_gradient slot updates
    micro: int = 0  # in micro-batches (plan/interleave.py): the part of the batch it runs
    gather: bool = False   # and whether it gathers the whole batch's statistics


@dataclass
class NodeSlots:
    """A node's slots per phase that runs, in order: one, or one per weight tile (a
    tiled layer: `tiles` holds the tiles' row ranges), or for apply_gradient one per
    row part (frugal plans)."""
    parts: dict[Phase, list[int]] = field(default_factory=dict)
    tiles: list[tuple[int, int]] = field(default_factory=list)
    untiled: int = 0   # a tiled node: the tile whose slots hold its untiled weights

    def all(self, phase: Phase) -> list[int]:
        return self.parts.get(phase, [])

    def last(self, phase: Phase) -> int | None:
        """The slot after which the phase is done; None if it does not run."""
        return self.parts[phase][-1] if phase in self.parts else None

    @property
    def forward(self) -> int:
        """The node's last forward slot: its output is complete after it."""
        return self.parts[Phase.FORWARD][-1]

    @property
    def apply_parts(self) -> list[int]:
        return self.all(Phase.APPLY_GRADIENT)

    def backward(self) -> list[int]:
        return [s for p in (Phase.CALC_GRADIENT, Phase.CALC_DERIVATIVE, Phase.APPLY_GRADIENT)
                for s in self.all(p)]


def row_parts(rows: int, parts: int) -> list[tuple[int, int]]:
    """Row ranges of a weight for an apply_gradient split into `parts` slots (fewer
    when it has fewer rows), or for its tiles: the optimizer is element-wise, so any
    split gives the same result, and under a tight budget only one part's optimizer
    state need be resident."""
    bounds = [rows * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def tile_rows(graph: LayerGraph, node: Node) -> list[tuple[int, int]]:
    """The row ranges of a tiled node's tiles (of its tiled weights' first axis);
    empty when the node is not tiled."""
    tiled = [w for w in node.ctx.weights if w.tiled]
    tiles = graph.tiles.get(node.name, 1)
    rows = row_parts(tiled[0].shape[0], tiles) if tiled and tiles > 1 else []
    return rows if len(rows) > 1 else []


def trainable_weights(node: Node) -> bool:
    return any(w.trainable for w in node.ctx.weights)


def gets_gradients(graph: LayerGraph, node: Node) -> bool:
    return graph.training and trainable_weights(node)


def reorders(graph: LayerGraph, tiles: dict[str, int] | None = None) -> bool:
    """Whether `derivative_first` changes the graph's order, with its own tiles or with
    `tiles` (the layers' kinds decide, so no graph need be built with them): a tiled
    layer whose derivative does not need its gradient first."""
    return any(not graph.by_name[n].layer.derivative_needs_gradient
               for n in (graph.tiles if tiles is None else tiles))


def execution_order(graph: LayerGraph, derivative_first: bool = False
                    ) -> tuple[list[Slot], dict[str, NodeSlots], dict[str, bool]]:
    """Slots in order, each node's slots, and which nodes need dL/d(output). A tiled
    node runs its forward tile by tile, and its backward tile by tile in reverse, each
    tile's calc_gradient, calc_derivative and apply_gradient together: a tile's weight
    is read for the derivative before it changes, and its gradient is applied at once.
    With `derivative_first` each tile's calc_derivative comes before its calc_gradient
    (unless the layer's derivative reads what its gradient made): the gradient is then
    made right before its update (but for clipped layers') and never waits a slot,
    which some plans swap out and back; others fit only in the first order (the budget
    search compares the two)."""
    wants: dict[str, bool] = {}
    runs_cd: dict[str, bool] = {}
    for n in graph.nodes:
        runs_cd[n.name] = any(wants[c] for c, _ in n.inputs)
        wants[n.name] = (gets_gradients(graph, n) or runs_cd[n.name]) and not n.layer.is_loss
    slots: list[Slot] = []
    per_node = {}
    for n in graph.nodes:
        tiles = tile_rows(graph, n)
        per_node[n.name] = NodeSlots(tiles=tiles, untiled=n.layer.untiled_tile % max(1, len(tiles)))

    def add(n: Node, phase: Phase, part: int = 0) -> None:
        per_node[n.name].parts.setdefault(phase, []).append(len(slots))
        slots.append(Slot(len(slots), n.name, phase, part))

    for n in graph.nodes:
        for t in range(max(1, len(per_node[n.name].tiles))):
            add(n, Phase.FORWARD, t)
    for n in reversed(graph.nodes):
        tiles = per_node[n.name].tiles
        phases = []
        if gets_gradients(graph, n):
            phases.append(Phase.CALC_GRADIENT)
        if runs_cd[n.name]:
            phases.append(Phase.CALC_DERIVATIVE)
        applies = gets_gradients(graph, n) and not n.clip
        if tiles:
            if derivative_first and not n.layer.derivative_needs_gradient:
                phases.reverse()
            for t in reversed(range(len(tiles))):
                for phase in phases + [Phase.APPLY_GRADIENT] * applies:
                    add(n, phase, t)
            continue
        for phase in phases:
            add(n, phase)
        for part in range(graph.apply_parts if applies else 0):
            add(n, Phase.APPLY_GRADIENT, part)
    clipped = [n for n in graph.nodes if n.clip and gets_gradients(graph, n)]
    if clipped:
        for n in clipped:
            per_node[n.name].parts[Phase.APPLY_GRADIENT] = [len(slots)]
        slots.append(Slot(len(slots), CLIP_SLOT_NODE, Phase.CLIP_AND_APPLY))
    return slots, per_node, wants
