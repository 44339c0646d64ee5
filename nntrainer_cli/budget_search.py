"""Which plan fits a memory budget: the graph as written or frugal (smaller conv work
buffers), its tileable layers cut into tiles, its batch in micro-batches; tried in
that order, each only when the cheaper ones do not fit. Planning's half that searches
(`pipeline.Planning` makes each candidate with `_at`)."""

from __future__ import annotations

import math

from nntrainer_cli.plan import SwapRefusal
from nntrainer_cli.plan.interleave import accumulates
from nntrainer_cli.plan.order import reorders

Prepared = object   # a candidate that fits: pipeline.Prepared (which imports this module)

FRUGAL_LEVELS = (1, 2, 4, 1 << 30)  # conv work buffers ÷1, ÷2, ÷4, one sample
QUARTER_PIECES = FRUGAL_LEVELS[2]   # from here on more micro-batches cost less time
# more tiles are tried only while each doubling lowers the floor by 5% or more: past
# that, activations set it and tiles would only multiply the slots
MIN_TILE_GAIN = 0.95
# what each tile costs the process beside the arena (its slots' contexts and views, its
# tensors' names), counted with the floor when tiles are compared: measured about 140 B
# (a conv cut into 64 to 256 tiles, with Adam)
TILE_BYTES = 160
# the most tiles a layer is cut into: planning time grows about fourfold with each
# doubling (a 20,000-row embedding's refused plans: 64 tiles 0.2 s, 256 1.6 s, 1024
# 28 s; a plan that fits takes ten times longer), while what finer tiles lower the
# floor by shrinks
MAX_TILES = 64
# once a split fits, up to this many times its parts are tried for a plan without
# smaller conv buffers or tiles
MORE_PARTS = 4
# no split is planned whose parts and tiles make more slots than this: every part adds
# a copy of the slots and of the tensors that hold records, and the swap search's time
# grows about with the square of the slots (digits_mlp at its smallest budget, 8 parts
# and 64 tiles, 2,250 slots: 200 s; refused at 100 bytes with up to 32 parts: 92 s)
MAX_SLOTS = 1000


def moved(found: Prepared) -> int:
    """The bytes a plan's swap moves in an iteration, both ways."""
    return found.plan.swap.bytes_in + found.plan.swap.bytes_out


class BudgetSearch:
    """The search over candidate plans, each made by `self._at(level, budget, tiles,
    parts)`: a plan that fits, or the refusal naming its floor."""

    def _within(self, budget: int) -> Prepared | SwapRefusal:
        """The plan that keeps the resident arena within `budget` bytes (0: as little as
        can be), `_fitting`; where it tiled, in the tile order that moves fewer bytes
        (with budget 0: keeps less resident), each tile's gradient first on a tie; then
        where it split the batch, in the order of micro-batches that does so, each slot
        for every part in turn on a tie (see plan/interleave.py). The tiles are
        searched with each tile's gradient first: searched derivative first, LeNet at
        10% just missed its budget with 4 tiles of f5 and the search went on to tile
        every layer (a step 20 times the unbudgeted one, not 6), where the MLPs move
        9-14% fewer bytes with the same tiles. The parts are searched slot by slot; one
        after another, the transfer model at 25% moves 3.3 MB a step, not 6.1 (0.78 ms a
        step, not 0.84), and at 10% 11.3 MB, not 5.2 (1.95 ms, not 1.6)."""
        found = self._fitting(budget)
        if isinstance(found, SwapRefusal):
            found = self._derivative_first(found, budget)
            if isinstance(found, SwapRefusal):
                return found
        elif reorders(found.graph):
            p = found.plan
            found = self._cheaper(found, budget, self._at(
                p.frugal, budget, p.tiles, p.micro_batches, derivative_first=True))
        if found.plan.micro_batches > 1 and accumulates(found.graph):
            p = found.plan
            found = self._cheaper(found, budget, self._at(
                p.frugal, budget, p.tiles, p.micro_batches, p.derivative_first, accumulate=True))
        return found

    def _derivative_first(self, refusal: SwapRefusal, budget: int) -> Prepared | SwapRefusal:
        """The refused candidate again with each tile's derivative first, an order
        whose floor is lower for some (the 784 MLP's: 524 KB, not 590 KB): its plan,
        as coarse as still fits, where that fits the budget, else the refusal naming
        the lower floor."""
        if not refusal.candidate or not refusal.candidate[1]:
            return refusal
        level, tiles, parts = refusal.candidate
        if not reorders(self.graph, tiles):
            return refusal
        other = self._at(level, budget, tiles, parts, derivative_first=True)
        if not isinstance(other, SwapRefusal):
            return self._coarsest(level, budget, other, tiles, parts, derivative_first=True)[0]
        return min(refusal, other, key=lambda r: r.floor)

    @staticmethod
    def _cheaper(found: Prepared, budget: int, other: Prepared | SwapRefusal) -> Prepared:
        """`other` where it fits and moves fewer bytes (with budget 0: keeps less
        resident), else `found`."""
        if isinstance(other, SwapRefusal):
            return found
        cost = lambda q: (q.plan.swap.peak if not budget else 0, moved(q))  # noqa: E731
        return other if cost(other) < cost(found) else found

    def _fitting(self, budget: int) -> Prepared | SwapRefusal:
        """The plan that keeps the resident arena within `budget` bytes (0: as little as
        can be), on the graph that moves the fewest bytes. Micro-batches come last (they
        change every gradient's summation order), for a model that allows them and a
        budget in bytes (0 keeps the batch whole, as NNTrainer's memory_swap does): the
        batch goes in 2, 3, ... equal parts (counts dividing it, each at least 1.2x the
        last tried) while that lowers the floor by MIN_TILE_GAIN, each split on the most
        frugal graph with the tiles so far (doubled where that helps), until a plan fits.
        Then up to MORE_PARTS times as many parts are tried for a plan that needs neither
        smaller conv buffers nor tiles, or failing that, in place of a fit whose conv
        buffers are a quarter or less, one with its tiles and whole buffers: a part costs
        a slot's dispatch, conv pieces and tiles cost many (digits_cnn at 25%: 2 parts in
        one-row conv pieces 9.9 ms a step, 4 parts 6.9 ms; LeNet at 10%: 4 parts in
        one-row pieces 15.5 ms, 8 parts 7.5 ms; personal_finetune at 25%: 2 parts in
        quarter pieces 3.3 ms, 5 parts 2.6 ms), half buffers less (LeNet at 25%: 2 parts
        in half buffers 4.4 ms, 4 parts 5.2 ms)."""
        found, tiles = self._search(budget, 1)
        if not budget or not isinstance(found, SwapRefusal) or not self.graph.splittable:
            return found
        level, lowest, batch, tried = FRUGAL_LEVELS[-1], found, self.graph.batch_size, 1
        fit, fit_parts = None, 0
        for parts in range(2, batch + 1):
            if batch % parts or parts < 1.2 * tried:   # 16 parts gain little over 15
                continue
            tried = parts
            if fit is not None:
                if parts > MORE_PARTS * fit_parts:
                    break
                plain = self._unshrunk(budget, parts)[1]
                if plain is not None:
                    return plain
                if fit.plan.tiles and fit.plan.frugal >= QUARTER_PIECES:   # untiled: tried
                    whole = self._at(1, budget, fit.plan.tiles, parts)
                    fit = fit if isinstance(whole, SwapRefusal) else whole
                continue
            trial, more, _ = self._tiled(level, budget, tiles,
                                         self._at(level, budget, tiles, parts), parts)
            if not isinstance(trial, SwapRefusal):
                full, _ = self._search(budget, parts)
                fit, fit_parts = full if not isinstance(full, SwapRefusal) else trial, parts
                if fit.plan.frugal <= 1 and not fit.plan.tiles:
                    return fit
                continue
            # the splits tried do not depend on the budget: the lowest floor among them
            lowest = min(lowest, trial, key=lambda r: r.floor)   # is the smallest that works
            if self._cost(trial, more) > self._cost(found, tiles) * MIN_TILE_GAIN:
                break
            found, tiles = trial, more
        return fit or lowest

    def _unshrunk(self, budget: int, parts: int) -> tuple[list, Prepared | None]:
        """The plans as written and with relu masks and split applies (level 1), and of
        those that fit the one moving fewer bytes (the plain one on a tie, it has fewer
        slots)."""
        tried = [self._at(0, budget, parts=parts), self._at(1, budget, parts=parts)]
        fits = [p for p in tried if not isinstance(p, SwapRefusal)]
        return tried, min(fits, key=moved) \
            if fits else None

    @staticmethod
    def _cost(found: Prepared | SwapRefusal, tiles: dict[str, int]) -> int:
        """What a plan's floor (or resident arena) and its tiles' bookkeeping weigh."""
        floor = found.floor if isinstance(found, SwapRefusal) else found.plan.arena_bytes
        return floor + TILE_BYTES * sum(tiles.values())

    def _search(self, budget: int,
                parts: int) -> tuple[Prepared | SwapRefusal, dict[str, int]]:
        """`_fitting` for a batch in `parts` micro-batches; with the tiles it took."""
        if budget == 0:   # as little memory as possible: tiled while that lowers the floor
            level = FRUGAL_LEVELS[-1]
            _, _, tiles = self._tiled(level, 1, {}, self._at(level, 1, parts=parts), parts)
            return self._at(level, 0, tiles, parts), tiles
        # Relu masks and split applies (level 1) let more stay resident, but they change
        # what the schedule evicts and now and then it moves more bytes than without them.
        # Smaller conv buffers and tiles cost speed, so they come only when neither fits;
        # smaller buffers first, while they lower the floor, as they keep every sum as it
        # is (tiles change the order of some), then tiles, with smaller buffers again.
        tried, plain = self._unshrunk(budget, parts)
        if plain is not None:
            return plain, {}
        found, at = tried[1], 0   # the deepest level (index) that lowered the floor
        for i in range(1, len(FRUGAL_LEVELS)):
            trial = self._at(FRUGAL_LEVELS[i], budget, parts=parts)
            if not isinstance(trial, SwapRefusal):
                return trial, {}
            if trial.floor >= found.floor:
                break   # conv's buffers are not what sets the floor
            found, at = trial, i
        found, tiles, _ = self._tiled(FRUGAL_LEVELS[at], budget, {}, found, parts)
        for level in FRUGAL_LEVELS[at + 1:]:
            if not isinstance(found, SwapRefusal):
                break
            trial, more, _ = self._tiled(level, budget, tiles,
                                         self._at(level, budget, tiles, parts), parts)
            if isinstance(trial, SwapRefusal) and trial.floor >= found.floor:
                break
            found, tiles = trial, more
        if not isinstance(found, SwapRefusal) and tiles:   # those tiles may not need the
            for level in FRUGAL_LEVELS:                    # smaller buffers, slower
                if level >= found.plan.frugal:
                    break
                trial = self._at(level, budget, tiles, parts)
                if not isinstance(trial, SwapRefusal):
                    return trial, tiles
        return found, tiles

    def _tiled(self, level: int, budget: int, tiles: dict[str, int],
               found: Prepared | SwapRefusal, parts: int) -> tuple[Prepared | SwapRefusal, dict[str, int],
                                                       dict[str, int]]:
        """`found` (the plan at `level` with `tiles`), else with more tiles where the
        budget needs them: while the busiest slot holds a tileable layer's weight (or
        its gradient or state), that layer's tiles double, and so do those of every
        layer whose tiles are as large, until the plan fits or two doublings in a row
        lower the floor by less than MIN_TILE_GAIN (the first one may not lower it at
        all: it adds the layer's `part` temporary), each tile's TILE_BYTES counted with
        it. A plan that fits is then made as coarse as still fits. Returns the plan, or
        the refusal with the lowest floor (the smallest budget it names is true), and its
        tiles; and the tiles whose floor and bookkeeping weigh least (what `least`
        memory takes)."""
        best, best_tiles, stalls = found, tiles, 0
        cheapest, cheapest_tiles = found, tiles
        while isinstance(found, SwapRefusal) and stalls < 2:
            more = self._more_tiles(found, tiles)
            if more is None:
                break
            tiles, found = more, self._at(level, budget, more, parts)
            if not isinstance(found, SwapRefusal):
                found, tiles = self._coarsest(level, budget, found, tiles, parts)
                return found, tiles, tiles
            least = self._cost(cheapest, cheapest_tiles)
            stalls = stalls + 1 if self._cost(found, tiles) > least * MIN_TILE_GAIN else 0
            if self._cost(found, tiles) < least:
                cheapest, cheapest_tiles = found, tiles
            if found.floor < best.floor:
                best, best_tiles = found, tiles
        return best, best_tiles, cheapest_tiles

    def _coarsest(self, level: int, budget: int, found: Prepared, tiles: dict[str, int],
                  parts: int, derivative_first: bool = False) -> tuple[Prepared, dict[str, int]]:
        """The doubling also cut layers cut as finely as the busiest one, which the
        budget may not need: each group of layers with the same tiles gets half as many
        while the plan still fits."""
        coarser = True
        while coarser:
            coarser = False
            for k in sorted(set(tiles.values()), reverse=True):
                fewer = {n: c // 2 if c == k else c for n, c in tiles.items()}
                fewer = {n: c for n, c in fewer.items() if c > 1}
                trial = self._at(level, budget, fewer, parts, derivative_first)
                if not isinstance(trial, SwapRefusal):
                    found, tiles, coarser = trial, fewer, True
                    break
        return found, tiles

    def _more_tiles(self, refusal: SwapRefusal, tiles: dict[str, int]) -> dict[str, int] | None:
        """Twice the tiles for the tileable layer whose weight's tensors weigh most at
        the refusal's busiest slot, and for the layers with tiles as large as its; None
        when no such layer has rows left to cut (or MAX_TILES tiles)."""
        weights = {f"{n.name}:{w.name}": (n.name, min(w.shape[0], MAX_TILES),
                                          math.prod(w.shape))
                   for n in self.graph.nodes if n.layer.tileable
                   for w in n.ctx.weights if w.tiled}
        for tensor in refusal.held:
            prefix = next((p for p in weights if tensor == p or tensor.startswith(p + ":")), None)
            if prefix is None:
                continue
            node, most, size = weights[prefix]
            if 2 * tiles.get(node, 1) > most:
                continue
            tile = size // tiles.get(node, 1)
            return {**tiles, **{n: 2 * tiles.get(n, 1) for n, r, s in weights.values()
                                if s // tiles.get(n, 1) >= tile and 2 * tiles.get(n, 1) <= r}}
        return None
