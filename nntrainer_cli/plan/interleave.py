"""Micro-batches: a step's batch in equal parts, each slot run for every part in turn
before the next slot, so a slot needs only one part's records resident while the
other parts' wait in the swap file. (Running the parts through the whole step one
after another would need batch norm's statistics before any part got past it: a pass
over the parts up to each batch norm layer, forward and back, each recomputing what
came before it.)

The plan of one part (the graph at batch / parts) is expanded: every slot becomes one
slot per part, in order. A batch-coupled layer's forward and calc_derivative slots
first run once per part to gather the whole batch's statistics (`gather`: batch norm's
mean and variance, the sums of dy and dy·x̂), then once per part to use them. Apply
and clip slots run once, after the last part. Each part has its own copy
(`name@part`) of every tensor that holds its records: inputs, labels, activations,
derivatives, temporaries. Weights, gradients, optimizer state and what a layer keeps
through the step (the statistics) are shared; a gradient's running sum over the parts
lives only across its calc_gradient slots. Random layers draw in the whole batch's
order (part 0's rows, then part 1's), so their masks are the whole batch's.

Where no layer gathers over the parts and at most one draws (`accumulates`),
the plan may instead run the parts one after another, each forward and back
(`accumulate`: the gradient accumulation of general frameworks). Only one part's
activations then exist at a time, and the gradients' running sums live through the
step, while each part has its own gradients (`fc1:weight:grad@1`), dead once added to
the sum; the budget search keeps the order that moves fewer bytes."""

from __future__ import annotations

from dataclasses import replace

from nntrainer_cli.graph import LayerGraph
from nntrainer_cli.layers.base import Phase

from .order import NodeSlots, Slot
from .specs import RECORD_KINDS, TensorSet, set_lifespans

PER_PART = RECORD_KINDS | {"temporary"}


def accumulates(graph: LayerGraph) -> bool:
    """Whether a graph's micro-batches may run one after another, each forward and back:
    no layer gathers statistics over the parts, and at most one draws random numbers,
    so the draws stay in the whole batch's order."""
    layers = [n.layer for n in graph.nodes]
    return not any(x.batch_coupled for x in layers) and sum(x.draws for x in layers) <= 1


def interleave(ts: TensorSet, parts: int, coupled: set[str],
               accumulate: bool = False) -> TensorSet:
    """The plan of one part (`ts`) for a batch of `parts` parts; `coupled`: the nodes
    that gather over the parts (none when `accumulate`: each part's step in turn)."""
    slots: list[Slot] = []
    at: list[list[list[int]]] = [[[] for _ in range(parts)] for _ in ts.slots]

    def add(s: Slot, micro: int, gather: bool = False) -> None:
        at[s.index][micro].append(len(slots))
        slots.append(replace(s, index=len(slots), micro=micro, gather=gather))

    applies = {Phase.APPLY_GRADIENT, Phase.CLIP_AND_APPLY}
    if accumulate:
        for p in range(parts):
            for s in ts.slots:
                if s.phase not in applies:
                    add(s, p)
        for s in ts.slots:
            if s.phase in applies:
                add(s, parts - 1)
    else:
        for s in ts.slots:
            if s.phase in applies:
                add(s, parts - 1)
                continue
            if s.node in coupled and s.phase in (Phase.FORWARD, Phase.CALC_DERIVATIVE):
                for p in range(parts):
                    add(s, p, gather=True)
            for p in range(parts):
                add(s, p)
    node_slots = {n: NodeSlots({phase: sorted(i for b in base for part in at[b] for i in part)
                                for phase, base in ns.parts.items()}, ns.tiles, ns.untiled)
                  for n, ns in ts.node_slots.items()}   # (a clipped layer's: the clip slot)
    out = TensorSet(slots, node_slots, io=ts.io, micro_batches=parts)
    # one after another, each part also has its own gradients: a part's is dead once
    # added to the sum, so it neither lives through the later parts nor is swapped
    grads = {g for io in ts.io.values() for gs in io.grads.values() for g in gs} \
        if accumulate else set()
    for spec in ts.specs.values():
        if (spec.kind in PER_PART or spec.name in grads) and not spec.persistent:
            for p in range(parts):
                name = f"{spec.name}@{p}"
                uses = {i for u in spec.uses for i in at[u][p]}
                if not uses:
                    raise AssertionError(f"{spec.name} is used only where part {p} is not")
                out.specs[name] = replace(spec, name=name, uses=uses,
                                          alias_of=spec.alias_of and f"{spec.alias_of}@{p}")
        else:
            out.specs[spec.name] = replace(
                spec, uses={i for u in spec.uses for part in at[u] for i in part})
    for spec in out.specs.values():
        if spec.alias_of and spec.alias_of not in out.specs:   # a part's alias of a shared
            raise AssertionError(f"{spec.name} aliases {spec.alias_of}, not a part's")
    set_lifespans(out)
    return out
