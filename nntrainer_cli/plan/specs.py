"""Every tensor of one training iteration with its size and the exact slots that touch
it; lifespans follow from what each step reads (the layer's Access). In-place (aliases)
is decided here, not trusted: an output may overwrite its input only if no one reads
the old value after that slot; likewise a layer's backward may overwrite its output
only if no one reads it later (checked for every plan)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from nntrainer_cli.graph import LayerGraph
from nntrainer_cli.layers.base import BACKWARD, Access, InPlace, Phase

from .order import NodeSlots, Slot, execution_order, row_parts

ALIGN = 64  # bytes; every tensor starts on a cache line
SPLIT_MIN_BYTES = 64 * 1024  # smaller weights are applied whole even in split apply slots
# the kinds of tensor that hold a batch's records (per micro-batch; read, not written,
# by calc_gradient)
RECORD_KINDS = frozenset({"input", "label", "activation", "derivative"})


@dataclass
class TensorSpec:
    name: str
    kind: str   # input, label, weight, gradient, optimizer_state, activation, derivative, temporary
    shape: tuple[int, ...]
    dtype: str
    uses: set[int]
    persistent: bool = False       # value must survive between iterations (weights, state)
    constant: bool = False         # a weight nothing changes (frozen, or not training)
    alias_of: str | None = None    # shares the bytes of this (root) tensor
    first: int = 0
    last: int = 0
    offset: int | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def bytes(self) -> int:
        return 0 if self.alias_of else -(-self.nbytes // ALIGN) * ALIGN


@dataclass
class NodeIO:
    """The tensors (by name) the runtime hands one layer in each role: what the plan
    gives the runtime for every node. Weights, gradients, temporaries and optimizer
    state are keyed by the layer's own names for them (`weight`, `col`, ...)."""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    in_grads: list[str | None] = field(default_factory=list)   # None: nobody wants it
    out_grads: list[str | None] = field(default_factory=list)
    # per weight its tensors: one, or one per tile (a tiled weight's rows io.rows[name])
    weights: dict[str, list[str]] = field(default_factory=dict)
    grads: dict[str, list[str]] = field(default_factory=dict)
    # in micro-batches, per gradient tensor the sum of the earlier micro-batches' ones
    sums: dict[str, list[str]] = field(default_factory=dict)
    # per trainable weight: its row ranges (one per apply slot, or its tiles), per range
    # the part whose apply slot updates it, and one tensor per optimizer state (adam: m, v)
    rows: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    applied: dict[str, list[int]] = field(default_factory=dict)
    state: dict[str, list[list[str]]] = field(default_factory=dict)
    temps: dict[str, str] = field(default_factory=dict)
    label: str | None = None


@dataclass
class TensorSet:
    slots: list[Slot]
    node_slots: dict[str, NodeSlots]
    specs: dict[str, TensorSpec] = field(default_factory=dict)
    io: dict[str, NodeIO] = field(default_factory=dict)
    micro_batches: int = 1   # the slots interleave this many parts (plan/interleave.py)

    @property
    def end(self) -> int:
        return len(self.slots) - 1

    def roots(self) -> list[TensorSpec]:
        return [s for s in self.specs.values() if s.alias_of is None]

    def local(self, name: str, micro: int) -> str:
        """The tensor `name` (as NodeIO names it) of one part of the batch: the part's
        own copy where each part has one, else the shared tensor."""
        own = f"{name}@{micro}"
        return own if self.micro_batches > 1 and own in self.specs else name


def _phase_slots(ns: NodeSlots, phases) -> set[int]:
    return {s for p in phases for s in ns.all(p)}


def _reads(ns: NodeSlots, which: str, access: Access) -> set[int]:
    """Backward slots of a node that read its own `which` ("input" or "output")."""
    steps = {Phase.CALC_GRADIENT: access.gradient_reads,
             Phase.CALC_DERIVATIVE: access.derivative_reads}
    return _phase_slots(ns, [p for p, reads in steps.items() if which in reads])


def build_specs(graph: LayerGraph, optimizer_state: tuple[str, ...],
                in_place: bool = True, derivative_first: bool = False) -> TensorSet:
    slots, node_slots, wants = execution_order(graph, derivative_first)
    ts = TensorSet(slots, node_slots)
    specs = ts.specs

    def add(name, kind, shape, uses, dtype="float32", persistent=False, constant=False):
        specs[name] = TensorSpec(name, kind, tuple(shape), np.dtype(dtype).name, set(uses),
                                 persistent, constant=constant)
        return name

    for n in graph.nodes:
        ns, ctx = node_slots[n.name], n.ctx
        forward = set(ns.all(Phase.FORWARD))
        io = ts.io[n.name] = NodeIO()
        if not n.inputs:
            io.inputs.append(add(f"{n.name}:input", "input", ctx.input_shapes[0], {0}))
            io.in_grads.append(None)
        for c, i in n.inputs:
            io.inputs.append(f"{c}:out{i}")
            io.in_grads.append(f"{c}:out{i}:grad" if wants[c] else None)
        for k, name in enumerate(io.inputs):
            specs[name].uses |= forward | _reads(ns, "input", ctx.access)
            if io.in_grads[k]:
                specs[io.in_grads[k]].uses |= set(ns.all(Phase.CALC_DERIVATIVE))
        for i, shape in enumerate(ctx.output_shapes):
            io.outputs.append(add(f"{n.name}:out{i}", "activation", shape,
                                  forward | _reads(ns, "output", ctx.access)))
            grad = None
            if wants[n.name]:
                grad = add(f"{n.name}:out{i}:grad", "derivative", shape,
                           _phase_slots(ns, BACKWARD))
            io.out_grads.append(grad)
        if n.layer.is_loss:
            io.label = add(f"{n.name}:label", "label", n.layer.label_shape(ctx),
                           {0} | forward | _phase_slots(ns, [Phase.CALC_DERIVATIVE]))
        for w in ctx.weights:
            _weight_specs(ts, n.name, w, graph.training, optimizer_state, add)
            if graph.micro_batches > 1 and w.name in io.grads:
                _sum_specs(ts, n.name, w.name, add)
        for t in ctx.temps:
            uses = _phase_slots(ns, t.phases)
            if uses:  # else those phases never run (e.g. no derivative for the first layer)
                io.temps[t.name] = add(f"{n.name}:{t.name}", "temporary", t.shape, uses,
                                       dtype=t.dtype, persistent=t.persistent)
    if in_place:
        _alias(graph, ts)
    set_lifespans(ts)
    _check_backward_writes(graph, ts)
    return ts


def _weight_specs(ts: TensorSet, node: str, w, training: bool, optimizer_state, add) -> None:
    """A weight's tensors, its gradient's and its optimizer state's. A tiled weight has
    one of each per tile, used only in its tile's slots; an untiled one is used in all
    the node's slots, its state split into the row parts of the apply slots; in a tiled
    node it lives in one tile's slots (ns.untiled) and is applied whole in that tile's
    apply slot. Part k is applied in the apply slot of part k (the clip slot for a
    clipped layer)."""
    ns, io, name = ts.node_slots[node], ts.io[node], f"{node}:{w.name}"
    trained = w.trainable and training
    constant = not w.state and not trained

    def in_tile(k: int) -> set[int]:
        return {s for s in (*ns.all(Phase.FORWARD), *ns.backward()) if ts.slots[s].part == k}

    # the weight's row parts, the part whose apply slot updates each, and its tensors:
    # (name, shape, slots, which row parts it holds)
    if w.tiled and ns.tiles:
        rows, applied = ns.tiles, list(range(len(ns.tiles)))
        tensors = [(f"{name}:t{k}", (hi - lo,) + w.shape[1:], in_tile(k), [k])
                   for k, (lo, hi) in enumerate(rows)]
    elif ns.tiles:
        rows, applied = [(0, w.shape[0])], [ns.untiled]
        tensors = [(name, w.shape, in_tile(ns.untiled), [0])]
    else:
        big = math.prod(w.shape) * 4 >= SPLIT_MIN_BYTES
        rows = row_parts(w.shape[0], len(ns.apply_parts) if trained and big else 1)
        applied = list(range(len(rows)))   # part k in the apply slot of part k
        tensors = [(name, w.shape, {*ns.all(Phase.FORWARD), *ns.backward()},
                    list(range(len(rows))))]
    if not trained:
        io.weights[w.name] = [add(n, "weight", shape, uses, persistent=True, constant=constant)
                              for n, shape, uses, _ in tensors]
        return
    # the apply slot of each row part (a clipped layer's one slot applies every part)
    applies = defaultdict(lambda: ns.apply_parts[0],
                          {ts.slots[s].part: s for s in ns.apply_parts})
    at = [applies[k] for k in applied]
    io.weights[w.name] = [add(n, "weight", shape, uses | {at[k] for k in held},
                              persistent=True, constant=constant)
                          for n, shape, uses, held in tensors]
    io.grads[w.name] = [add(f"{n}:grad", "gradient", shape,
                            {s for s in uses if ts.slots[s].phase == Phase.CALC_GRADIENT}
                            | {at[k] for k in held})
                        for n, shape, uses, held in tensors]
    io.rows[w.name], io.applied[w.name] = rows, applied
    split = len(rows) > 1
    io.state[w.name] = [
        [add(f"{name}:{s}" + (f":{k}" if split else ""), "optimizer_state",
             (hi - lo,) + w.shape[1:], {at[k]}, persistent=True)
         for s in optimizer_state]
        for k, (lo, hi) in enumerate(rows)]


def _sum_specs(ts: TensorSet, node: str, weight: str, add) -> None:
    """Micro-batches: beside each gradient tensor, the sum of the earlier parts'
    gradients, added where the gradient is complete: in the one calc_gradient slot
    that makes it, its first use (before any apply slot). Expanded to all parts
    (plan/interleave.py), it lives across that slot's runs for the parts."""
    ts.io[node].sums[weight] = [add(f"{g}:sum", "gradient", ts.specs[g].shape,
                                    {min(ts.specs[g].uses)})
                                for g in ts.io[node].grads[weight]]


def _alias(graph: LayerGraph, ts: TensorSet) -> None:
    specs = ts.specs
    members: dict[str, list[str]] = {}

    def root(name):
        return specs[name].alias_of or name

    def try_alias(kind, src, dst, at):
        r = root(src)
        group = members.setdefault(r, [r])
        if specs[dst].nbytes != specs[r].nbytes or specs[dst].dtype != specs[r].dtype:
            return
        if kind == InPlace.OVERWRITE and any(max(specs[m].uses) > at for m in group):
            return  # someone still needs the old value after this slot
        specs[dst].alias_of = r
        group.append(dst)

    for n in graph.nodes:
        io, access = ts.io[n.name], n.ctx.access
        if access.in_place and len(io.inputs) == 1:
            for out in io.outputs:
                try_alias(access.in_place, io.inputs[0], out, ts.node_slots[n.name].forward)
    for n in reversed(graph.nodes):
        io, access = ts.io[n.name], n.ctx.access
        cd = ts.node_slots[n.name].last(Phase.CALC_DERIVATIVE)
        if (access.derivative_in_place and len(io.inputs) == 1 and io.in_grads[0]
                and len(io.out_grads) == 1 and io.out_grads[0] and cd is not None):
            try_alias(access.derivative_in_place, io.out_grads[0], io.in_grads[0], cd)


def set_lifespans(ts: TensorSet) -> None:
    for s in ts.specs.values():
        s.first, s.last = (0, ts.end) if s.persistent else (min(s.uses), max(s.uses))
    for s in ts.specs.values():
        if s.alias_of:
            r = ts.specs[s.alias_of]
            r.first, r.last = min(r.first, s.first), max(r.last, s.last)


def _check_backward_writes(graph: LayerGraph, ts: TensorSet) -> None:
    """A layer whose calc_derivative overwrites its output (as scratch) must be the last
    to touch those bytes: a later reader would get garbage. A layer bug if not, never
    the user's, so it fails loudly."""
    for n in graph.nodes:
        cd = ts.node_slots[n.name].last(Phase.CALC_DERIVATIVE)
        if cd is None or "output" not in n.ctx.access.derivative_writes:
            continue
        for out in ts.io[n.name].outputs:
            root = ts.specs[ts.specs[out].alias_of or out]   # its lifespan covers the group
            if root.last > cd:
                raise AssertionError(f"{n.name} overwrites {out} at slot {cd}, but those "
                                     f"bytes are read until slot {root.last}")
