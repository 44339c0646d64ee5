"""Convolution and pooling over (N, C, H, W). Windows are gathered with strided views
into planned temporaries (im2col), so each kernel is one batched matmul and nothing
is allocated outside the plan."""

from __future__ import annotations

import math

import numpy as np

from nntrainer_cli.config import props as P

from .base import (ITERATION, Access, FinalizeContext, Layer, LayerError, Phase, RunContext,
                   register)


def resolve_padding(pad, size, kernel, stride, dilation):
    """(top, bottom, left, right) as NNTrainer computes it; `same` is TF-style."""
    if pad == "valid":
        return (0, 0, 0, 0)
    if pad != "same":
        return pad
    out = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        eff = (k - 1) * d + 1
        total = max((math.ceil(n / s) - 1) * s + eff - n, 0)
        out += [total // 2, total - total // 2]
    return tuple(out)


class Window:
    """The geometry of a sliding window, and the valid ranges per kernel offset."""

    def __init__(self, hw, kernel, stride, padding, dilation=(1, 1)):
        self.hw, self.kernel, self.stride, self.dilation = hw, kernel, stride, dilation
        self.pad = padding
        t, b, l, r = padding
        eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        self.out = ((hw[0] + t + b - eff[0]) // stride[0] + 1,
                    (hw[1] + l + r - eff[1]) // stride[1] + 1)
        if min(self.out) < 1:
            raise LayerError(f"the window {kernel[0]}x{kernel[1]} does not fit the "
                             f"{hw[0]}x{hw[1]} input with this padding", "kernel_size")
        self.offsets = []  # per (ki, kj): (output slices, input slices)
        for ki in range(kernel[0]):
            rows = self._range(ki, 0, t)
            for kj in range(kernel[1]):
                cols = self._range(kj, 1, l)
                self.offsets.append((ki, kj, rows, cols))

    def _range(self, k, axis, before):
        """Output positions o with 0 <= o·s + k·d - before < size: (output, input) slices."""
        s, d, n, count = self.stride[axis], self.dilation[axis], self.hw[axis], self.out[axis]
        start = k * d - before
        lo = max(0, -(start // s) if start < 0 else 0)  # ceil(-start / s) for start < 0
        hi = min(count, (n - 1 - start) // s + 1) if n - 1 - start >= 0 else 0
        if hi <= lo:
            return None
        first = lo * s + start
        return slice(lo, hi), slice(first, first + (hi - lo - 1) * s + 1, s)

    def valid(self):
        for ki, kj, rows, cols in self.offsets:
            if rows and cols:
                yield ki, kj, (rows[0], cols[0]), (rows[1], cols[1])


def im2col(x, win: Window, col):
    """col[n, c, ki, kj, oh, ow] = x[n, c, input row, input col] (0 in the padding)."""
    col.fill(0)
    for ki, kj, (orow, ocol), (irow, icol) in win.valid():
        np.copyto(col[:, :, ki, kj, orow, ocol], x[:, :, irow, icol])


def gather_table(win: Window) -> np.ndarray:
    """For each kernel tap and output pixel, the flat input pixel it reads, or h·w (a
    zero kept after the image) in the padding. Made once when the layer is planned:
    taps × output pixels indices (16 KiB for a 3×3 conv with a 15×15 output)."""
    (h, w), (kh, kw), (sh, sw), (dh, dw) = win.hw, win.kernel, win.stride, win.dilation
    top, _, left, _ = win.pad
    ki, kj, i, j = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(win.out[0]),
                               np.arange(win.out[1]), indexing="ij")
    r, q = i * sh - top + ki * dh, j * sw - left + kj * dw
    inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
    return np.where(inside, r * w + q, h * w).reshape(kh * kw, -1).astype(np.intp)


def gather_columns(x, table, padded, col):
    """im2col in one np.take: x copied beside a zero, then every tap gathered."""
    m, c = x.shape[:2]
    np.copyto(padded[:, :, :-1].reshape(x.shape), x)
    padded[:, :, -1] = 0
    # mode="clip": the indices are valid, and the default mode would buffer the output
    np.take(padded, table, axis=2, out=col.reshape(m, c, *table.shape), mode="clip")


def col2im(col, win: Window, dx):
    dx.fill(0)
    for ki, kj, (orow, ocol), (irow, icol) in win.valid():
        target = dx[:, :, irow, icol]
        np.add(target, col[:, :, ki, kj, orow, ocol], out=target)


GATHER_BELOW_WIDTH = 16
GATHER_TABLE_MAX_BYTES = 64 * 1024


@register
class Conv2D(Layer):
    type = "conv2d"
    weighted = True
    access = Access(gradient_reads=frozenset({"input"}))
    schema = {"filters": P.Prop(P.positive_int, required=True),
              "kernel_size": P.Prop(P.int_pair, required=True),
              "stride": P.Prop(P.int_pair, (1, 1)),
              "padding": P.Prop(P.padding, "valid"),
              "dilation": P.Prop(P.int_pair, (1, 1))}

    def finalize(self, ctx: FinalizeContext) -> None:
        n, c, h, w = ctx.input_shapes[0]
        p = self.p
        pad = resolve_padding(p["padding"], (h, w), p["kernel_size"], p["stride"], p["dilation"])
        self.win = Window((h, w), p["kernel_size"], p["stride"], pad, p["dilation"])
        oh, ow = self.win.out
        kh, kw = p["kernel_size"]
        f = p["filters"]
        ctx.output_shapes = [(n, f, oh, ow)]
        self.request_weight(ctx, "filter", (f, c, kh, kw))
        self.request_bias(ctx, "bias", (f,))
        # im2col a few samples at a time: its buffer stays about the size of the output
        # instead of kh·kw times the input (NNTrainer goes one at a time; frugal plans
        # divide the chunk)
        self.dims = (n, f, c * kh * kw, oh * ow)   # batch, filters, column length, pixels
        per_sample = c * kh * kw * oh * ow
        self.chunk = max(1, min(n, -(-f * oh * ow * n // per_sample)) // max(ctx.frugal, 1))
        # narrow outputs: one np.take beats kh·kw strided copies of short rows (measured:
        # 3x faster at 10 wide, 1.4x slower at 32 wide). The table is the one array a
        # layer keeps outside the arena: a constant of kh·kw·oh·ow 8-byte indices, made
        # only while it stays under GATHER_TABLE_MAX_BYTES.
        narrow = ow < GATHER_BELOW_WIDTH and kh * kw * oh * ow * 8 <= GATHER_TABLE_MAX_BYTES
        self.table = gather_table(self.win) if narrow else None
        if self.table is not None:
            ctx.temp("padded", (self.chunk, c, h * w + 1), Phase.FORWARD)
            ctx.temp("padded_grad", (self.chunk, c, h * w + 1), Phase.CALC_GRADIENT)
        col = (self.chunk, c, kh, kw, oh, ow)
        ctx.temp("col", col, Phase.FORWARD)
        ctx.temp("col_grad", col, Phase.CALC_GRADIENT)
        ctx.temp("filter_part", (f, c, kh, kw), Phase.CALC_GRADIENT)
        ctx.temp("col_deriv", col, Phase.CALC_DERIVATIVE)

    def _columns(self, x, temps, padded, col):
        if self.table is None:
            im2col(x, self.win, col)
        else:
            gather_columns(x, self.table, temps[padded][:len(x)], col)

    def _chunks(self, n):
        for start in range(0, n, self.chunk):
            yield start, min(self.chunk, n - start)

    def forward(self, ctx: RunContext, training: bool) -> None:
        n, f, k, pix = self.dims
        x, col, w = ctx.inputs[0], ctx.temps["col"], ctx.weights["filter"].reshape(f, k)
        y = ctx.outputs[0].reshape(n, f, pix)
        for s, m in self._chunks(n):
            self._columns(x[s:s + m], ctx.temps, "padded", col[:m])
            np.matmul(w, col[:m].reshape(m, k, pix), out=y[s:s + m])
        if "bias" in ctx.weights:
            y += ctx.weights["bias"][:, None]

    def calc_gradient(self, ctx: RunContext) -> None:
        n, f, k, pix = self.dims
        x, col = ctx.inputs[0], ctx.temps["col_grad"]
        dy = ctx.out_grads[0].reshape(n, f, pix)
        dw, part = ctx.grads["filter"].reshape(f, k), ctx.temps["filter_part"].reshape(f, k)
        dw.fill(0)
        for s, m in self._chunks(n):
            self._columns(x[s:s + m], ctx.temps, "padded_grad", col[:m])
            col3 = col[:m].reshape(m, k, pix)
            for i in range(m):
                np.matmul(dy[s + i], col3[i].T, out=part)
                dw += part
        if "bias" in ctx.grads:
            np.sum(dy, axis=(0, 2), out=ctx.grads["bias"])

    def calc_derivative(self, ctx: RunContext) -> None:
        n, f, k, pix = self.dims
        col, wt = ctx.temps["col_deriv"], ctx.weights["filter"].reshape(f, k).T
        dy = ctx.out_grads[0].reshape(n, f, pix)
        for s, m in self._chunks(n):
            np.matmul(wt, dy[s:s + m], out=col[:m].reshape(m, k, pix))
            col2im(col[:m], self.win, ctx.in_grads[0][s:s + m])


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
            idx, improved = ctx.temps["argmax"], ctx.temps["improved"]
            y.fill(-np.inf)
            idx.fill(0)
            for k, (_, _, (orow, ocol), (irow, icol)) in enumerate(self.win.valid(), 1):
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
            for _, _, (orow, ocol), (irow, icol) in self.win.valid():
                dst = y[:, :, orow, ocol]
                np.add(dst, x[:, :, irow, icol], out=dst)
                count[orow, ocol] += 1
            y /= count

    def calc_derivative(self, ctx: RunContext) -> None:
        """Each window sends its derivative back to its inputs. When windows do not
        overlap (stride ≥ pool size) each input gets at most one share: a plain write,
        much faster than accumulating."""
        dx, dy = ctx.in_grads[0], ctx.out_grads[0]
        dx.fill(0)
        disjoint = all(s >= k for s, k in zip(self.win.stride, self.win.kernel))
        if self.kind in ("max", "global_max"):
            idx, mask = ctx.temps["argmax"], ctx.temps["mask_back"]
            for k, (_, _, (orow, ocol), (irow, icol)) in enumerate(self.win.valid(), 1):
                m, target = mask[:, :, orow, ocol], dx[:, :, irow, icol]
                np.equal(idx[:, :, orow, ocol], k, out=m)
                if disjoint:
                    np.multiply(dy[:, :, orow, ocol], m, out=target)
                else:
                    np.add(target, dy[:, :, orow, ocol], out=target, where=m)
        else:
            scaled = ctx.temps["scaled"]
            np.divide(dy, ctx.temps["count"], out=scaled)
            for _, _, (orow, ocol), (irow, icol) in self.win.valid():
                target = dx[:, :, irow, icol]
                if disjoint:
                    np.copyto(target, scaled[:, :, orow, ocol])
                else:
                    np.add(target, scaled[:, :, orow, ocol], out=target)
