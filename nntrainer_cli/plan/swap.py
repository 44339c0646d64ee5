"""The swap schedule: which tensors leave the arena between two uses, when they come
back, and where each stay (residency) sits in an arena no larger than the budget.

Every tensor (alias group) is used at known slots. Between two uses it may stay
resident, or be written to the swap file after the first and read back `lookahead`
slots before the second; weights and optimizer state also cross iterations, so for
them the stretch from the last use to the next iteration's first use counts too.
Starting from "everything stays", the fullest slot is relieved by sending out the
tensor idle there whose next use is furthest away, weighted by its size (Belady's
rule), until every slot fits; when nothing idle is left there, loads whose lookahead
window covers that slot are issued later. The rule never looks at the budget, so the
path down to everything idle swapped is walked once per plan, and the search for a
budget replays a prefix of it, target by target. The residencies are then placed by
the usual planners, each at its own offset. Values nobody reads again are dropped,
never written.

The placed stays then give the swap file's layout and the runtime's steps
(`plan/swap_plan.py`, which holds what the plan hands on).

A budget below what the schedule can reach is not an error here: `make_swap_plan`
returns a `SwapRefusal` saying the smallest budget that works, and the caller decides."""

from __future__ import annotations

from bisect import bisect_left
from heapq import merge
from dataclasses import replace

import numpy as np

from nntrainer_cli.layers.base import Phase
from nntrainer_cli.sizes import human

from .planners import Item, check_valid, lower_bound, plan_offsets
from .specs import RECORD_KINDS, TensorSet, TensorSpec
from .swap_plan import Residency, SwapOptions, SwapPlan, SwapRefusal, file_layout, steps


APPLIES = (Phase.APPLY_GRADIENT, Phase.CLIP_AND_APPLY)


class _Tensor:
    """One alias group: its uses, and which idle stretches between them are swapped."""

    def __init__(self, spec: TensorSpec, uses: list[int], writes: set[int], end: int,
                 unit: int):
        self.spec, self.uses, self.writes, self.end = spec, uses, writes, end
        self.size = -(-spec.bytes // unit) * unit  # direct I/O moves whole 4 KiB blocks
        self.split: set[int] = set()     # gap i lies between uses[i] and uses[i + 1]
        self.wrap = False                # persistent: out between iterations
        self.ahead: dict[int, int] = {}  # use → a shorter lookahead for the load before it
        self._stays: tuple[int, list[Residency]] | None = None   # (lookahead, residencies)

    def residencies(self, lookahead: int) -> list[Residency]:
        """The stays as swapped so far; kept until the next `apply` (the search asks for
        them once per tensor and round)."""
        if self._stays is None or self._stays[0] != lookahead:
            self._stays = (lookahead, self._residencies(lookahead))
        return self._stays[1]

    def _residencies(self, lookahead: int) -> list[Residency]:
        s = self.spec
        if s.persistent and not self.wrap:
            return [Residency(s.name, s.kind, self.size, 0, self.end, self.uses[0], False, False)]
        clusters, start = [], 0
        for i in range(len(self.uses) - 1):
            if i in self.split:
                clusters.append(self.uses[start:i + 1])
                start = i + 1
        clusters.append(self.uses[start:])
        out, prev_last = [], -1
        for k, c in enumerate(clusters):
            loaded = s.persistent or k > 0
            ahead = self.ahead.get(c[0], lookahead)
            first = max(prev_last + 1, c[0] - ahead) if loaded else c[0]
            more = k < len(clusters) - 1
            # written back if read again (or persistent), unless unchanged since the
            # last time (a first stay is where a record's tensor is made)
            stored = (more or s.persistent) and (not loaded or any(t in self.writes for t in c))
            out.append(Residency(s.name, s.kind, self.size, first, c[-1], c[0], loaded, stored))
            prev_last = c[-1]
        return out

    def option_at(self, t: int, lookahead: int, full: bool):
        """What to swap so this tensor is not resident at slot t, and its score
        (size × distance to the next use), or None. With `full`, only swaps whose load
        can still start `lookahead` slots early; else the load may start later. (Asked
        of every candidate in every round of the search: plain ints, no closures.)"""
        u = self.uses
        i = bisect_left(u, t)
        if i < len(u) and u[i] == t:
            return None
        i -= 1                                   # u[i] < t < u[i + 1], where both exist
        if self.spec.persistent and not self.wrap:
            if t > u[-1]:   # out until the next iteration's first use
                return ("wrap", None, u[0], lookahead), self.size * (u[0] + self.end + 1 - t)
            what, at = "wrap", (None if i < 0 else i)
        elif 0 <= i < len(u) - 1 and i not in self.split:
            what, at = "gap", i
        else:
            return None
        nxt = u[i + 1]
        if not full:
            ahead = min(lookahead, nxt - t - 1)
        elif nxt - lookahead > t:
            ahead = lookahead
        else:
            return None
        return (what, at, nxt, ahead), self.size * (nxt - t)

    def later_at(self, t: int, lookahead: int):
        """A load whose lookahead window covers slot t, to be issued after t instead."""
        for r in self.residencies(lookahead):
            if r.loaded and r.first <= t < r.use_first:
                return ("late", None, r.use_first, r.use_first - t - 1), r.bytes
        return None

    def apply(self, option) -> None:
        self._stays = None
        what, i, use, ahead = option
        if ahead is not None and ahead < self.ahead.get(use, ahead + 1):
            self.ahead[use] = ahead
        if what == "wrap":
            self.wrap = True
        if i is not None:
            self.split.add(i)


def _writes(spec: TensorSpec, uses: list[int], ts: TensorSet) -> set[int]:
    """Slots that may change a tensor; a stay without one is not written back, as the
    swap file's copy stays good. None for a constant weight (frozen); a trainable
    weight only where it is applied (its gradient's apply or clip slots); other weights
    (moving statistics) and optimizer state at every use. Records' tensors (inputs,
    labels, activations, derivatives) at every use but calc_gradient, which only reads
    them (it writes gradients and its own temporaries); temporaries and gradients at
    every use."""
    if spec.constant:
        return set()
    grad = ts.specs.get(f"{spec.name}:grad")
    if spec.kind == "weight" and grad is not None:
        return {s for s in grad.uses if ts.slots[s].phase in APPLIES}
    if spec.kind in RECORD_KINDS:
        return {s for s in uses if ts.slots[s].phase != Phase.CALC_GRADIENT}
    return set(uses)


def _group_uses(ts: TensorSet) -> dict[str, set[int]]:
    uses = {s.name: set(s.uses) for s in ts.roots()}
    for s in ts.specs.values():
        if s.alias_of:
            uses[s.alias_of] |= s.uses
    return uses


def _live(tensors: list[_Tensor], lookahead: int, end: int) -> np.ndarray:
    """The resident bytes per slot (an array: a weight's stay spans every slot)."""
    live = np.zeros(end + 1, np.int64)
    for t in tensors:
        _add_stays(live, t.residencies(lookahead), 1)
    return live


def _add_stays(live: np.ndarray, stays: list[Residency], sign: int) -> None:
    for r in stays:
        live[r.first:r.last + 1] += sign * r.bytes


def _best_option(tensors: list[_Tensor], candidates: list[int], t: int, lookahead: int):
    """The highest-scoring swap that frees slot t, as (tensor, option, score, index):
    among swaps that keep the lookahead, else those with a later load, else a delayed
    load; the first candidate wins a tie. None if there is none."""
    for full in (True, False, None):
        best = None
        for i in candidates:
            x = tensors[i]
            opt = x.option_at(t, lookahead, full) if full is not None else \
                x.later_at(t, lookahead)
            if opt and (best is None or opt[1] > best[2]):
                best = (x, opt[0], opt[1], i)
        if best is not None:
            return best
    return None


def _relieve(tensors: list[_Tensor], lookahead: int, end: int) -> list[tuple]:
    """Swap until no swap frees the fullest slot. The decisions, in order, as (tensor
    index, option, the fullest slot's bytes before it), then (None, None, the bytes it
    ends with): the rule does not depend on a target, so relieving to any target is a
    prefix of this one path (`_search` replays it)."""
    live = _live(tensors, lookahead, end)
    # only these may be idle at a slot: a persistent tensor anywhere, another between
    # its first and last use (an interleaved plan's parts each use few slots)
    always = [i for i, x in enumerate(tensors) if x.spec.persistent]
    inside: list[list[int]] = [[] for _ in range(end + 1)]
    for i, x in enumerate(tensors):
        if not x.spec.persistent:
            for k in range(x.uses[0] + 1, x.uses[-1]):
                inside[k].append(i)
    candidates: dict[int, list[int]] = {}
    path = []
    while True:
        t = int(live.argmax())
        if t not in candidates:
            candidates[t] = list(merge(always, inside[t]))
        best = _best_option(tensors, candidates[t], t, lookahead)
        if best is None:
            path.append((None, None, int(live[t])))   # where it ends
            return path
        path.append((best[3], best[1], int(live[t])))
        x = best[0]
        _add_stays(live, x.residencies(lookahead), -1)
        x.apply(best[1])
        _add_stays(live, x.residencies(lookahead), 1)


def _place(tensors: list[_Tensor], lookahead: int, planner: str, budget: int) -> SwapPlan:
    # copies: the tensors keep theirs for the search, and each plan sets its own offsets
    res = [replace(r) for t in tensors for r in t.residencies(lookahead) if r.bytes]
    items = [Item(r.bytes, r.first, r.last) for r in res]
    _, offsets = plan_offsets(items, planner)
    peak = max((o + it.size for o, it in zip(offsets, items)), default=0)
    problems = check_valid(items, offsets, peak)
    if problems:
        raise AssertionError(f"swap residencies placed invalidly: {problems[:3]}")
    for r, off in zip(res, offsets):
        r.offset = off
    plan = SwapPlan(budget, lookahead, res, peak, lower_bound(items))
    plan.file_offsets, plan.file_bytes = file_layout(res)
    return plan


def _fewer_small_swaps(plan: SwapPlan, log: list, fresh, lookahead: int, planner: str,
                      budget: int) -> SwapPlan:
    """Undo as many of the smallest swaps as the budget allows (found by bisection):
    relieving the last slots often swapped small tensors whose few bytes did not
    matter in the end, and each swap costs a fixed overhead at run time. `log`: the
    decisions made, a prefix of `_relieve`'s path."""
    tensors = fresh()
    sizes = [tensors[i].size for i, _, _ in log]
    order = sorted(range(len(log)), key=lambda d: sizes[d])
    lo, hi, best = 0, len(order), plan
    while lo < hi:
        mid = (lo + hi + 1) // 2
        keep = set(order[mid:])
        tensors = fresh()
        for d, (i, option, _) in enumerate(log):
            if d in keep:
                tensors[i].apply(option)
        trial = _place(tensors, lookahead, planner, budget)
        if trial.peak <= budget:
            lo, best = mid, trial
        else:
            hi = mid - 1
    return best


def make_swap_plan(ts: TensorSet, opts: SwapOptions, planner: str) -> SwapPlan | SwapRefusal:
    """The schedule with the fewest swaps found that fits the budget, or a refusal
    naming the smallest budget that works when none does. A budget of 0 asks for the
    schedule that swaps everything idle, whatever it needs."""
    plan = _search(ts, opts, planner)
    if isinstance(plan, SwapPlan):
        plan.steps = steps(plan.residencies, plan.file_offsets, ts.end)
    return plan


def _search(ts: TensorSet, opts: SwapOptions, planner: str) -> SwapPlan | SwapRefusal:
    end, budget, lookahead, unit = ts.end, opts.budget, opts.lookahead, opts.unit
    uses = _group_uses(ts)

    def fresh():
        return [_Tensor(s, sorted(uses[s.name]), _writes(s, sorted(uses[s.name]), ts), end,
                        unit) for s in ts.roots() if s.bytes]

    least = fresh()
    path = _relieve(least, lookahead, end)
    floor = _place(least, lookahead, planner, budget)
    if budget == 0:
        floor.budget = floor.peak
        return floor
    if budget < floor.peak:  # refused at once: no search can go below the floor
        return _refusal(budget, floor, ts, lookahead)
    tensors, target, step, done = fresh(), budget, 1, 0
    while True:
        # the swaps made while the fullest slot held more than the target
        while path[done][2] > target and path[done][0] is not None:
            i, option, _ = path[done]
            tensors[i].apply(option)
            done += 1
        plan = _place(tensors, lookahead, planner, budget)
        if plan.peak <= budget:
            return _fewer_small_swaps(plan, path[:done], fresh, lookahead, planner, budget)
        # the path ended above the target: fragmentation beat the search, so start
        # from the floor instead
        if path[done][2] > target:
            return _fewer_small_swaps(floor, path[:-1], fresh, lookahead, planner, budget)
        # relieve a little more than the placement overshot, doubling each round so a
        # budget just above the floor takes a few rounds, not one per byte
        step = max(plan.peak - budget, 2 * step)
        target -= step


def _refusal(budget: int, floor: SwapPlan, ts: TensorSet, lookahead: int) -> SwapRefusal:
    """Where a smallest budget comes from: the slot whose resident tensors weigh most,
    and what it holds, largest first."""
    live = np.zeros(len(ts.slots), np.int64)
    _add_stays(live, floor.residencies, 1)
    t = int(live.argmax())
    held = sorted((r for r in floor.residencies if r.first <= t <= r.last),
                  key=lambda r: -r.bytes)
    return SwapRefusal(
        budget, floor.peak, lookahead,
        f"the busiest slot, {t} ({ts.slots[t].node} {ts.slots[t].phase}), holds "
        + ", ".join(f"{r.tensor} ({human(r.bytes)})" for r in held[:3]),
        tuple(r.tensor for r in held))
