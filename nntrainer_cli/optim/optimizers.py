"""Optimizers. Each updates one weight in place from its gradient and its state
tensors (all arena views); the gradient is dead after the update, so it serves as
the scratch buffer and no weight-sized temporary is ever allocated."""

from __future__ import annotations

import math

import numpy as np


class SGD:
    def __init__(self, momentum: float = 0.0, **_):
        self.momentum = momentum
        self.state = ("momentum",) if momentum else ()

    def apply(self, w, g, state, lr: float, iteration: int) -> None:
        if self.momentum:
            v = state[0]
            v *= self.momentum
            v += g
            np.multiply(v, lr, out=g)
        else:
            g *= lr
        w -= g


class Adam:
    """NNTrainer's Adam: w -= lr·sqrt(1-β2ᵗ)/(1-β1ᵗ) · m/(sqrt(v)+ε); with torch_ref,
    PyTorch's placement of ε (after bias-correcting v). AdamW adds decoupled decay."""

    state = ("adam_m", "adam_v")

    def __init__(self, beta1=0.9, beta2=0.999, epsilon=1e-7, torch_ref=False,
                 weight_decay=0.0, **_):
        self.b1, self.b2, self.eps = beta1, beta2, epsilon
        self.torch_ref, self.weight_decay = torch_ref, weight_decay

    def apply(self, w, g, state, lr: float, iteration: int) -> None:
        m, v = state
        t = iteration + 1
        b1, b2 = self.b1, self.b2
        if self.weight_decay:
            w *= 1 - lr * self.weight_decay
        m *= b1
        g *= 1 - b1                          # g' = (1-β1)·g
        m += g
        v *= b2
        g *= g                               # (1-β1)²·g²
        g *= (1 - b2) / (1 - b1) ** 2
        v += g
        np.sqrt(v, out=g)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        if self.torch_ref:
            g /= math.sqrt(c2)
            g += self.eps
            np.divide(m, g, out=g)
            g *= lr / c1
        else:
            g += self.eps
            np.divide(m, g, out=g)
            g *= lr * math.sqrt(c2) / c1
        w -= g


def make_optimizer(kind: str, props: dict):
    if kind == "sgd":
        return SGD(**props)
    if kind == "adam":
        return Adam(**{**props, "weight_decay": 0.0})
    if kind == "adamw":
        return Adam(**props)
    raise ValueError(kind)
