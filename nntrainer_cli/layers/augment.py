"""Augmentation for tiny data sets, NNTrainer's preprocess layers: random flips and
translations of each image, drawn from the run's seeded generator, in training only
(at evaluation they pass the input through). They stand before anything trainable:
no gradient goes back through them."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P

from .base import FinalizeContext, Layer, LayerError, RunContext, register


class Augment(Layer):
    differentiable = False
    draws = True

    def per_record(self) -> bool:   # random: a new draw every epoch
        return False

    def finalize(self, ctx: FinalizeContext) -> None:
        if len(ctx.input_shapes[0]) != 4 or ctx.input_shapes[0][2] * ctx.input_shapes[0][3] == 1:
            raise LayerError(f"a {self.type} layer needs image input (C:H:W), got "
                             f"{':'.join(map(str, ctx.input_shapes[0][1:]))}", "input_layers")
        ctx.output_shapes = [ctx.input_shapes[0]]

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, y = ctx.inputs[0], ctx.outputs[0]
        if not training:
            np.copyto(y, x)
            return
        for r in range(len(x)):
            self.augment(x[r], y[r], ctx.rng)

    def calc_derivative(self, ctx: RunContext) -> None:
        raise AssertionError(f"{self.type} passes no gradient back (refused when built)")


@register
class PreprocessFlip(Augment):
    """Each image flipped left-right and/or upside down, each with probability 1/2
    (the horizontal draw first, as NNTrainer draws them)."""
    type = "preprocess_flip"
    schema = {"flip_direction": P.Prop(P.enum("horizontal", "vertical",
                                              "horizontal_and_vertical"),
                                       "horizontal_and_vertical")}

    def augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        direction = self.p["flip_direction"]
        flip_w = rng.random() < 0.5 and direction != "vertical"
        flip_h = rng.random() < 0.5 and direction != "horizontal"
        np.copyto(y, x[:, ::-1 if flip_h else 1, ::-1 if flip_w else 1])


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored at the edges, edge pixel repeated (OpenCV's BORDER_REFLECT)."""
    period = 2 * n
    index = np.mod(index, period)
    return np.where(index < n, index, period - 1 - index)


@register
class PreprocessTranslate(Augment):
    """Each image shifted by a random fraction of its size, up to `random_translate`
    in each direction, with bilinear interpolation and mirrored edges (as NNTrainer's
    OpenCV warpAffine with BORDER_REFLECT)."""
    type = "preprocess_translate"
    schema = {"random_translate": P.Prop(P.floating, 0.0)}

    def finalize(self, ctx: FinalizeContext) -> None:
        if abs(self.p["random_translate"]) > 1:
            raise LayerError("random_translate is a share of the image size, from 0 to 1 "
                             f"(NNTrainer takes its size), got {self.p['random_translate']}",
                             "random_translate")
        super().finalize(ctx)

    def augment(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> None:
        limit = abs(self.p["random_translate"])
        _, h, w = x.shape
        dx, dy = rng.uniform(-limit, limit) * w, rng.uniform(-limit, limit) * h
        rows, cols = np.arange(h) + dy, np.arange(w) + dx
        r0, c0 = np.floor(rows), np.floor(cols)
        fr, fc = (rows - r0).astype(np.float32), (cols - c0).astype(np.float32)
        r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
        top, bottom = _reflect(r0, h), _reflect(r0 + 1, h)
        left, right = _reflect(c0, w), _reflect(c0 + 1, w)
        # output(i, j) = input(i + dy, j + dx), bilinear: rows first, then columns
        y[...] = x[:, top, :] * (1 - fr)[:, None] + x[:, bottom, :] * fr[:, None]
        y[...] = y[:, :, left] * (1 - fc) + y[:, :, right] * fc
