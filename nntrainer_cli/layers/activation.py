"""Element-wise activations. Most have a forward (x → y, may be in place) and a
derivative computed from the output y alone, so the input need not be kept for
backward; swish and gelu also read x. A derivative may use y as scratch: the
activation layer is y's last reader."""

from __future__ import annotations

import math

import numpy as np

from nntrainer_cli.config import props as P

from .base import ITERATION, Access, FinalizeContext, InPlace, Layer, LayerError, Phase, RunContext, register


def relu(x, y):
    np.maximum(x, 0, out=y)


def relu_grad(y, dy, dx):
    """dy where y > 0, else 0. Through a comparison, not np.sign: sign branches per
    value and ran 8x slower on relu outputs (half zeros at random)."""
    np.greater(y, 0, out=y)
    np.multiply(dy, y, out=dx)


LEAKY_SLOPE = 0.01  # NNTrainer's fixed negative slope


def leaky_relu(x, y):
    """max(x, a·x); needs y apart from x (not in place)."""
    np.multiply(x, LEAKY_SLOPE, out=y)
    np.maximum(x, y, out=y)


def leaky_relu_grad(y, dy, dx):
    """Slope 1 where y > 0, else LEAKY_SLOPE (y keeps the sign of x)."""
    np.greater(y, 0, out=y)                      # 1 or 0 (branch-free, see relu_grad)
    y *= 1 - LEAKY_SLOPE
    y += LEAKY_SLOPE                             # 1 or a
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


def swish(x, y):
    sigmoid(x, y)
    y *= x


def swish_grad(x, y, dy, dx):
    """d(x·s)/dx = y + s·(1 − y) = 1 − (1 − s)(1 − y), with s = sigmoid(x)."""
    sigmoid(x, dx)
    np.subtract(1, dx, out=dx)
    np.subtract(1, y, out=y)
    dx *= y
    np.subtract(1, dx, out=dx)
    dx *= dy


# erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below float32 resolution of Φ):
# numpy has no erf, and scipy is not worth a dependency for one function.
ERF_P = 0.3275911
ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
SQRT_HALF = math.sqrt(0.5)


def normal_cdf(x, out, scratch):
    """Φ(x) = ½(1 + erf(x/√2)) into `out`, using `scratch`; no other memory."""
    np.abs(x, out=scratch)
    scratch *= SQRT_HALF * ERF_P
    scratch += 1
    np.reciprocal(scratch, out=scratch)           # t = 1 / (1 + p·|z|)
    np.multiply(scratch, ERF_A[4], out=out)
    for a in ERF_A[3::-1]:                         # Horner: t·(a1 + t·(a2 + …))
        out += a
        out *= scratch
    np.abs(x, out=scratch)
    scratch *= SQRT_HALF
    np.square(scratch, out=scratch)
    np.negative(scratch, out=scratch)
    np.exp(scratch, out=scratch)
    out *= scratch                                 # erfc(|z|)
    np.subtract(1, out, out=out)
    np.copysign(out, x, out=out)                   # erf(z)
    out += 1
    out *= 0.5


def gelu(x, y, scratch):
    normal_cdf(x, y, scratch)
    y *= x


def gelu_grad(x, y, dy, dx, scratch):
    """Φ(x) + x·φ(x)."""
    normal_cdf(x, dx, scratch)
    np.square(x, out=scratch)
    scratch *= -0.5
    np.exp(scratch, out=scratch)
    scratch *= x
    scratch *= 1 / math.sqrt(2 * math.pi)
    dx += scratch
    dx *= dy


FUNCTIONS = {
    "relu": (relu, relu_grad),
    "leaky_relu": (leaky_relu, leaky_relu_grad),
    "sigmoid": (sigmoid, sigmoid_grad),
    "tanh": (tanh, tanh_grad),
    "softmax": (softmax, softmax_grad),
    "swish": (swish, swish_grad),
    "gelu": (gelu, gelu_grad),
}

NOT_IN_PLACE = {"leaky_relu"}
READS_INPUT = {"swish", "gelu"}   # their derivative needs x: never in place
NEEDS_SCRATCH = {"gelu"}          # one input-sized planned temporary per phase


def check_name(value: str) -> str:
    low = value.lower()
    if low == "none" or low in FUNCTIONS:
        return low
    raise ValueError(f"unknown activation {value!r}{P.did_you_mean(low, FUNCTIONS)}; "
                     f"expected one of {', '.join(FUNCTIONS)}")


@register
class Activation(Layer):
    type = "activation"
    # Most derivatives are computed from y alone and use y as scratch (it is their last
    # reader); in place both ways.
    access = Access(in_place=InPlace.OVERWRITE, derivative_in_place=InPlace.OVERWRITE,
                    derivative_reads=frozenset({"output"}),
                    derivative_writes=frozenset({"output"}))
    SEPARATE = Access(derivative_in_place=InPlace.OVERWRITE,   # leaky_relu: y apart from x
                      derivative_reads=frozenset({"output"}),
                      derivative_writes=frozenset({"output"}))
    READS_INPUT = Access(derivative_reads=frozenset({"input", "output"}),  # swish, gelu
                         derivative_writes=frozenset({"output"}))
    MASKED = Access(in_place=InPlace.OVERWRITE,    # frugal relu: backward reads a mask, not y
                    derivative_in_place=InPlace.OVERWRITE)

    def finalize(self, ctx: FinalizeContext) -> None:
        name = self.p.get("activation")
        if name in (None, "none"):
            raise LayerError("an activation layer needs 'activation' (e.g. relu)", "activation")
        self.fn, self.grad = FUNCTIONS[name]
        self.name_ = name
        if name in NOT_IN_PLACE:
            ctx.access = self.SEPARATE
        if name in READS_INPUT:
            ctx.access = self.READS_INPUT
        if name in NEEDS_SCRATCH:
            ctx.temp("scratch", ctx.input_shapes[0], Phase.FORWARD)
            ctx.temp("scratch_grad", ctx.input_shapes[0], Phase.CALC_DERIVATIVE)
        self.masked = name == "relu" and ctx.frugal
        if self.masked:  # keep one byte per value for backward, not the float output
            ctx.temp("mask", ctx.input_shapes[0], ITERATION, np.bool_)
            ctx.access = self.MASKED
        ctx.output_shapes = [ctx.input_shapes[0]]

    def forward(self, ctx: RunContext, training: bool) -> None:
        scratch = [ctx.temps["scratch"]] if self.name_ in NEEDS_SCRATCH else []
        self.fn(ctx.inputs[0], ctx.outputs[0], *scratch)
        if self.masked:
            np.greater(ctx.outputs[0], 0, out=ctx.temps["mask"])

    def calc_derivative(self, ctx: RunContext) -> None:
        if self.masked:  # the same values as relu_grad: dy·1 or dy·0
            np.multiply(ctx.out_grads[0], ctx.temps["mask"], out=ctx.in_grads[0])
            return
        args = [ctx.outputs[0], ctx.out_grads[0], ctx.in_grads[0]]
        if self.name_ in READS_INPUT:
            args.insert(0, ctx.inputs[0])
        if self.name_ in NEEDS_SCRATCH:
            args.append(ctx.temps["scratch_grad"])
        self.grad(*args)
