"""The one-way flow shared by the commands: config → graph → optimizer → plan."""

from __future__ import annotations

import copy
import math
import re
import tempfile
from dataclasses import dataclass, replace
from typing import NamedTuple

from nntrainer_cli.budget_search import MAX_SLOTS, BudgetSearch
from nntrainer_cli.config import ModelConfig, load_config
from nntrainer_cli.errors import ConfigError
from nntrainer_cli.graph import LayerGraph, build_graph
from nntrainer_cli.optim.optimizers import make_optimizer
from nntrainer_cli.plan import MemoryPlan, SwapOptions, SwapRefusal, make_plan, with_swap
from nntrainer_cli.plan.swap_plan import DEFAULT_LOOKAHEAD


UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
         "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3}


@dataclass(frozen=True)
class Budget:
    """--memory-budget, parsed once: bytes for the resident arena (0: as little as can
    be), a share in percent of the plan made without swap, or `auto` (machine_budget)."""
    bytes: int | None = None
    share: float | None = None
    auto: bool = False


def parse_size(text: str) -> Budget:
    """`64MiB`, `1.5GB`, `500000` (bytes), `50%` (of the plan without swap) or `auto`
    (what this machine leaves this process: machine_budget)."""
    t = text.strip().lower()
    if t == "auto":
        return Budget(auto=True)
    if re.fullmatch(r"\d+(\.\d+)?\s*%", t):
        share = float(t[:-1])
        if 0 < share <= 100:
            return Budget(share=share)
        raise ConfigError(f"a share of the plan must be over 0% and at most 100%, got "
                          f"{text!r}", key="--memory-budget")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", t)
    if m and not m.group(2) and "." in m.group(1):   # 1.5 bytes: a share or a unit meant
        n = m.group(1)
        meant = f"{n}%" if 0 < float(n) <= 100 else f"{n}MiB"
        raise ConfigError(f"a bare number is whole bytes, got {text!r}; for "
                          f"{'a share of the plan' if meant.endswith('%') else 'MiB'} write "
                          f"{meant}", key="--memory-budget")
    if not m or m.group(2) not in UNITS or float(m.group(1)) * UNITS[m.group(2)] < 1:
        raise ConfigError(f"expected a size of at least one byte like 64MiB, 1.5GB, 500000, "
                          f"50% or auto, got {text!r}", key="--memory-budget")
    return Budget(bytes=int(float(m.group(1)) * UNITS[m.group(2)]))


@dataclass
class Prepared:
    """What every command starts from: the model read, built and planned."""
    cfg: ModelConfig
    graph: LayerGraph
    optimizer: object | None
    plan: MemoryPlan
    swap: SwapOptions | None = None   # set when the plan swaps under a budget
    auto: str | None = None           # --memory-budget auto: the budget, and how it was found


def _swap_settings(cfg: ModelConfig, budget: Budget | None, lookahead, swap_dir, direct):
    """The budget (None without one) and the rest of the swap options, from the flags,
    else from NNTrainer's keys (memory_swap* or fsu*): swap turned on there without a
    budget means 'as little memory as possible', which is what NNTrainer's swap aims at."""
    m = cfg.model
    if budget is None and (m["memory_swap"] or m["fsu"]):
        budget = Budget(bytes=0)
    if lookahead is None:
        lookahead = m["memory_swap_lookahead"] if m["memory_swap_lookahead"] is not None \
            else m["fsu_lookahead"] if m["fsu_lookahead"] is not None else DEFAULT_LOOKAHEAD
    if swap_dir is None:
        swap_dir = (cfg.model_path("memory_swap_path") or cfg.model_path("fsu_path")
                    or tempfile.gettempdir())
    return budget, SwapOptions(0, lookahead, direct, swap_dir)


# What training needs beside the arena, which auto leaves free: BLAS thread buffers,
# tracemalloc's records, the interpreter's own growth (measured: README, "auto").
AUTO_MARGIN = 8 * 2**20
# Searches at most, each within what the last one left: a search's objects are not all
# given back to the system, less each time (ResNet-18 at 64 MiB: 4.1, 5.6, 0.4 MiB)
AUTO_PASSES = 4


class Room(NamedTuple):
    """What `--memory-budget auto` finds: the budget, from the limit (and where that
    came from) less what the process holds and AUTO_MARGIN."""
    budget: int
    limit: int
    source: str
    held: int

    @property
    def limited_by(self) -> str:
        return f"{self.source} {self.limit / 2**20:.1f} MiB"

    @property
    def how(self) -> str:
        """How the budget was found, for the user."""
        return (f"{self.limited_by}, less this process's {self.held / 2**20:.1f} MiB and an "
                f"{AUTO_MARGIN / 2**20:.1f} MiB margin")

    @property
    def cgroup(self) -> bool:
        return self.source.startswith("cgroup")


def machine_budget() -> Room:
    """`--memory-budget auto`: what this process may still take (its memory cgroup's
    limit, else the available RAM, less what it holds now) less AUTO_MARGIN."""
    from nntrainer_cli.runtime.measure import held_bytes, memory_limit

    limit, source = memory_limit()
    held = held_bytes()
    return Room(limit - held - AUTO_MARGIN, limit, source, held)


class Planning(BudgetSearch):
    """One model file read and built once, then planned: without swap, or within the
    budget (`prepared`), searching the graphs of the frugal levels, tiles and
    micro-batches (each made when the search asks for it)."""

    def __init__(self, path: str, *, overrides=(), batch_size: int | None = None,
                 planner: str = "best", in_place: bool = True, require_loss: bool = True,
                 budget: str | None = None, lookahead: int | None = None,
                 swap_dir: str | None = None, direct: bool = False, inference: bool = False):
        self.cfg = cfg = load_config(path, overrides)
        if any(s.get("backbone") for s in cfg.layers):   # ONNX backbones, with their weights
            from nntrainer_cli.exchange.onnx_backbone import splice_backbones
            splice_backbones(cfg)
        self.options = (batch_size, require_loss, inference)
        self._use(cfg)   # a model that does not build fails here, first
        self.optimizer = make_optimizer(cfg.optimizer, cfg.optimizer_props) \
            if cfg.optimizer and not inference else None
        self.state = self.optimizer.state if self.optimizer else ()
        self.planner, self.in_place = planner, in_place
        self.budget, self.swap = _swap_settings(
            cfg, parse_size(budget) if budget is not None else None, lookahead, swap_dir,
            direct)
        self._as_written: Prepared | None = None
        self._limit: Room | None = None   # auto in a cgroup: what planning is checked against

    def _use(self, cfg: ModelConfig) -> None:
        batch_size, require_loss, inference = self.options
        self.cfg = cfg
        self.build = lambda level, tiles=None, parts=1: build_graph(
            cfg, batch_size, require_loss, frugal=level, inference=inference, tiles=tiles,
            micro_batches=parts)
        self.graph = self.build(0)

    def head_plan(self, found: Prepared) -> Prepared | None:
        """For a plan that swaps, of a model whose frozen prefix's output the feature
        cache keeps: the plan of the model without that prefix (graph/frozen.py) within
        the same budget, which the epochs the cache serves run instead (the prefix's
        activations in the first epoch set the plan's split and tiles: the transfer
        model at 25% ran its head in 2 parts with every layer in 2 tiles). None where
        there is no such prefix, or its plan does not fit; and under `auto` or direct
        I/O, which measure memory as a small device would: the weights' moves between
        the plans go through the page cache, and auto's room was measured without it."""
        from nntrainer_cli.graph.frozen import frozen_prefix, head_config

        if found.swap is None or found.swap.direct or found.auto:
            return None
        prefix = frozen_prefix(found.graph)
        cfg = head_config(found.cfg, found.graph, prefix) if prefix else None
        if cfg is None:
            return None
        # as little memory as can be (budget 0): no more than the full model's arena, not
        # the head's least, whose tiles would cost time and change sums
        budget = found.swap.budget or found.plan.swap.peak
        head = copy.copy(self)
        head._use(cfg)
        head._as_written, head._limit = None, None
        head.swap = replace(found.swap, budget=budget)
        plan = head._within(budget)
        return plan if isinstance(plan, Prepared) else None

    def plain(self, level: int = 0, tiles: dict[str, int] | None = None,
              parts: int = 1, derivative_first: bool = False,
              accumulate: bool = False) -> Prepared:
        """The plan without swap of the graph at one frugal level (0: as written), its
        tileable layers cut into `tiles` row tiles (`derivative_first`: the order of a
        tile's backward slots), its batch into `parts` micro-batches (`accumulate`:
        their order). The plan of the graph as written is kept, as every search and
        message starts from it; the others are made each time: a search asks for most
        of them once, and keeping them all held ResNet-18's four frugal levels' plans
        (5 MiB) through its search."""
        as_written = (level, parts, accumulate) == (0, 1, False) and not tiles
        if as_written and self._as_written is not None:
            return self._as_written
        g = self.graph if (level, parts) == (0, 1) and not tiles else \
            self.build(level, tiles, parts)
        p = Prepared(self.cfg, g, self.optimizer,
                     make_plan(g, self.state, self.planner, self.in_place,
                               derivative_first, accumulate))
        if as_written:
            self._as_written = p
        return p

    def prepared(self) -> Prepared:
        """The plan the budget asks for: without swap when there is none (or `auto`
        finds the plan fits), else the best within it; one line and exit 2 when the
        budget is under what any schedule can reach."""
        given = self.swap
        try:
            return self._prepared()
        finally:   # the plan of the graph as written is not held while training unless
            # chosen; auto's choices end with it
            self._as_written, self._limit, self.swap = None, None, given

    def _prepared(self) -> Prepared:
        b = self.budget
        if b is None:
            return self.plain()
        if b.auto:
            return self._auto()
        if b.share is not None:   # 0 would mean "as little as can be"
            budget = max(1, int(self.plain().plan.peak_bytes * b.share / 100))
        else:
            budget = b.bytes
        return self._chosen(self._within(budget))

    def _auto(self) -> Prepared:
        """Within what the machine leaves, measured once the plan exists: planning a
        large model holds MiBs of objects (a 50-layer MLP's: about 6 MiB), so a plan
        found before they counted is made again within what is left after them, until
        it fits (else one line, after AUTO_PASSES searches). Under a memory cgroup the
        swap file bypasses the page cache where its folder allows: the limit counts the
        page cache too, and the budget has already taken the room it would need
        (ResNet-18 through the page cache was killed by the kernel at 80 and 94 MiB,
        its swap reads finding no page to charge; with O_DIRECT it trains at both)."""
        from nntrainer_cli.runtime.measure import release_free_memory
        from nntrainer_cli.runtime.swap_io import direct_io_works

        whole = self.plain()
        room = machine_budget()
        budget, how = room.budget, room.how
        if budget >= whole.plan.peak_bytes:
            return replace(whole, auto=f"--memory-budget auto: {budget / 2**20:.1f} MiB "
                                       f"({how}); the plan's "
                                       f"{whole.plan.peak_bytes / 2**20:.1f} MiB fits it: no swap")
        direct = ""
        if room.cgroup:
            self._limit = room
            if not self.swap.direct and direct_io_works(self.swap.directory):
                self.swap = replace(self.swap, direct=True)
                direct = "; the swap file bypasses the page cache, which the limit counts"
        for _ in range(AUTO_PASSES):
            if budget <= 0:
                raise ConfigError(f"auto: no memory is left for training ({how})",
                                  key="--memory-budget")
            found = self._chosen(self._within(budget))
            release_free_memory()
            left = machine_budget()
            # a search fills its budget, and the next one leaves a little more behind:
            # ResNet-18 at 57 MiB went over by 0.07, 0.08, 0.04 MiB in three more. An
            # eighth of the margin may go (training's own growth beside the arena is up
            # to 4 MiB; with half, ResNet-18 was killed at 141 MiB)
            if found.plan.arena_bytes <= left.budget + AUTO_MARGIN // 8:
                return replace(found, auto=f"--memory-budget auto: {budget / 2**20:.1f} MiB "
                                           f"({how}){direct}")
            budget, how, found = left.budget, left.how, None   # room for the next search
        raise ConfigError(f"auto: after {AUTO_PASSES} searches the plan still does not fit "
                          f"what planning leaves ({how})", key="--memory-budget")

    def _check_ceiling(self) -> None:
        """Under auto in a memory cgroup, before each candidate: one line and exit 2
        once the search's objects take the margin, rather than the kernel's kill. Near
        its swap floor the 784 MLP's search tries plans of 600 slots, each held 6 MiB
        while its swap was planned, and was killed at 33 MiB. Checked before a
        candidate's plan and before its swap schedule: each step takes less than the
        margin (the largest seen, 7 MiB, only just)."""
        if self._limit is None:
            return
        from nntrainer_cli.runtime.measure import held_bytes

        held = held_bytes()
        if held > self._limit.limit - AUTO_MARGIN:
            raise ConfigError(f"auto: planning within this process's memory limit "
                              f"({self._limit.limited_by}) "
                              f"holds {held / 2**20:.1f} MiB, leaving less than the "
                              f"{AUTO_MARGIN / 2**20:.1f} MiB margin for training; give it "
                              "more memory", key="--memory-budget")

    def _chosen(self, found: Prepared | SwapRefusal) -> Prepared:
        """The plan found, or the user's one line: the smallest budget, also as a share
        of the plan without swap (what `--memory-budget 60%` is a share of)."""
        if isinstance(found, Prepared):
            return found
        hint = ""
        if self.budget.bytes is not None and self.budget.bytes <= 100:
            hint = f" (a bare number is bytes: for a share of the plan write {self.budget.bytes}%)"
        raise ConfigError(found.message(self.plain().plan.peak_bytes) + hint,
                          key="--memory-budget")

    def _at(self, level: int, budget: int, tiles: dict[str, int] | None = None,
            parts: int = 1, derivative_first: bool = False,
            accumulate: bool = False) -> Prepared | SwapRefusal:
        self._check_ceiling()
        p = self.plain(level, tiles, parts, derivative_first, accumulate)
        if parts > 1 and len(p.plan.slots) > MAX_SLOTS:   # not tried: planning it takes long
            return SwapRefusal(budget, math.inf, self.swap.lookahead, "too many slots")
        swap = replace(self.swap, budget=budget)
        self._check_ceiling()
        plan = with_swap(p.plan, swap)
        if isinstance(plan, SwapRefusal):
            return replace(plan, candidate=(level, tiles or {}, parts))
        return replace(p, plan=plan, swap=swap)


def prepare(path: str, **options) -> Prepared:
    """Config → graph → optimizer → plan, from a model file and the command's flags
    (Planning's options; `inference` plans the forward pass only: eval, predict)."""
    return Planning(path, **options).prepared()
