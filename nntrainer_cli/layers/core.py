"""Structural and dense layers: input, fully_connected, flatten, output, multiout."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P

from .base import Access, FinalizeContext, InPlace, Layer, LayerError, Phase, RunContext, register


def tile_columns(a: np.ndarray, tile: tuple[int, int] | None) -> np.ndarray:
    """The columns of a 2-D view that meet a weight tile's rows (all without tiles)."""
    return a if tile is None else a[:, tile[0]:tile[1]]


def rows2d(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) → (N·C·H, W), a view: dense layers act on the last axis."""
    return a.reshape(-1, a.shape[-1])


@register
class Input(Layer):
    type = "input"
    schema = {"normalization": P.Prop(P.boolean, False),
              "standardization": P.Prop(P.boolean, False)}
    access = Access(in_place=InPlace.OVERWRITE)

    def finalize(self, ctx: FinalizeContext) -> None:
        ctx.output_shapes = [ctx.input_shapes[0]]

    def per_record(self) -> bool:   # normalization scales by the whole batch's range
        return not self.p["normalization"]

    splits = per_record   # and nothing gathers that range over micro-batches

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, y = ctx.inputs[0], ctx.outputs[0]
        if x is not y:
            np.copyto(y, x)
        if self.p["normalization"]:
            lo, hi = y.min(), y.max()
            y -= lo
            if hi > lo:
                y /= hi - lo
        if self.p["standardization"]:
            flat = y.reshape(len(y), -1)
            flat -= flat.mean(axis=1, keepdims=True)
            std = np.sqrt(np.einsum("ij,ij->i", flat, flat) / flat.shape[1])[:, None]
            flat /= np.where(std > 0, std, 1)

    def calc_derivative(self, ctx: RunContext) -> None:
        raise AssertionError("the input layer never runs backward")


@register
class FullyConnected(Layer):
    """y = x·W + b. Tileable: under a tight budget W is cut into row tiles, each slot
    working on one (the input's matching columns), so only one tile, its gradient and
    its optimizer state need be resident; forward then sums the tiles' products."""
    type = "fully_connected"
    schema = {"unit": P.Prop(P.positive_int, required=True)}
    weighted = True
    tileable = True
    access = Access(gradient_reads=frozenset({"input"}))

    def finalize(self, ctx: FinalizeContext) -> None:
        shape = ctx.input_shapes[0]
        ctx.output_shapes = [shape[:-1] + (self.p["unit"],)]
        self.request_weight(ctx, "weight", (shape[-1], self.p["unit"]), tiled=True)
        self.request_bias(ctx, "bias", (self.p["unit"],))
        if ctx.tiles > 1:   # each later tile's product, before it is added to y
            ctx.temp("part", ctx.output_shapes[0], Phase.FORWARD)

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, y = rows2d(ctx.inputs[0]), rows2d(ctx.outputs[0])
        if ctx.first_tile:
            np.matmul(tile_columns(x, ctx.tile), ctx.weights["weight"], out=y)
            if "bias" in ctx.weights:
                y += ctx.weights["bias"]
        else:
            part = rows2d(ctx.temps["part"])
            np.matmul(tile_columns(x, ctx.tile), ctx.weights["weight"], out=part)
            y += part

    def calc_gradient(self, ctx: RunContext) -> None:
        dy = rows2d(ctx.out_grads[0])
        np.matmul(tile_columns(rows2d(ctx.inputs[0]), ctx.tile).T, dy,
                  out=ctx.grads["weight"])
        if "bias" in ctx.grads:   # a tiled layer's first tile's slots only
            np.sum(dy, axis=0, out=ctx.grads["bias"])

    def calc_derivative(self, ctx: RunContext) -> None:
        np.matmul(rows2d(ctx.out_grads[0]), ctx.weights["weight"].T,
                  out=tile_columns(rows2d(ctx.in_grads[0]), ctx.tile))


class ViewLayer(Layer):
    """A layer whose output is its input under another shape: planned as a view, it
    copies only when the planner could not alias the two (in_place off)."""
    access = Access(in_place=InPlace.VIEW, derivative_in_place=InPlace.VIEW)

    def forward(self, ctx: RunContext, training: bool) -> None:
        if not np.shares_memory(ctx.inputs[0], ctx.outputs[0]):
            np.copyto(ctx.outputs[0], ctx.inputs[0].reshape(ctx.outputs[0].shape))

    def calc_derivative(self, ctx: RunContext) -> None:
        if not np.shares_memory(ctx.in_grads[0], ctx.out_grads[0]):
            np.copyto(ctx.in_grads[0], ctx.out_grads[0].reshape(ctx.in_grads[0].shape))


@register
class Flatten(ViewLayer):
    type = "flatten"
    schema = {"start_dimension": P.Prop(P.positive_int, 1),
              "end_dimension": P.Prop(P.positive_int, 3)}

    def finalize(self, ctx: FinalizeContext) -> None:
        shape = ctx.input_shapes[0]
        lo, hi = self.p["start_dimension"], self.p["end_dimension"]
        if not 1 <= lo <= hi <= 3:
            raise LayerError(f"need 1 <= start_dimension <= end_dimension <= 3, got {lo}, {hi}",
                             "end_dimension")
        merged = int(np.prod(shape[lo:hi + 1]))
        out = shape[:lo] + (merged,) + shape[hi + 1:]
        ctx.output_shapes = [(out[0],) + (1,) * (4 - len(out)) + out[1:]]



@register
class Output(ViewLayer):
    """`output` in NNTrainer's ResNet file: passes its input on unchanged (a view);
    when several layers read it, a multiout after it sums their derivatives."""
    type = "output"

    def finalize(self, ctx: FinalizeContext) -> None:
        ctx.output_shapes = [ctx.input_shapes[0]]


@register
class MultiOut(Layer):
    """One output read by several layers: the value is shared, derivatives are summed."""
    type = "multiout"
    access = Access(in_place=InPlace.VIEW)

    def finalize(self, ctx: FinalizeContext) -> None:
        ctx.output_shapes = [ctx.input_shapes[0]] * self.p.get("outputs", 1)

    def forward(self, ctx: RunContext, training: bool) -> None:
        for y in ctx.outputs:
            if not np.shares_memory(y, ctx.inputs[0]):
                np.copyto(y, ctx.inputs[0])

    def calc_derivative(self, ctx: RunContext) -> None:
        dx = ctx.in_grads[0]
        np.copyto(dx, ctx.out_grads[0])
        for dy in ctx.out_grads[1:]:
            dx += dy
