"""Element-wise activations. Each has a forward (x → y, may be in place) and a derivative
computed from the output y alone, so the input need not be kept for backward. The
derivative may use y as scratch: the activation layer is y's last reader."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P

from .base import FinalizeContext, Layer, RunContext, register


def relu(x, y):
    np.maximum(x, 0, out=y)


def relu_grad(y, dy, dx):
    np.sign(y, out=y)          # 1 where y > 0, else 0 (y ≥ 0)
    np.multiply(dy, y, out=dx)


LEAKY_SLOPE = 0.01  # NNTrainer's fixed negative slope


def leaky_relu(x, y):
    """max(x, a·x); needs y apart from x (not in place)."""
    np.multiply(x, LEAKY_SLOPE, out=y)
    np.maximum(x, y, out=y)


def leaky_relu_grad(y, dy, dx):
    """Slope 1 where y > 0, else LEAKY_SLOPE (y keeps the sign of x)."""
    np.sign(y, out=y)                            # 1, 0 or -1
    y *= (1 - LEAKY_SLOPE) / 2                   # (1-a)/2 · sign
    y += (1 + LEAKY_SLOPE) / 2                   # 1 or a (0 → (1+a)/2, measure zero)
    np.multiply(dy, y, out=dx)


def sigmoid(x, y):
    np.negative(x, out=y)
    np.exp(y, out=y)
    y += 1
    np.reciprocal(y, out=y)


def sigmoid_grad(y, dy, dx):
    np.multiply(dy, y, out=dx)
    np.subtract(1, y, out=y)
    np.multiply(dx, y, out=dx)


def tanh(x, y):
    np.tanh(x, out=y)


def tanh_grad(y, dy, dx):
    np.multiply(y, y, out=y)
    np.subtract(1, y, out=y)
    np.multiply(dy, y, out=dx)


def softmax(x, y):
    """Softmax over the last axis; only row-sized temporaries."""
    np.subtract(x, x.max(axis=-1, keepdims=True), out=y)
    np.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)


def softmax_grad(y, dy, dx):
    s = np.einsum("...i,...i->...", dy, y)[..., None]
    np.subtract(dy, s, out=dx)
    np.multiply(dx, y, out=dx)


FUNCTIONS = {
    "relu": (relu, relu_grad),
    "leaky_relu": (leaky_relu, leaky_relu_grad),
    "sigmoid": (sigmoid, sigmoid_grad),
    "tanh": (tanh, tanh_grad),
    "softmax": (softmax, softmax_grad),
}


NOT_IN_PLACE = {"leaky_relu"}


def check_name(value: str) -> str:
    low = value.lower()
    if low == "none" or low in FUNCTIONS:
        return low
    raise ValueError(f"unknown activation {value!r}{P.did_you_mean(low, FUNCTIONS)}; "
                     f"expected one of {', '.join(FUNCTIONS)}")


@register
class Activation(Layer):
    type = "activation"
    forward_alias = "overwrite"
    derivative_alias = "overwrite"
    deriv_reads = frozenset({"output"})

    def finalize(self, ctx: FinalizeContext) -> None:
        name = self.p.get("activation")
        if name in (None, "none"):
            from .base import LayerError
            raise LayerError("an activation layer needs 'activation' (e.g. relu)", "activation")
        self.fn, self.grad = FUNCTIONS[name]
        if name in NOT_IN_PLACE:
            self.forward_alias = None
        ctx.output_shapes = [ctx.input_shapes[0]]

    def forward(self, ctx: RunContext, training: bool) -> None:
        self.fn(ctx.inputs[0], ctx.outputs[0])

    def calc_derivative(self, ctx: RunContext) -> None:
        self.grad(ctx.outputs[0], ctx.out_grads[0], ctx.in_grads[0])
