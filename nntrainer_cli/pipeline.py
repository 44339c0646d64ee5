"""The one-way flow shared by the commands: config → graph → optimizer → plan."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, replace

from nntrainer_cli.config import ModelConfig, load_config
from nntrainer_cli.errors import ConfigError
from nntrainer_cli.graph import LayerGraph, build_graph
from nntrainer_cli.optim.optimizers import make_optimizer
from nntrainer_cli.plan import MemoryPlan, SwapOptions, make_plan
from nntrainer_cli.plan.swap import DEFAULT_LOOKAHEAD

FRUGAL_LEVELS = (1, 2, 4, 1 << 30)  # conv work buffers ÷1, ÷2, ÷4, one sample

UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
         "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3}


def parse_size(text: str) -> int | str:
    """`64MiB`, `1.5GB`, `500000` (bytes), `50%` (of the plan without swap) or `auto`
    (what this machine leaves this process: machine_budget)."""
    t = text.strip().lower()
    if t == "auto":
        return t
    if re.fullmatch(r"\d+(\.\d+)?%", t):
        if 0 < float(t[:-1]) <= 100:
            return t
        raise ConfigError(f"a share of the plan must be over 0% and at most 100%, got "
                          f"{text!r}", key="--memory-budget")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", t)
    if not m or m.group(2) not in UNITS or float(m.group(1)) * UNITS[m.group(2)] < 1:
        raise ConfigError(f"expected a size of at least one byte like 64MiB, 1.5GB, 500000, "
                          f"50% or auto, got {text!r}", key="--memory-budget")
    return int(float(m.group(1)) * UNITS[m.group(2)])


@dataclass
class Prepared:
    """What every command starts from: the model read, built and planned."""
    cfg: ModelConfig
    graph: LayerGraph
    optimizer: object | None
    plan: MemoryPlan
    swap: SwapOptions | None = None   # set when the plan swaps under a budget
    auto: str | None = None           # --memory-budget auto: the budget, and how it was found


def _swap_settings(cfg: ModelConfig, budget, lookahead, swap_dir, direct):
    """The budget as given (bytes, a share like '50%', 'min', or None) and the rest of
    the options, from the flags, else from NNTrainer's keys (memory_swap* or fsu*):
    swap turned on there without a budget means 'as little memory as possible', which
    is what NNTrainer's swap aims at."""
    m = cfg.model
    if budget is None and (m["memory_swap"] or m["fsu"]):
        budget = "min"
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


def machine_budget() -> tuple[int, str]:
    """`--memory-budget auto`: what this process may still take (its memory cgroup's
    limit, else the available RAM, less what it holds now) less AUTO_MARGIN; and how
    that figure was found, for the user."""
    from nntrainer_cli.runtime.measure import held_bytes, memory_limit

    limit, source = memory_limit()
    held = held_bytes()
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    return limit - held - AUTO_MARGIN, (f"{source} {mib(limit)}, less this process's "
                                        f"{mib(held)} and a {mib(AUTO_MARGIN)} margin")


def prepare(path: str, *, overrides=(), batch_size: int | None = None,
            planner: str = "best", in_place: bool = True, require_loss: bool = True,
            budget: int | str | None = None, lookahead: int | None = None,
            swap_dir: str | None = None, direct: bool = False,
            inference: bool = False) -> Prepared:
    """Config → graph → optimizer → plan, from a model file and the command's flags;
    `inference` plans the forward pass only (eval, predict)."""
    cfg = load_config(path, overrides)
    if any(s.get("backbone") for s in cfg.layers):   # ONNX backbones, with their weights
        from nntrainer_cli.exchange.onnx_backbone import splice_backbones
        splice_backbones(cfg)
    graph = build_graph(cfg, batch_size, require_loss, inference=inference)
    optimizer = make_optimizer(cfg.optimizer, cfg.optimizer_props) \
        if cfg.optimizer and not inference else None
    state = optimizer.state if optimizer else ()
    budget, swap = _swap_settings(cfg, budget, lookahead, swap_dir, direct)
    where = lambda msg: ConfigError(msg, key="--memory-budget")  # noqa: E731

    def plain() -> Prepared:
        return Prepared(cfg, graph, optimizer, make_plan(graph, state, planner, in_place))

    def plan_at(level: int, within: int) -> Prepared:
        g = build_graph(cfg, batch_size, require_loss, frugal=level, inference=inference)
        budgeted = replace(swap, budget=within)
        return Prepared(cfg, g, optimizer,
                        make_plan(g, state, planner, in_place, budgeted, where), budgeted)

    if budget is None:
        return plain()
    if budget == "auto":
        budget, how = machine_budget()
        whole = plain()
        if budget >= whole.plan.peak_bytes:
            return replace(whole, auto=f"--memory-budget auto: {budget / 2**20:.1f} MiB "
                                       f"({how}); the plan's {whole.plan.peak_bytes / 2**20:.1f}"
                                       " MiB fits it: no swap")
        if budget <= 0:
            raise where(f"auto: no memory is left for training ({how})")
        return replace(_within(plan_at, budget),
                       auto=f"--memory-budget auto: {budget / 2**20:.1f} MiB ({how})")
    if budget == "min":
        budget = 0
    elif isinstance(budget, str):  # a share of the plan without swap
        budget = max(1, int(plain().plan.peak_bytes
                            * float(budget[:-1]) / 100))   # 0 would mean "as little as can be"
    return _within(plan_at, budget)


def _within(plan_at, budget: int) -> Prepared:
    """The plan that keeps the resident arena within `budget` bytes (0: as little as
    can be), on the graph that moves the fewest bytes; `plan_at(level, budget)` plans
    the graph of one frugal level."""
    if budget == 0:  # as little memory as possible
        return plan_at(FRUGAL_LEVELS[-1], 0)
    # Relu masks and split applies (level 1) let more stay resident, but they change what
    # the schedule evicts and now and then it moves more bytes than without them: the
    # plan moving fewer bytes wins (the plain one on a tie, it has fewer slots). Smaller
    # conv buffers cost speed, so they come only when neither fits.
    fits = []
    for level in (0, 1):
        try:
            fits.append(plan_at(level, budget))
        except ConfigError:
            pass
    if fits:
        return min(fits, key=lambda p: p.plan.swap.bytes_in + p.plan.swap.bytes_out)
    for level in FRUGAL_LEVELS[1:]:
        try:
            return plan_at(level, budget)
        except ConfigError:
            if level == FRUGAL_LEVELS[-1]:
                raise
