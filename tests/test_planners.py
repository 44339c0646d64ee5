"""Planners on made-up tensor sets: always valid, never below the lower bound, never
above the naive total. The validity check itself is tested on known-bad layouts."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nntrainer_cli.plan.planners import (PLANNERS, Item, check_valid, lower_bound, peak_of,
                                         plan_offsets)


@st.composite
def item_sets(draw):
    n = draw(st.integers(1, 40))
    items = []
    for _ in range(n):
        first = draw(st.integers(0, 30))
        items.append(Item(draw(st.integers(1, 64)) * 64, first, first + draw(st.integers(0, 15))))
    return items


def overlap_free(items, offsets):
    """A second, brute-force statement of validity: per slot, the byte ranges of the
    live items are pairwise disjoint."""
    for t in range(max(it.last for it in items) + 1):
        live = sorted((offsets[i], offsets[i] + it.size) for i, it in enumerate(items)
                      if it.first <= t <= it.last)
        for (a0, a1), (b0, b1) in zip(live, live[1:]):
            if b0 < a1:
                return False
    return True


@pytest.mark.parametrize("name", list(PLANNERS) + ["best"])
@settings(max_examples=150, deadline=None)
@given(items=item_sets())
def test_planner_valid_and_bounded(name, items):
    _, offsets = plan_offsets(items, name)
    peak = peak_of(items, offsets)
    assert check_valid(items, offsets, peak) == []
    assert overlap_free(items, offsets)
    assert lower_bound(items) <= peak <= sum(it.size for it in items)


@pytest.mark.parametrize("name", list(PLANNERS))
@settings(max_examples=100, deadline=None)
@given(items=item_sets())
def test_array_gaps_place_as_the_list_gaps_do(name, items):
    """Items with many neighbours are placed by array arithmetic (planners.py
    ARRAY_NEIGHBOURS): the same offsets as the plain loop, first fit and best fit."""
    from nntrainer_cli.plan import planners

    placed = []
    for threshold in (-1, 10 ** 9):   # every item by arrays, then none
        with pytest.MonkeyPatch.context() as m:
            m.setattr(planners, "ARRAY_NEIGHBOURS", threshold)
            placed.append(PLANNERS[name](items))
    assert placed[0] == placed[1]


def test_best_is_no_worse_than_any():
    items = [Item(64 * (i % 7 + 1), i % 5, i % 5 + i % 3) for i in range(30)]
    _, offsets = plan_offsets(items, "best")
    best = peak_of(items, offsets)
    assert all(best <= peak_of(items, f(items)) for f in PLANNERS.values())


def test_check_valid_catches_overlap_and_overflow():
    items = [Item(128, 0, 3), Item(128, 2, 5)]
    assert check_valid(items, [0, 64], 192)          # share bytes while both live
    assert check_valid(items, [0, 128], 200)         # second runs past the arena
    assert check_valid(items, [0, 128], 256) == []
    disjoint_in_time = [Item(128, 0, 1), Item(128, 2, 3)]
    assert check_valid(disjoint_in_time, [0, 0], 128) == []


def test_lower_bound_is_max_live_sum():
    items = [Item(100, 0, 2), Item(50, 1, 1), Item(70, 2, 4), Item(10, 5, 5)]
    assert lower_bound(items) == 170


@pytest.mark.parametrize("name", [n for n in PLANNERS if n != "naive"])
def test_nested_extremes(name):
    """NNTrainer's own planner tests: all lifespans overlapping needs the sum; all
    disjoint needs only the largest, every tensor at offset 0."""
    together = [Item(64 * (i + 1), 0, 9) for i in range(6)]
    assert peak_of(together, PLANNERS[name](together)) == sum(it.size for it in together)
    apart = [Item(64 * (i % 3 + 1), i, i) for i in range(6)]
    offsets = PLANNERS[name](apart)
    assert offsets == [0] * 6 and peak_of(apart, offsets) == 192


def test_stack_planner_wastes_holes_first_fit_uses_them():
    """The difference between NNTrainer's v1 and v3 ideas: a small expired block under
    a live one is reused by first fit but not by the stack planner."""
    items = [Item(128, 0, 1), Item(128, 0, 5), Item(64, 2, 5)]
    assert peak_of(items, PLANNERS["first-fit"](items)) == 256
    assert peak_of(items, PLANNERS["sorted"](items)) == 320
