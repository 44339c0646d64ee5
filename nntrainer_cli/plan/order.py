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


@dataclass(frozen=True)
class Slot:
    index: int
    node: str
    phase: Phase
    part: int = 0   # which rows of the weights an apply_gradient slot updates


@dataclass
class NodeSlots:
    forward: int
    calc_gradient: int | None = None
    calc_derivative: int | None = None
    apply_gradient: int | None = None                       # the first apply slot
    apply_parts: list[int] = field(default_factory=list)    # every apply slot

    def slot_of(self, phase: Phase) -> int | None:
        """The node's (first) slot of `phase`, None if that phase does not run."""
        return getattr(self, phase.value)

    def backward(self) -> list[int]:
        return [s for s in (self.calc_gradient, self.calc_derivative) if s is not None] + \
            self.apply_parts


def row_parts(rows: int, parts: int) -> list[tuple[int, int]]:
    """Row ranges of a weight for an apply_gradient split into `parts` slots (fewer
    when it has fewer rows): the optimizer is element-wise, so any split gives the same
    result, and under a tight budget only one part's optimizer state need be resident."""
    bounds = [rows * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def trainable_weights(node: Node) -> bool:
    return any(w.trainable for w in node.ctx.weights)


def gets_gradients(graph: LayerGraph, node: Node) -> bool:
    return graph.training and trainable_weights(node)


def execution_order(graph: LayerGraph) -> tuple[list[Slot], dict[str, NodeSlots], dict[str, bool]]:
    """Slots in order, each node's slots, and which nodes need dL/d(output)."""
    wants: dict[str, bool] = {}
    runs_cd: dict[str, bool] = {}
    for n in graph.nodes:
        runs_cd[n.name] = any(wants[c] for c, _ in n.inputs)
        wants[n.name] = (gets_gradients(graph, n) or runs_cd[n.name]) and not n.layer.is_loss
    slots = [Slot(i, n.name, Phase.FORWARD) for i, n in enumerate(graph.nodes)]
    per_node = {n.name: NodeSlots(i) for i, n in enumerate(graph.nodes)}
    for n in reversed(graph.nodes):
        ns = per_node[n.name]
        phases = []
        if gets_gradients(graph, n):
            phases.append(Phase.CALC_GRADIENT)
        if runs_cd[n.name]:
            phases.append(Phase.CALC_DERIVATIVE)
        if gets_gradients(graph, n) and not n.clip:
            phases.append(Phase.APPLY_GRADIENT)
        for phase in phases:
            setattr(ns, phase.value, len(slots))
            parts = graph.apply_parts if phase == Phase.APPLY_GRADIENT else 1
            for part in range(parts):
                if phase == Phase.APPLY_GRADIENT:
                    ns.apply_parts.append(len(slots))
                slots.append(Slot(len(slots), n.name, phase, part))
    clipped = [n for n in graph.nodes if n.clip and gets_gradients(graph, n)]
    if clipped:
        for n in clipped:
            per_node[n.name].apply_gradient = len(slots)
            per_node[n.name].apply_parts = [len(slots)]
        slots.append(Slot(len(slots), CLIP_SLOT_NODE, Phase.CLIP_AND_APPLY))
    return slots, per_node, wants
