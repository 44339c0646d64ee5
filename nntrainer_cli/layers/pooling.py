"""Pooling over (N, C, H, W): each window tap is one strided view, so a pass is a few
whole-array operations per tap."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P

from .base import ITERATION, FinalizeContext, Layer, LayerError, Phase, RunContext, register
from .windows import Window, resolve_padding


@register
class Pooling2D(Layer):
    type = "pooling2d"
    schema = {"pooling": P.Prop(P.enum("max", "average", "global_max", "global_average"),
                                required=True),
              "pool_size": P.Prop(P.int_pair),
              "stride": P.Prop(P.int_pair, (1, 1)),
              "padding": P.Prop(P.padding, "valid")}

    def finalize(self, ctx: FinalizeContext) -> None:
        n, c, h, w = ctx.input_shapes[0]
        p = self.p
        self.kind = p["pooling"]
        if self.kind.startswith("global"):
            pool, stride, pad = (h, w), (1, 1), (0, 0, 0, 0)
        else:
            if p["pool_size"] is None:
                raise LayerError(f"{self.kind} pooling needs pool_size (e.g. 2,2)", "pool_size")
            pool, stride = p["pool_size"], p["stride"]
            pad = resolve_padding(p["padding"], (h, w), pool, stride, (1, 1))
            if max(pad[:2]) >= pool[0] or max(pad[2:]) >= pool[1]:
                raise LayerError(f"padding {','.join(map(str, pad))} must be smaller than the "
                                 f"pool size {pool[0]}x{pool[1]}: a window of padding alone "
                                 "has nothing to pool", "padding")
        self.win = Window((h, w), pool, stride, pad)
        oh, ow = self.win.out
        _, _, (orow, ocol), _ = self.win.taps[0]
        self.first_covers = (orow.stop - orow.start, ocol.stop - ocol.start) == (oh, ow)
        # windows side by side over the whole input: backward writes every input once
        self.tiles_input = tuple(stride) == tuple(pool) and not any(pad) and \
            (oh * stride[0], ow * stride[1]) == (h, w)
        out = (n, c, oh, ow)
        ctx.output_shapes = [out]
        if self.kind in ("max", "global_max"):
            # which window tap won, counted from 1 (0: none yet): one byte for windows
            # of up to 126 taps
            taps = pool[0] * pool[1]
            tap = np.int8 if taps < 2**7 - 1 else np.int16 if taps < 2**15 - 1 else np.int32
            ctx.temp("argmax", out, ITERATION, tap)
            ctx.temp("improved", out, Phase.FORWARD, tap)
            ctx.temp("mask_back", out, Phase.CALC_DERIVATIVE, np.bool_)
        else:
            ctx.temp("count", (oh, ow), ITERATION)
            ctx.temp("scaled", out, Phase.CALC_DERIVATIVE)

    def forward(self, ctx: RunContext, training: bool) -> None:
        x, y = ctx.inputs[0], ctx.outputs[0]
        if self.kind in ("max", "global_max"):
            # Branch-free (a masked copy branches per value and ran 8x slower): each tap
            # that beats the maximum so far marks its number, and taps come in rising
            # order, so the largest mark is the last strict improvement: the first
            # maximum wins ties.
            # A first tap that reaches every output starts the maximum as a copy.
            idx, improved = ctx.temps["argmax"], ctx.temps["improved"]
            taps = list(enumerate(self.win.taps, 1))
            if self.first_covers:
                (_, (_, _, _, (irow, icol))), taps = taps[0], taps[1:]
                np.copyto(y, x[:, :, irow, icol])
                idx.fill(1)
            else:
                y.fill(-np.inf)
                idx.fill(0)
            for k, (_, _, (orow, ocol), (irow, icol)) in taps:
                src, dst = x[:, :, irow, icol], y[:, :, orow, ocol]
                won, m = idx[:, :, orow, ocol], improved[:, :, orow, ocol]
                np.greater(src, dst, out=m)
                np.multiply(m, k, out=m)
                np.maximum(won, m, out=won)
                np.maximum(dst, src, out=dst)
        else:
            count = ctx.temps["count"]
            y.fill(0)
            count.fill(0)
            for _, _, (orow, ocol), (irow, icol) in self.win.taps:
                dst = y[:, :, orow, ocol]
                np.add(dst, x[:, :, irow, icol], out=dst)
                count[orow, ocol] += 1
            y /= count

    def calc_derivative(self, ctx: RunContext) -> None:
        """Each window sends its derivative back to its inputs. When windows do not
        overlap (stride ≥ pool size) each input gets at most one share: a plain write,
        much faster than accumulating."""
        dx, dy = ctx.in_grads[0], ctx.out_grads[0]
        if not self.tiles_input:
            dx.fill(0)
        disjoint = all(s >= k for s, k in zip(self.win.stride, self.win.kernel))
        if self.kind in ("max", "global_max"):
            idx, mask = ctx.temps["argmax"], ctx.temps["mask_back"]
            for k, (_, _, (orow, ocol), (irow, icol)) in enumerate(self.win.taps, 1):
                m, target = mask[:, :, orow, ocol], dx[:, :, irow, icol]
                np.equal(idx[:, :, orow, ocol], k, out=m)
                if disjoint:
                    np.multiply(dy[:, :, orow, ocol], m, out=target)
                else:
                    np.add(target, dy[:, :, orow, ocol], out=target, where=m)
        else:
            scaled = ctx.temps["scaled"]
            np.divide(dy, ctx.temps["count"], out=scaled)
            for _, _, (orow, ocol), (irow, icol) in self.win.taps:
                target = dx[:, :, irow, icol]
                if disjoint:
                    np.copyto(target, scaled[:, :, orow, ocol])
                else:
                    np.add(target, scaled[:, :, orow, ocol], out=target)
