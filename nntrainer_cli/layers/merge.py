"""Layers that join, split or reshape tensors: addition, concat, split, reshape."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P

from .base import FinalizeContext, Layer, LayerError, RunContext, register
from .core import ViewLayer


def _fmt(shape):
    return ":".join(map(str, shape[1:]))


@register
class Addition(Layer):
    type = "addition"
    inputs = (1, None)

    def finalize(self, ctx: FinalizeContext) -> None:
        first = ctx.input_shapes[0]
        for s in ctx.input_shapes[1:]:
            if s != first:
                raise LayerError(f"cannot add inputs of shapes {_fmt(first)} and {_fmt(s)}",
                                 "input_layers")
        ctx.output_shapes = [first]

    def forward(self, ctx: RunContext, training: bool) -> None:
        y = ctx.outputs[0]
        np.copyto(y, ctx.inputs[0])
        for x in ctx.inputs[1:]:
            y += x

    def calc_derivative(self, ctx: RunContext) -> None:
        for dx in ctx.in_grads:
            if dx is not None:
                np.copyto(dx, ctx.out_grads[0])


@register
class Concat(Layer):
    type = "concat"
    inputs = (1, None)
    schema = {"axis": P.Prop(P.enum("1", "2", "3"))}

    def finalize(self, ctx: FinalizeContext) -> None:
        shapes = ctx.input_shapes
        axis = int(self.p["axis"]) if self.p["axis"] else (3 if shapes[0][1] > 1 else 1)
        self.axis = axis
        for s in shapes[1:]:
            if s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
                raise LayerError(f"cannot concatenate {_fmt(shapes[0])} and {_fmt(s)} along "
                                 f"axis {axis}", "input_layers")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        ctx.output_shapes = [tuple(out)]
        self.bounds = np.cumsum([0] + [s[axis] for s in shapes]).tolist()

    def _part(self, a, i):
        index = [slice(None)] * 4
        index[self.axis] = slice(self.bounds[i], self.bounds[i + 1])
        return a[tuple(index)]

    def forward(self, ctx: RunContext, training: bool) -> None:
        for i, x in enumerate(ctx.inputs):
            np.copyto(self._part(ctx.outputs[0], i), x)

    def calc_derivative(self, ctx: RunContext) -> None:
        for i, dx in enumerate(ctx.in_grads):
            if dx is not None:
                np.copyto(dx, self._part(ctx.out_grads[0], i))


@register
class Reshape(ViewLayer):
    type = "reshape"
    schema = {"target_shape": P.Prop(P.dims, required=True)}

    def finalize(self, ctx: FinalizeContext) -> None:
        shape = ctx.input_shapes[0]
        target = (shape[0],) + self.p["target_shape"]
        if np.prod(target) != np.prod(shape):
            raise LayerError(f"cannot reshape {_fmt(shape)} into {_fmt(target)}: the sizes differ",
                             "target_shape")
        ctx.output_shapes = [target]


@register
class Split(Layer):
    """Cuts the input along one axis into equal parts, one output per part; consumers
    address them as name(0), name(1), …"""
    type = "split"
    schema = {"axis": P.Prop(P.enum("1", "2", "3"), required=True),
              "split_number": P.Prop(P.positive_int)}

    def finalize(self, ctx: FinalizeContext) -> None:
        shape = ctx.input_shapes[0]
        self.axis = axis = int(self.p["axis"])
        parts = self.p["split_number"] or shape[axis]
        if shape[axis] % parts:
            raise LayerError(f"axis {axis} of size {shape[axis]} cannot be split into {parts} "
                             "equal parts", "split_number")
        if parts != ctx.requested_outputs:
            raise LayerError(f"splits into {parts} parts but {ctx.requested_outputs} are read "
                             f"(name(0) … name({parts - 1}) must each have one reader)",
                             "split_number")
        self.size = shape[axis] // parts
        out = list(shape)
        out[axis] = self.size
        ctx.output_shapes = [tuple(out)] * parts

    def _part(self, a, i):
        index = [slice(None)] * 4
        index[self.axis] = slice(i * self.size, (i + 1) * self.size)
        return a[tuple(index)]

    def forward(self, ctx: RunContext, training: bool) -> None:
        for i, y in enumerate(ctx.outputs):
            np.copyto(y, self._part(ctx.inputs[0], i))

    def calc_derivative(self, ctx: RunContext) -> None:
        for i, dy in enumerate(ctx.out_grads):
            np.copyto(self._part(ctx.in_grads[0], i), dy)
