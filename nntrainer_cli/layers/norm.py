"""Batch normalization and dropout: layers whose training and inference differ."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P

from .base import (BACKWARD, INITIALIZERS, ITERATION, Access, FinalizeContext, InPlace, Layer,
                   Phase, RunContext, register)


def _open01(text: str) -> float:
    v = P.floating(text)
    if not 0 < v < 1:
        raise ValueError(f"expected a number in (0, 1), got {text!r}")
    return v


@register
class BatchNormalization(Layer):
    """Normalizes over every axis but `axis` (channels when C > 1, else width, as in
    NNTrainer). The normalized input is kept for backward in a planned tensor, so
    the output may overwrite the input."""
    type = "batch_normalization"
    batch_coupled = True      # its statistics are the whole batch's
    access = Access(in_place=InPlace.OVERWRITE, derivative_in_place=InPlace.OVERWRITE)
    schema = {"epsilon": P.Prop(P.positive_float, 0.001),
              "momentum": P.Prop(_open01, 0.99),
              "axis": P.Prop(P.enum("1", "2", "3")),
              "moving_mean_initializer": P.Prop(P.enum(*INITIALIZERS), "zeros"),
              "moving_variance_initializer": P.Prop(P.enum(*INITIALIZERS), "ones"),
              "gamma_initializer": P.Prop(P.enum(*INITIALIZERS), "ones"),
              "beta_initializer": P.Prop(P.enum(*INITIALIZERS), "zeros"),
              "weight_decay": P.Prop(P.nonneg_float, 0.0),
              "bias_decay": P.Prop(P.nonneg_float, 0.0)}

    def per_record(self) -> bool:   # training normalizes by the batch's statistics
        return False

    def finalize(self, ctx: FinalizeContext) -> None:
        shape = ctx.input_shapes[0]
        axis = int(self.p["axis"]) if self.p["axis"] else (1 if shape[1] > 1 else 3)
        self.axis = axis
        c = shape[axis]
        self.view = (int(np.prod(shape[:axis])), c, int(np.prod(shape[axis + 1:])))
        self.count = self.view[0] * self.view[2]
        ctx.output_shapes = [shape]
        p = self.p
        ctx.weight("moving_mean", (c,), p["moving_mean_initializer"], trainable=False)
        ctx.weight("moving_variance", (c,), p["moving_variance_initializer"], trainable=False)
        ctx.weight("gamma", (c,), p["gamma_initializer"], decay=p["weight_decay"])
        ctx.weight("beta", (c,), p["beta_initializer"], decay=p["bias_decay"])
        ctx.temp("xhat", shape, ITERATION)
        ctx.temp("mean", (c,), Phase.FORWARD)
        ctx.temp("invstd", (c,), ITERATION)
        ctx.temp("sum_dy", (c,), BACKWARD)
        ctx.temp("sum_dy_xhat", (c,), BACKWARD)

    def _3d(self, a):
        return a.reshape(self.view)

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, y, w, t = self._3d(ctx.inputs[0]), self._3d(ctx.outputs[0]), ctx.weights, ctx.temps
        xhat, mean, invstd = self._3d(t["xhat"]), t["mean"], t["invstd"]
        eps = self.p["epsilon"]
        if training:
            np.sum(x, axis=(0, 2), out=mean)
            mean /= self.count
            np.subtract(x, mean[:, None], out=xhat)
            np.einsum("acb,acb->c", xhat, xhat, out=invstd)   # Σ(x-μ)², then the variance
            invstd /= self.count
            m = self.p["momentum"]
            w["moving_mean"] *= m
            w["moving_mean"] += (1 - m) * mean
            w["moving_variance"] *= m
            w["moving_variance"] += (1 - m) * invstd
        else:
            np.subtract(x, w["moving_mean"][:, None], out=xhat)
            np.copyto(invstd, w["moving_variance"])
        invstd += eps
        np.sqrt(invstd, out=invstd)
        np.reciprocal(invstd, out=invstd)
        xhat *= invstd[:, None]
        np.multiply(xhat, w["gamma"][:, None], out=y)
        y += w["beta"][:, None]

    def calc_gradient(self, ctx: RunContext) -> None:
        dy, xhat, t = self._3d(ctx.out_grads[0]), self._3d(ctx.temps["xhat"]), ctx.temps
        np.sum(dy, axis=(0, 2), out=t["sum_dy"])
        np.einsum("acb,acb->c", dy, xhat, out=t["sum_dy_xhat"])
        if "beta" in ctx.grads:
            np.copyto(ctx.grads["beta"], t["sum_dy"])
            np.copyto(ctx.grads["gamma"], t["sum_dy_xhat"])

    def calc_derivative(self, ctx: RunContext) -> None:
        """dx = γ·invstd/M · (M·dy - Σdy - x̂·Σ(dy·x̂)), built in place in dx."""
        dy, xhat, t = self._3d(ctx.out_grads[0]), self._3d(ctx.temps["xhat"]), ctx.temps
        dx = self._3d(ctx.in_grads[0])
        if "beta" not in ctx.grads:  # frozen: the sums were not made in calc_gradient
            np.sum(dy, axis=(0, 2), out=t["sum_dy"])
            np.einsum("acb,acb->c", dy, xhat, out=t["sum_dy_xhat"])
        np.multiply(xhat, t["sum_dy_xhat"][:, None], out=xhat)   # xhat is dead after this
        np.multiply(dy, self.count, out=dx)
        dx -= t["sum_dy"][:, None]
        dx -= xhat
        scale = t["sum_dy"]                                     # reuse: γ·invstd/M
        np.multiply(ctx.weights["gamma"], t["invstd"], out=scale)
        scale /= self.count
        dx *= scale[:, None]


@register
class Dropout(Layer):
    """Zeroes a random fraction of activations while training, scaling the rest by
    1/(1-rate); the identity at inference. The mask is a planned tensor."""
    type = "dropout"
    access = Access(in_place=InPlace.OVERWRITE, derivative_in_place=InPlace.OVERWRITE)
    schema = {"dropout_rate": P.Prop(P.unit_interval, 0.0)}

    def finalize(self, ctx: FinalizeContext) -> None:
        ctx.output_shapes = [ctx.input_shapes[0]]
        if self.p["dropout_rate"] > 0:
            ctx.temp("mask", ctx.input_shapes[0], ITERATION)

    def per_record(self) -> bool:
        return self.p["dropout_rate"] == 0

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, y, rate = ctx.inputs[0], ctx.outputs[0], self.p["dropout_rate"]
        if not training or rate == 0:
            if x is not y and not np.shares_memory(x, y):
                np.copyto(y, x)
            return
        mask = ctx.temps["mask"]
        ctx.rng.random(dtype=np.float32, out=mask)
        np.greater_equal(mask, rate, out=mask, casting="unsafe")
        mask *= 1.0 / (1.0 - rate)
        np.multiply(x, mask, out=y)

    def calc_derivative(self, ctx: RunContext) -> None:
        if self.p["dropout_rate"] == 0:
            if not np.shares_memory(ctx.in_grads[0], ctx.out_grads[0]):
                np.copyto(ctx.in_grads[0], ctx.out_grads[0])
            return
        np.multiply(ctx.out_grads[0], ctx.temps["mask"], out=ctx.in_grads[0])
