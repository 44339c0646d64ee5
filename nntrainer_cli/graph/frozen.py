"""The frozen prefix of a model: the layers before the first trainable one whose
output for a record depends on that record alone (no dropout, augmentation, batch
statistics or per-batch normalization among them). Its output, where it meets the
trainable part, can be computed once per record and reused in later epochs, when the
model without it (`head_config`) is all that trains."""

from __future__ import annotations

from dataclasses import dataclass, replace

from nntrainer_cli.config import ModelConfig
from nntrainer_cli.config.sections import Entry, Section

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


def head_config(cfg: ModelConfig, graph: LayerGraph, prefix: FrozenPrefix) -> ModelConfig | None:
    """The model without its frozen prefix: the section whose output is the boundary
    becomes an input layer of that output's shape, and the prefix's other sections go.
    None where the boundary is not the whole of one section's output (a layer's second
    output, or a section whose realized layers run on both sides)."""
    node, index = prefix.boundary
    names = {s.name for s in cfg.layers}
    section = node if node in names else node.rsplit("/", 1)[0]
    own = [n.name for n in graph.nodes if n.name == section or n.name.startswith(section + "/")]
    if index or section not in names or not set(own) <= prefix.nodes:
        return None
    at = next(s for s in cfg.layers if s.name == section)
    shape = ":".join(str(d) for d in graph.by_name[node].ctx.output_shapes[index][1:])
    entries = {"type": Entry("type", "input", at.line), "input_shape": Entry(
        "input_shape", shape, at.line)}
    layers = [Section(s.name, s.line, s.file, entries) if s is at else s
              for s in cfg.layers if s is at or s.name not in prefix.nodes]
    return replace(cfg, layers=layers, backbone_weights={})
