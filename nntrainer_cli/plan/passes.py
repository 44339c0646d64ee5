"""Batch norm in micro-batches: before a step's parts run in full, passes over them
gather the whole batch's statistics, so every part normalizes as the whole batch would.

Per batch norm layer, in forward order, a pass runs the forward slots up to it, where
it gathers its mean and variance (each using the statistics of the ones before); then,
in backward order, for each that passes a derivative back, a pass runs forward and the
derivatives down to it, where it gathers the sums of dy and dy·x̂ its derivative needs.
The full step comes last. A pass is the plan's slot list with some steps left out: the
swap schedule's loads and stores still run at every slot, so every view stays where
the plan put it, and nothing a pass leaves out is read before the full step writes it.
Weight gradients are not summed and nothing is applied in a pass; a layer whose
derivative reads what its gradient step made (lstm) runs that step too."""

from __future__ import annotations

from dataclasses import dataclass

from nntrainer_cli.graph import LayerGraph
from nntrainer_cli.layers.base import Phase

from .specs import TensorSet


@dataclass(frozen=True)
class Pass:
    runs: tuple[bool, ...]   # per slot: whether its step computes
    gather: int              # the slot whose layer gathers the batch's statistics


def gathering_passes(graph: LayerGraph, ts: TensorSet) -> tuple[Pass, ...]:
    """The passes a step makes before its full run: none unless the batch is split and
    a layer is batch-coupled."""
    coupled = [n for n in graph.nodes if n.layer.batch_coupled]
    if graph.micro_batches == 1 or not coupled:
        return ()
    ns = ts.node_slots

    def runs(last: int, backward: bool) -> tuple[bool, ...]:
        def computes(s) -> bool:
            if s.index > last or s.node not in graph.by_name:   # (the clip slot)
                return False
            layer = graph.by_name[s.node].layer
            return s.phase == Phase.FORWARD or backward and (
                s.phase == Phase.CALC_DERIVATIVE or
                s.phase == Phase.CALC_GRADIENT and layer.derivative_reads_gradient)
        return tuple(computes(s) for s in ts.slots)

    passes = [Pass(runs(ns[n.name].forward, False), ns[n.name].forward) for n in coupled]
    for n in reversed(coupled):
        d = ns[n.name].last(Phase.CALC_DERIVATIVE)
        if d is not None:
            passes.append(Pass(runs(d, True), d))
    return tuple(passes)
