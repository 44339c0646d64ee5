"""The frozen prefix of a model: the layers before the first trainable one whose
output for a record depends on that record alone (no dropout, augmentation, batch
statistics or per-batch normalization among them). Its output, where it meets the
trainable part, can be computed once per record and reused in later epochs."""

from __future__ import annotations

from dataclasses import dataclass

from .graph import LayerGraph


@dataclass(frozen=True)
class FrozenPrefix:
    nodes: frozenset       # names of the prefix's layers, the inputs among them
    boundary: tuple        # (layer, output index): the one tensor the trainable part reads


def frozen_prefix(graph: LayerGraph) -> FrozenPrefix | None:
    """None when there is nothing worth caching: no weights learned by gradient, no
    frozen layer with weights before them, or more than one tensor crossing over."""
    if not graph.learns_by_gradient:
        return None
    frozen: set[str] = set()
    for n in graph.nodes:
        if n.layer.is_loss or not all(c in frozen for c, _ in n.inputs):
            continue
        if not any(w.trainable for w in n.ctx.weights) and n.layer.per_record():
            frozen.add(n.name)
    cut = {(c, i) for n in graph.nodes if n.name not in frozen
           for c, i in n.inputs if c in frozen}
    if len(cut) != 1 or not any(graph.by_name[f].ctx.weights for f in frozen):
        return None
    return FrozenPrefix(frozenset(frozen), cut.pop())
