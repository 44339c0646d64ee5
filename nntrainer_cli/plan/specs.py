"""Every tensor of one training iteration with its size and the exact slots that touch
it; lifespans follow from what each phase reads (the layer's grad_reads/deriv_reads).
In-place (aliases) is decided here, not trusted: an output may overwrite its input only
if no one reads the old value after that slot."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nntrainer_cli.graph import LayerGraph

from .order import NodeSlots, Slot, execution_order, row_parts

ALIGN = 64  # bytes; every tensor starts on a cache line
SPLIT_MIN_BYTES = 64 * 1024  # smaller weights are applied whole even in split apply slots
KINDS = ("input", "label", "weight", "gradient", "optimizer_state", "activation", "derivative",
         "temporary")


@dataclass
class TensorSpec:
    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    uses: set[int]
    persistent: bool = False       # value must survive between iterations (weights, state)
    alias_of: str | None = None    # shares the bytes of this (root) tensor
    first: int = 0
    last: int = 0
    offset: int | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def bytes(self) -> int:
        return 0 if self.alias_of else -(-self.nbytes // ALIGN) * ALIGN


@dataclass
class TensorSet:
    slots: list[Slot]
    node_slots: dict[str, NodeSlots]
    specs: dict[str, TensorSpec] = field(default_factory=dict)
    # per node: tensor names the runtime hands the layer
    io: dict[str, dict] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return len(self.slots) - 1

    def roots(self) -> list[TensorSpec]:
        return [s for s in self.specs.values() if s.alias_of is None]


def _phase_slots(ns: NodeSlots, phase: str) -> set[int]:
    pick = {"forward": [ns.forward], "calc_gradient": [ns.calc_gradient],
            "calc_derivative": [ns.calc_derivative],
            "backward": [ns.calc_gradient, ns.calc_derivative],
            "iteration": [ns.forward, ns.calc_gradient, ns.calc_derivative]}[phase]
    return {s for s in pick if s is not None}


def _reads(ns: NodeSlots, which: str, layer) -> set[int]:
    out = set()
    if which in layer.grad_reads and ns.calc_gradient is not None:
        out.add(ns.calc_gradient)
    if which in layer.deriv_reads and ns.calc_derivative is not None:
        out.add(ns.calc_derivative)
    return out


def build_specs(graph: LayerGraph, optimizer_state: tuple[str, ...],
                in_place: bool = True) -> TensorSet:
    slots, node_slots, wants = execution_order(graph)
    ts = TensorSet(slots, node_slots)
    specs = ts.specs

    def add(name, kind, shape, uses, dtype="float32", persistent=False):
        specs[name] = TensorSpec(name, kind, tuple(shape), np.dtype(dtype).name, set(uses),
                                 persistent)
        return name

    for n in graph.nodes:
        ns, layer, ctx = node_slots[n.name], n.layer, n.ctx
        io = ts.io[n.name] = {"inputs": [], "outputs": [], "in_grads": [], "out_grads": [],
                              "weights": {}, "grads": {}, "state": {}, "rows": {},
                              "temps": {},
                              "label": None}
        if not n.inputs:
            io["inputs"].append(add(f"{n.name}:input", "input", ctx.input_shapes[0], {0}))
            io["in_grads"].append(None)
        for c, i in n.inputs:
            io["inputs"].append(f"{c}:out{i}")
            io["in_grads"].append(f"{c}:out{i}:grad" if wants[c] else None)
        for k, name in enumerate(io["inputs"]):
            specs[name].uses |= {ns.forward} | _reads(ns, "input", layer)
            if io["in_grads"][k]:
                specs[io["in_grads"][k]].uses.add(ns.calc_derivative)
        for i, shape in enumerate(ctx.output_shapes):
            io["outputs"].append(add(f"{n.name}:out{i}", "activation", shape,
                                     {ns.forward} | _reads(ns, "output", layer)))
            grad = None
            if wants[n.name]:
                grad = add(f"{n.name}:out{i}:grad", "derivative", shape,
                           _phase_slots(ns, "backward"))
            io["out_grads"].append(grad)
        if layer.is_loss:
            io["label"] = add(f"{n.name}:label", "label", ctx.input_shapes[0],
                              {0, ns.forward} | _phase_slots(ns, "calc_derivative"))
        for w in ctx.weights:
            name = f"{n.name}:{w.name}"
            io["weights"][w.name] = add(name, "weight", w.shape, {ns.forward, *ns.backward()},
                                        persistent=True)
            if w.trainable and graph.training:
                io["grads"][w.name] = add(f"{name}:grad", "gradient", w.shape,
                                          {ns.calc_gradient, *ns.apply_parts})
                parts = len(ns.apply_parts) if np.prod(w.shape) * 4 >= SPLIT_MIN_BYTES else 1
                rows = io["rows"][w.name] = row_parts(w.shape[0], parts)
                split = len(rows) > 1
                io["state"][w.name] = [
                    [add(f"{name}:{s}" + (f":{k}" if split else ""), "optimizer_state",
                         (hi - lo,) + w.shape[1:], {ns.apply_parts[k]}, persistent=True)
                     for s in optimizer_state]
                    for k, (lo, hi) in enumerate(rows)]
        for t in ctx.temps:
            uses = _phase_slots(ns, t.phase)
            if uses:  # else that phase never runs (e.g. no derivative for the first layer)
                io["temps"][t.name] = add(f"{n.name}:{t.name}", "temporary", t.shape, uses,
                                          dtype=t.dtype)
    if in_place:
        _alias(graph, ts)
    _lifespans(ts)
    return ts


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
        if kind == "overwrite" and any(max(specs[m].uses) > at for m in group):
            return  # someone still needs the old value after this slot
        specs[dst].alias_of = r
        group.append(dst)

    for n in graph.nodes:
        io, layer = ts.io[n.name], n.layer
        if layer.forward_alias and len(io["inputs"]) == 1:
            for out in io["outputs"]:
                try_alias(layer.forward_alias, io["inputs"][0], out, ts.node_slots[n.name].forward)
    for n in reversed(graph.nodes):
        io, layer = ts.io[n.name], n.layer
        cd = ts.node_slots[n.name].calc_derivative
        if (layer.derivative_alias and len(io["inputs"]) == 1 and io["in_grads"][0]
                and len(io["out_grads"]) == 1 and io["out_grads"][0] and cd is not None):
            try_alias(layer.derivative_alias, io["out_grads"][0], io["in_grads"][0], cd)


def _lifespans(ts: TensorSet) -> None:
    for s in ts.specs.values():
        s.first, s.last = (0, ts.end) if s.persistent else (min(s.uses), max(s.uses))
    for s in ts.specs.values():
        if s.alias_of:
            r = ts.specs[s.alias_of]
            r.first, r.last = min(r.first, s.first), max(r.last, s.last)
