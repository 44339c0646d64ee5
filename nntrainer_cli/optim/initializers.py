"""Weight initializers by NNTrainer name. Fans follow the usual convention: a dense
weight (in, unit) has fan_in = in; a conv filter (f, c, kh, kw) fan_in = c·kh·kw."""

from __future__ import annotations

import math

import numpy as np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    field = math.prod(shape[2:])
    return shape[1] * field, shape[0] * field


def initialize(out: np.ndarray, name: str, rng: np.random.Generator,
               shape: tuple[int, ...] | None = None) -> None:
    """Fill `out` in place, without a temporary of its size. `out` may be a row tile of
    a weight of `shape`: the generator draws one value per element in order, so filling
    the tiles one after another gives the values of the whole weight."""
    fan_in, fan_out = fans(shape or out.shape)
    if name in ("zeros", "none"):
        out.fill(0)
    elif name == "ones":
        out.fill(1)
    else:
        family, dist = name.rsplit("_", 1)
        var = {"lecun": 1 / fan_in, "xavier": 2 / (fan_in + fan_out), "he": 2 / fan_in}[family]
        if dist == "uniform":  # U(-limit, limit), drawn straight into the view
            limit = math.sqrt(3 * var)  # a Python float: a numpy float64
            # scalar would make numpy cast the whole array through a float64 temporary
            rng.random(dtype=out.dtype, out=out)
            out *= 2 * limit
            out -= limit
        else:
            rng.standard_normal(dtype=out.dtype, out=out)
            out *= math.sqrt(var)
