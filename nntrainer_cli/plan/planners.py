"""Memory planners: give every tensor an offset in one arena so that tensors whose
lifespans overlap never share a byte. Each works on plain (size, first, last) items,
so it can be tested on made-up sets."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True, slots=True)
class Item:
    size: int
    first: int
    last: int


def naive(items: Sequence[Item]) -> list[int]:
    """Every tensor gets its own bytes: what a framework that keeps everything does."""
    offsets, at = [], 0
    for it in items:
        offsets.append(at)
        at += it.size
    return offsets


def conflicts(items: Sequence[Item]) -> list[np.ndarray]:
    """Per item, the items whose lifespans overlap it (itself included): the only ones
    whose bytes it must avoid. Found once per item set, a row at a time over arrays (a
    Python loop over every pair took seconds on deep models; a whole matrix, or lists
    of ints, MiBs), then shared by every placement order."""
    first = np.array([it.first for it in items], dtype=np.int64)
    last = np.array([it.last for it in items], dtype=np.int64)
    return [np.flatnonzero((first <= last[i]) & (last >= first[i])).astype(np.int32)
            for i in range(len(items))]


def _place(items: Sequence[Item], order: list[int], best_fit: bool,
           near: list[np.ndarray] | None = None) -> list[int]:
    """Place items in the given order, each in the lowest (first fit) or tightest
    (best fit) gap left by already-placed items whose lifespans overlap it (`near`:
    `conflicts(items)`). Plain lists where an item has a few dozen neighbours, too few
    for array calls to pay for themselves (measured: twice as fast as arrays); arrays
    past ARRAY_NEIGHBOURS (a micro-batched plan's tensors have hundreds: 3x faster)."""
    near = conflicts(items) if near is None else near
    offsets, end = [0] * len(items), [-1] * len(items)   # end: offset + size once placed
    # the same, as arrays, for the array path (each path reads the form it is fast on)
    at_offset = np.zeros(len(items), np.int64)
    at_end = np.full(len(items), -1, np.int64)
    for i in order:
        need = items[i].size
        if len(near[i]) > ARRAY_NEIGHBOURS:
            best = _gap_of_arrays(at_offset[near[i]], at_end[near[i]], need, best_fit)
        else:
            best = _gap(sorted((offsets[j], end[j]) for j in near[i].tolist() if end[j] >= 0),
                        need, best_fit)
        offsets[i], end[i] = best, best + need
        at_offset[i], at_end[i] = best, best + need
    return offsets


ARRAY_NEIGHBOURS = 64


def _gap(blocks: list[tuple[int, int]], need: int, best_fit: bool) -> int:
    """Where `need` bytes go among placed blocks (offset, end) sorted by offset: the
    first or the tightest gap that holds them, else above them all."""
    best, best_gap, at = None, None, 0
    for a, b in blocks:
        gap = a - at
        if gap >= need:
            if not best_fit:
                return at
            if best_gap is None or gap < best_gap:
                best, best_gap = at, gap
        at = max(at, b)
    return best if best is not None else at


def _gap_of_arrays(offset: np.ndarray, end: np.ndarray, need: int, best_fit: bool) -> int:
    """_gap over arrays of the neighbours' offsets and ends (-1: not placed yet)."""
    placed = end >= 0
    offset, end = offset[placed], end[placed]
    if not len(offset):
        return 0
    by = np.lexsort((end, offset))
    offset, end = offset[by], end[by]
    at = np.empty_like(end)       # the top of the blocks below each one
    at[0] = 0
    np.maximum.accumulate(end[:-1], out=at[1:])
    gap = offset - at
    fits = np.flatnonzero(gap >= need)
    if not len(fits):
        return int(max(at[-1], end[-1]))
    k = fits[np.argmin(gap[fits])] if best_fit else fits[0]
    return int(at[k])


def _by_first_use(items: Sequence[Item]) -> list[int]:
    return sorted(range(len(items)), key=lambda i: (items[i].first, items[i].last))


def stack_by_first_use(items: Sequence[Item]) -> list[int]:
    """NNTrainer's optimized (v1) idea: tensors in order of first use, stacked like a
    bump allocator. Expired blocks are released only from the top of the stack, and a
    block deeper down is reused only by a tensor of exactly its size. Fast and good
    when lifetimes nest, as forward activations and their backward uses do."""
    offsets = [0] * len(items)
    stack: list[int] = []  # placed items, ascending offset; top is the last
    for i in _by_first_use(items):
        it = items[i]
        while stack and items[stack[-1]].last < it.first:
            stack.pop()
        reuse = next((k for k in range(len(stack) - 1, -1, -1)
                      if items[stack[k]].last < it.first
                      and items[stack[k]].size == it.size), None)
        if reuse is not None:
            offsets[i] = offsets[stack[reuse]]
            stack[reuse] = i
            continue
        top = stack[-1] if stack else None
        offsets[i] = offsets[top] + items[top].size if top is not None else 0
        stack.append(i)
    return offsets


def first_fit(items: Sequence[Item]) -> list[int]:
    """NNTrainer's v3 idea: tensors in order of first use, each into the lowest gap
    left between the blocks still live at its first use."""
    return _place(items, _by_first_use(items), best_fit=False)


def greedy_by_size(items: Sequence[Item]) -> list[int]:
    """Pisarchyk & Lee (2020), TFLite's arena planner: largest tensor first, each into
    the smallest gap that fits among tensors whose lifespans overlap it."""
    order = sorted(range(len(items)), key=lambda i: (-items[i].size, items[i].first))
    return _place(items, order, best_fit=True)


def _always_live(items: Sequence[Item]) -> list[bool]:
    start = min((it.first for it in items), default=0)
    end = max((it.last for it in items), default=0)
    return [it.first == start and it.last == end for it in items]


SEARCH_WORK = 200_000  # about this many item-pair comparisons per model, spread over tries
SEARCH_ALPHAS = (0.0, 0.25, 0.5, 0.75)


def greedy_search(items: Sequence[Item]) -> list[int]:
    """Tensors live for the whole iteration (weights, optimizer state) are stacked at
    the bottom: they conflict with everything, so they only fragment the space if mixed
    in. The rest are placed best-fit in several orders, by size × lifespan^α for a few
    α, then with seeded jitter; the smallest arena wins. Deterministic."""
    fixed = _always_live(items)
    offsets, base = [0] * len(items), 0
    for i, it in enumerate(items):
        if fixed[i]:
            offsets[i], base = base, base + it.size
    rest = [i for i in range(len(items)) if not fixed[i]]
    if not rest:
        return offsets
    sub = [items[i] for i in rest]
    tries = max(len(SEARCH_ALPHAS), min(200, SEARCH_WORK // len(sub) ** 2))
    rng = random.Random(0)
    near = conflicts(sub)
    best, best_peak = None, None
    for k in range(tries):
        alpha = SEARCH_ALPHAS[k] if k < len(SEARCH_ALPHAS) else rng.choice(SEARCH_ALPHAS)
        jitter = [1.0 if k < len(SEARCH_ALPHAS) else rng.uniform(0.8, 1.25) for _ in sub]
        order = sorted(range(len(sub)), key=lambda i: -sub[i].size * jitter[i] *
                       (sub[i].last - sub[i].first + 1) ** alpha)
        placed = _place(sub, order, best_fit=True, near=near)
        peak = peak_of(sub, placed)
        if best_peak is None or peak < best_peak:
            best, best_peak = placed, peak
    for i, off in zip(rest, best):
        offsets[i] = base + off
    return offsets


PLANNERS: dict[str, Callable[[Sequence[Item]], list[int]]] = {
    "naive": naive,
    "sorted": stack_by_first_use,
    "first-fit": first_fit,
    "greedy-size": greedy_by_size,
    "greedy-search": greedy_search,
}
NAMES = tuple(PLANNERS) + ("best",)


def peak_of(items: Sequence[Item], offsets: Sequence[int]) -> int:
    return max((o + it.size for o, it in zip(offsets, items)), default=0)


def plan_offsets(items: Sequence[Item], planner: str) -> tuple[str, list[int]]:
    """Run a planner by name; `best` runs them all and keeps the smallest arena."""
    if planner != "best":
        return planner, PLANNERS[planner](items)
    results = []
    for name, f in PLANNERS.items():
        offsets = f(items)
        results.append((peak_of(items, offsets), name, offsets))   # a tie: by name
    _, name, offsets = min(results)
    return name, offsets


def lower_bound(items: Sequence[Item]) -> int:
    """Max over slots of the bytes live in that slot: no planner can do better."""
    delta: dict[int, int] = {}
    for it in items:
        delta[it.first] = delta.get(it.first, 0) + it.size
        delta[it.last + 1] = delta.get(it.last + 1, 0) - it.size
    live = best = 0
    for t in sorted(delta):
        live += delta[t]
        best = max(best, live)
    return best


def check_valid(items: Sequence[Item], offsets: Sequence[int], arena: int) -> list[str]:
    """Independent check: every item inside the arena, and no two items whose lifespans
    overlap share a byte. Returns the problems found (empty when valid). Each item
    against all later ones at once, over arrays."""
    first = np.array([it.first for it in items], dtype=np.int64)
    last = np.array([it.last for it in items], dtype=np.int64)
    size = np.array([it.size for it in items], dtype=np.int64)
    at = np.array(offsets, dtype=np.int64)
    outside = ((at < 0) | (at + size > arena)).tolist()
    problems = []
    for i in range(len(items)):
        if outside[i]:
            problems.append(f"item {i} [{at[i]}, {at[i] + size[i]}) outside arena of {arena}")
        j = slice(i + 1, None)
        clash = (first[i] <= last[j]) & (first[j] <= last[i]) & (at[i] < at[j] + size[j]) \
            & (at[j] < at[i] + size[i]) & (size[j] > 0) & (size[i] > 0)
        problems += [f"items {i} and {i + 1 + k} overlap in time and in bytes"
                     for k in np.flatnonzero(clash).tolist()]
    return problems
