"""Loss layers. Forward sets ctx.loss (averaged over the valid rows) and writes the
prediction to the output; calc_derivative writes dL/dinput for the whole batch."""

from __future__ import annotations

import numpy as np

from .activation import sigmoid
from .base import Access, FinalizeContext, InPlace, Layer, Phase, RunContext, register
from .core import rows2d


class Loss(Layer):
    is_loss = True

    def finalize(self, ctx: FinalizeContext) -> None:
        ctx.output_shapes = [ctx.input_shapes[0]]


@register
class MSE(Loss):
    """Mean of squared errors over every element, as NNTrainer's mse layer."""
    type = "mse"
    access = Access(in_place=InPlace.VIEW, derivative_reads=frozenset({"input"}))

    def finalize(self, ctx: FinalizeContext) -> None:
        super().finalize(ctx)
        ctx.temp("diff", ctx.input_shapes[0], Phase.FORWARD)

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, label, d = ctx.inputs[0][:ctx.rows], ctx.label[:ctx.rows], ctx.temps["diff"][:ctx.rows]
        np.subtract(x, label, out=d)
        ctx.loss = float(np.vdot(d, d)) / d.size
        if not np.shares_memory(ctx.outputs[0], ctx.inputs[0]):
            np.copyto(ctx.outputs[0], ctx.inputs[0])

    def calc_derivative(self, ctx: RunContext) -> None:
        dx = ctx.in_grads[0]
        np.subtract(ctx.inputs[0], ctx.label, out=dx)
        dx *= 2.0 / dx.size


@register
class CrossSoftmax(Loss):
    """Softmax over the last axis fused with cross entropy: per row -Σ label·log p,
    computed as Σlabel·logsumexp(x) - label·x so no full-size temporary is needed."""
    type = "cross_softmax"
    access = Access(derivative_reads=frozenset({"output"}))

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, p, label = rows2d(ctx.inputs[0]), rows2d(ctx.outputs[0]), rows2d(ctx.label)
        m = x.max(axis=1, keepdims=True)
        np.subtract(x, m, out=p)
        np.exp(p, out=p)
        s = p.sum(axis=1, keepdims=True)
        p /= s
        n = ctx.rows * (len(x) // len(ctx.inputs[0]))
        lse = (np.log(s) + m)[:n, 0]
        loss = lse * label[:n].sum(axis=1) - np.einsum("ij,ij->i", label[:n], x[:n])
        ctx.loss = float(loss.sum()) / ctx.rows

    def calc_derivative(self, ctx: RunContext) -> None:
        p, label, dx = rows2d(ctx.outputs[0]), rows2d(ctx.label), rows2d(ctx.in_grads[0])
        np.multiply(p, label.sum(axis=1, keepdims=True), out=dx)
        dx -= label
        dx /= len(ctx.in_grads[0])


@register
class CrossSigmoid(Loss):
    """Sigmoid fused with binary cross entropy, averaged over every element:
    max(x,0) - x·label + log(1 + exp(-|x|)), stable for large |x|."""
    type = "cross_sigmoid"
    access = Access(derivative_reads=frozenset({"output"}))

    def finalize(self, ctx: FinalizeContext) -> None:
        super().finalize(ctx)
        ctx.temp("terms", ctx.input_shapes[0], Phase.FORWARD)

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, label, t = ctx.inputs[0][:ctx.rows], ctx.label[:ctx.rows], ctx.temps["terms"][:ctx.rows]
        np.abs(x, out=t)
        np.negative(t, out=t)
        np.exp(t, out=t)
        np.log1p(t, out=t)
        total = float(t.sum()) - float(np.vdot(x, label))
        np.maximum(x, 0, out=t)
        ctx.loss = (total + float(t.sum())) / t.size
        sigmoid(ctx.inputs[0], ctx.outputs[0])

    def calc_derivative(self, ctx: RunContext) -> None:
        dx = ctx.in_grads[0]
        np.subtract(ctx.outputs[0], ctx.label, out=dx)
        dx /= dx.size
