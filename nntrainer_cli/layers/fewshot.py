"""Few-shot learning without backprop, as NNTrainer's SimpleShot app does it: features
L2-normalized (`preprocess_l2norm`), then classes enrolled as centroids of their
support samples and recognized by the nearest one (`centroid_knn`)."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P

from .base import Access, FinalizeContext, Layer, Phase, RunContext, register
from .core import rows2d

UNSEEN = np.finfo(np.float32).min   # the score of a class with no sample yet: never nearest


@register
class PreprocessL2Norm(Layer):
    """Each record divided by its Euclidean norm (+ epsilon). NNTrainer's has no
    backward; this one has, so it can also sit inside a trained model (cosine heads)."""
    type = "preprocess_l2norm"
    schema = {"epsilon": P.Prop(P.positive_float, 0.001)}
    access = Access(derivative_reads=frozenset({"input", "output"}))

    def finalize(self, ctx: FinalizeContext) -> None:
        ctx.output_shapes = [ctx.input_shapes[0]]
        ctx.temp("norm", (ctx.input_shapes[0][0], 1), Phase.CALC_DERIVATIVE)

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, y = ctx.inputs[0], ctx.outputs[0]
        flat = x.reshape(len(x), -1)
        scale = np.sqrt(np.einsum("ij,ij->i", flat, flat))[:, None]
        scale += self.p["epsilon"]
        np.divide(flat, scale, out=y.reshape(len(y), -1))

    def calc_derivative(self, ctx: RunContext) -> None:
        """y = x / s with s = |x| + eps: dx = (dy - y (y·dy) s / |x|) / s."""
        x = ctx.inputs[0].reshape(len(ctx.inputs[0]), -1)
        y = ctx.outputs[0].reshape(len(x), -1)
        dy, dx = ctx.out_grads[0].reshape(len(x), -1), ctx.in_grads[0].reshape(len(x), -1)
        n = ctx.temps["norm"]
        n[:, 0] = np.sqrt(np.einsum("ij,ij->i", x, x))
        s = n + self.p["epsilon"]
        coef = np.einsum("ij,ij->i", y, dy)[:, None] * s
        np.divide(coef, n, out=coef, where=n > 0)   # x = 0 gives y = 0: no term
        np.multiply(y, coef, out=dx)
        np.subtract(dy, dx, out=dx)
        dx /= s


@register
class CentroidKNN(Layer):
    """Nearest class centroid. Training forward enrolls each record into its class's
    centroid (`map`, a running mean, with `num_samples` per class: NNTrainer's weights,
    in its order); the output is the negative Euclidean distance to every centroid, so
    the argmax is the nearest class (an unenrolled class scores the lowest float).

    It reads the labels as a loss layer does and ends the model. Its loss is the
    cross-entropy of the softmax over those scores (as prototypical networks train
    with), reported for the record but never differentiated: nothing before it may be
    trainable."""
    type = "centroid_knn"
    schema = {"num_class": P.Prop(P.positive_int, required=True)}
    is_loss = True
    differentiable = False

    def finalize(self, ctx: FinalizeContext) -> None:
        shape = ctx.input_shapes[0]
        k, features = self.p["num_class"], int(np.prod(shape[1:]))
        ctx.output_shapes = [(shape[0], 1, 1, k)]
        ctx.weight("map", (k, features), "zeros", trainable=False)
        ctx.weight("num_samples", (k,), "zeros", trainable=False)
        ctx.temp("distance", (shape[0], k), Phase.FORWARD)

    def label_shape(self, ctx: FinalizeContext) -> tuple:
        return (ctx.input_shapes[0][0], 1, 1, self.p["num_class"])

    def forward(self, ctx: RunContext, training: bool) -> None:
        x = ctx.inputs[0].reshape(len(ctx.inputs[0]), -1)
        centroids, seen = ctx.weights["map"], ctx.weights["num_samples"]
        label = rows2d(ctx.label)[:ctx.rows]
        if training:
            for r, k in enumerate(label.argmax(axis=1)):
                seen[k] += 1
                centroids[k] += (x[r] - centroids[k]) / seen[k]
        # |x - c|² = |x|² - 2 x·c + |c|², one matrix product for the whole batch
        d = ctx.temps["distance"]
        np.matmul(x, centroids.T, out=d)
        d *= -2
        d += np.einsum("ij,ij->i", x, x)[:, None]
        d += np.einsum("ij,ij->i", centroids, centroids)[None, :]
        np.maximum(d, 0, out=d)
        np.sqrt(d, out=d)
        scores = rows2d(ctx.outputs[0])
        np.negative(d, out=scores)
        scores[:, seen == 0] = UNSEEN
        top = scores[:ctx.rows].max(axis=1, keepdims=True)
        lse = np.log(np.exp(scores[:ctx.rows] - top).sum(axis=1)) + top[:, 0]
        ctx.loss = float(np.sum(lse - np.einsum("ij,ij->i", label, scores[:ctx.rows]))) / ctx.rows

    def calc_derivative(self, ctx: RunContext) -> None:
        raise AssertionError("centroid_knn passes no gradient back (refused when built)")

