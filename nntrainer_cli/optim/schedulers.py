"""Learning rate as a function of the 0-based global iteration, per NNTrainer's
schedulers."""

from __future__ import annotations

import bisect
import math
from typing import Callable

from nntrainer_cli.config.model import DEFAULT_LR, ModelConfig


def make_schedule(cfg: ModelConfig) -> Callable[[int], float]:
    p = cfg.scheduler_props
    if cfg.scheduler == "constant":
        return lambda it: p["learning_rate"]
    if cfg.scheduler == "exponential" or (cfg.scheduler is None and cfg.optimizer_props.get("decay_rate")):
        q = p if cfg.scheduler else {**cfg.optimizer_props}
        lr = q.get("learning_rate") or DEFAULT_LR[cfg.optimizer]
        return lambda it: lr * q["decay_rate"] ** (it / q["decay_steps"])
    if cfg.scheduler == "step":
        lrs, its = p["learning_rate"], p["iteration"]
        return lambda it: lrs[bisect.bisect_left(its, it)]
    if cfg.scheduler == "cosine":
        hi, lo, n = p["max_learning_rate"], p["min_learning_rate"], p["decay_steps"]
        return lambda it: lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * (it % n) / n))
    if cfg.scheduler == "linear":
        hi, lo, n = p["max_learning_rate"], p["min_learning_rate"], p["decay_steps"]
        return lambda it: max(lo, hi - (hi - lo) * it / n)
    if cfg.optimizer is None:   # nothing learns by gradient (a centroid_knn enrollment)
        return lambda it: 0.0
    lr = cfg.optimizer_props.get("learning_rate") or DEFAULT_LR[cfg.optimizer]
    return lambda it: lr
