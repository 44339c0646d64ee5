"""The memory plan: tensor specs with arena offsets, peak, lower bound, naive total."""

from __future__ import annotations

from dataclasses import dataclass, replace

from nntrainer_cli.graph import LayerGraph
from nntrainer_cli.layers.base import Phase

from .interleave import accumulates, interleave
from .order import reorders
from .planners import Item, check_valid, lower_bound, peak_of, plan_offsets
from .specs import TensorSet, TensorSpec, build_specs
from .swap import make_swap_plan
from .swap_plan import SwapOptions, SwapPlan, SwapRefusal


@dataclass
class MemoryPlan:
    tensors: TensorSet
    planner: str           # the planner that produced the offsets
    requested: str         # the planner asked for (e.g. best)
    batch_size: int        # the records of a step
    peak_bytes: int
    lower_bound_bytes: int
    naive_bytes: int
    swap: SwapPlan | None = None   # under a memory budget
    frugal: int = 0                # the graph's frugal level (0: as written)
    micro_batches: int = 1         # the step's batch runs in this many parts, interleaved
    accumulate: bool = False       # ... or one after another, each forward and back
    in_pieces: tuple[str, ...] = ()   # layers whose work buffers that level shrinks
    derivative_first: bool = False    # tiles: each tile's derivative before its gradient

    @property
    def arena_bytes(self) -> int:
        """What the runtime allocates: the resident arena when swapping."""
        return self.swap.peak if self.swap else self.peak_bytes

    @property
    def tiles(self) -> dict[str, int]:
        """The tiled layers and their number of row tiles (a budget below whole layers)."""
        return {n: len(ns.tiles) for n, ns in self.tensors.node_slots.items() if ns.tiles}

    @property
    def specs(self) -> dict[str, TensorSpec]:
        return self.tensors.specs

    @property
    def slots(self):
        return self.tensors.slots

    def slot_label(self, slot) -> str:
        """The slot's phase, with its tile (`forward tile 2/4`) or apply part (`2/4`),
        and in micro-batches its part of the batch (`batch 1/2`, `gathers` where batch
        norm gathers the batch's statistics): how `plan` and `--profile` name a slot."""
        ns = self.tensors.node_slots.get(slot.node)
        micro = "" if self.micro_batches == 1 or slot.phase in (
            Phase.APPLY_GRADIENT, Phase.CLIP_AND_APPLY) else \
            f" batch {slot.micro + 1}/{self.micro_batches}" + (" gathers" if slot.gather else "")
        if ns is not None and ns.tiles and slot.phase != Phase.CLIP_AND_APPLY:
            return f"{slot.phase} tile {slot.part + 1}/{len(ns.tiles)}{micro}"
        parts = len(ns.apply_parts) if ns is not None else 1
        return f"{slot.phase} {slot.part + 1}/{parts}" if parts > 1 and \
            slot.phase == Phase.APPLY_GRADIENT else f"{slot.phase}{micro}"


def make_plan(graph: LayerGraph, optimizer_state: tuple[str, ...], planner: str = "best",
              in_place: bool = True, derivative_first: bool = False,
              accumulate: bool = False) -> MemoryPlan:
    """The plan without swap: every tensor at its offset in one arena (the order of a
    tile's backward slots: `execution_order`; of micro-batches: `interleave`, where
    `accumulate` is ignored for a graph whose parts cannot run in turn)."""
    ts = build_specs(graph, optimizer_state, in_place, derivative_first)
    accumulate = accumulate and graph.micro_batches > 1 and accumulates(graph)
    if graph.micro_batches > 1:
        ts = interleave(ts, graph.micro_batches,
                        {n.name for n in graph.nodes if n.layer.batch_coupled}, accumulate)
    roots = ts.roots()
    items = [Item(s.bytes, s.first, s.last) for s in roots]
    chosen, offsets = plan_offsets(items, planner)
    peak = peak_of(items, offsets)
    problems = check_valid(items, offsets, peak)
    if problems:  # a planner bug, never the user's: fail loudly
        raise AssertionError(f"planner {chosen} produced an invalid plan: {problems[:3]}")
    for s, off in zip(roots, offsets):
        s.offset = off
    for s in ts.specs.values():
        if s.alias_of:
            s.offset = ts.specs[s.alias_of].offset
    return MemoryPlan(ts, chosen, planner, graph.step_batch, peak, lower_bound(items),
                      sum(it.size for it in items), frugal=graph.frugal,
                      micro_batches=graph.micro_batches,
                      in_pieces=tuple(n.name for n in graph.nodes
                                      if graph.frugal > 1 and n.layer.in_pieces),
                      derivative_first=derivative_first and reorders(graph),
                      accumulate=accumulate)


def with_swap(plan: MemoryPlan, swap: SwapOptions) -> MemoryPlan | SwapRefusal:
    """The same plan with the schedule that keeps its resident arena within the budget,
    or the refusal saying the smallest budget that works."""
    schedule = make_swap_plan(plan.tensors, swap, plan.requested)
    return schedule if isinstance(schedule, SwapRefusal) else replace(plan, swap=schedule)
