"""The one-way flow shared by the commands: config → graph → optimizer → plan."""

from __future__ import annotations

from dataclasses import dataclass

from nntrainer_cli.config import ModelConfig, load_config
from nntrainer_cli.graph import LayerGraph, build_graph
from nntrainer_cli.optim.optimizers import make_optimizer
from nntrainer_cli.plan import MemoryPlan, make_plan


@dataclass
class Prepared:
    cfg: ModelConfig
    graph: LayerGraph
    optimizer: object | None
    plan: MemoryPlan


def _refuse_unbuilt(cfg: ModelConfig, graph: LayerGraph) -> None:
    """Keys the format allows but this tool cannot honour yet: say so, never ignore."""
    for key in ("memory_swap", "fsu"):
        if cfg.model[key]:
            raise cfg.model_section.error("swapping tensors to disk is not supported yet", key)


def prepare(path: str, *, overrides=(), batch_size: int | None = None,
            planner: str = "best", in_place: bool = True, require_loss: bool = True) -> Prepared:
    cfg = load_config(path, overrides)
    graph = build_graph(cfg, batch_size, require_loss)
    _refuse_unbuilt(cfg, graph)
    optimizer = make_optimizer(cfg.optimizer, cfg.optimizer_props) if cfg.optimizer else None
    plan = make_plan(graph, optimizer.state if optimizer else (), planner, in_place)
    return Prepared(cfg, graph, optimizer, plan)
