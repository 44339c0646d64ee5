"""Sliding windows over (N, C, H, W): their geometry, and the buffers convolution and
pooling gather them into. Every buffer is a planned work buffer passed in."""

from __future__ import annotations

import math

import numpy as np

from .base import LayerError


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
        # the kernel offsets (ki, kj) that read the input: their (output rows, output
        # columns) and (input rows, input columns) slices, made once (kernels walk them
        # every step)
        self.taps = []
        for ki in range(kernel[0]):
            rows = self.span(ki, 0)
            for kj in range(kernel[1]):
                cols = self.span(kj, 1)
                if rows and cols:
                    self.taps.append((ki, kj, (rows[0], cols[0]), (rows[1], cols[1])))

    def span(self, k, axis):
        """Output positions o with 0 <= o·s + k·d - before < size along an axis (before:
        its leading padding): (output, input) slices, or None."""
        s, d, n, count = self.stride[axis], self.dilation[axis], self.hw[axis], self.out[axis]
        before = self.pad[2 * axis]
        start = k * d - before
        lo = max(0, -(start // s) if start < 0 else 0)  # ceil(-start / s) for start < 0
        hi = min(count, (n - 1 - start) // s + 1) if n - 1 - start >= 0 else 0
        if hi <= lo:
            return None
        first = lo * s + start
        return slice(lo, hi), slice(first, first + (hi - lo - 1) * s + 1, s)


def im2col(x, win: Window, col):
    """col[n, c, ki, kj, oh, ow] = x[n, c, input row, input col] (0 in the padding)."""
    col.fill(0)
    for ki, kj, (orow, ocol), (irow, icol) in win.taps:
        np.copyto(col[:, :, ki, kj, orow, ocol], x[:, :, irow, icol])


def prefix(buffer: np.ndarray, shape) -> np.ndarray:
    """The first elements of a work buffer as a contiguous array of `shape` (a chunk
    with fewer samples than the buffer was planned for)."""
    return buffer.reshape(-1)[:math.prod(shape)].reshape(shape)


class RowLowering:
    """A convolution lowered by input rows (MEC: Cho & Brand, ICML 2017). The buffer
    rows[r, kj, c, n, j] holds input row r (padded) read at column j·stride + kj·dilation,
    so the kh·kw·c values output row i needs are one contiguous range of rows, starting
    at i·stride·kw·c: one stacked matmul over a strided view runs every output row, with
    no copy per kernel tap. The buffer is about kw times the input (im2col: kh·kw times).
    Needs a vertical dilation of 1. It lowers `m` samples and `band` output rows at a
    time, into the layer's temporary `{name}rows` (one per phase that lowers, named by
    the caller). Padding is written as zeros straight into that buffer."""

    def __init__(self, channels: int, hw, win: Window, m: int, band: int):
        self.c, self.hw, self.win, self.m, self.band = channels, hw, win, m, band
        kh, kw = win.kernel
        self.k = kh * kw * channels                      # one output pixel's inputs
        self.band_rows = (band - 1) * win.stride[0] + kh  # input rows a band reads
        # Without horizontal padding every kj reads whole rows of the input: one strided
        # copy lowers them all (a third of the time for LeNet's convs, measured in
        # tiles). Otherwise per kj (kj, output columns of padding to zero, and the
        # (first, stop, input column) to copy): one 5-D copy and edges cost more.
        spans = [win.span(kj, 1) for kj in range(kw)]
        ow = win.out[1]
        self.whole = all(span and span[0] == slice(0, ow) for span in spans)
        self.edges = []
        for kj, span in enumerate(spans if not self.whole else ()):
            out, cols = span or (slice(0, 0), None)
            zeros = [(z0, z1) for z0, z1 in ((0, out.start), (out.stop, ow)) if z0 < z1]
            self.edges.append((kj, zeros, [(out.start, out.stop, cols.start)] if span else []))

    def temps(self, ctx, phase, name: str) -> None:
        ctx.temp(name + "rows", (self.band_rows, self.win.kernel[1], self.c, self.m,
                                 self.win.out[1]), phase)

    def lower(self, x: np.ndarray, temps, name: str, first: int, stop: int, channels=None):
        """Output rows first..stop-1 of x (m, c, h, w), or of its `channels` (lo, hi),
        lowered into the buffer `name` names: a read-only view (rows, k, m·ow), each
        output row's columns, k ordered (ki, kj, c)."""
        (kh, kw), sh = self.win.kernel, self.win.stride[0]
        lo, hi = channels or (0, x.shape[1])
        r0, r1 = first * sh, (stop - 1) * sh + kh   # input rows [r0, r1), padded
        rows = prefix(temps[name + "rows"], (r1 - r0, kw, hi - lo, len(x), self.win.out[1]))
        top = self.win.pad[0]
        a, b = max(r0, top) - r0, min(r1, top + self.hw[0]) - r0   # rows of x: [a, b)
        if a >= b:
            rows.fill(0)
        else:
            zero_outside(rows, a, b)
            self._copy(x, rows[a:b], lo * x.strides[1] + (a + r0 - top) * x.strides[2])
        return self._view(rows, first, stop)

    def _copy(self, x: np.ndarray, rows: np.ndarray, at: int) -> None:
        """rows[r, kj, c, n, j] = x[n, c, r, j·stride + kj·dilation - left padding], x
        read from byte `at` (its first channel and row), 0 in the padding."""
        s, sw, dw = x.strides, self.win.stride[1], self.win.dilation[1]
        c, m = rows.shape[2:4]
        if self.whole:   # (no padding on the left either)
            np.copyto(rows, strided(x, at, rows.shape, (s[2], s[3] * dw, s[1], s[0], s[3] * sw)))
        for kj, zeros, copies in self.edges:
            copy_column(rows[:, kj], zeros, [(e0, e1, strided(
                x, at + col * s[3], (len(rows), c, m, e1 - e0), (s[2], s[1], s[0], s[3] * sw)))
                for e0, e1, col in copies])

    def _view(self, rows: np.ndarray, first: int, stop: int) -> np.ndarray:
        """The lowered rows as (output rows, k, m·ow): overlapping, read-only."""
        (kh, kw), sh = self.win.kernel, self.win.stride[0]
        c, m, ow = rows.shape[2:]
        line = m * ow * rows.itemsize            # one row of the buffer, in bytes
        view = strided(rows, 0, (stop - first, kh * kw * c, m * ow),
                       (sh * kw * c * line, line, rows.itemsize))
        view.flags.writeable = False   # its rows overlap
        return view


def zero_outside(rows: np.ndarray, a: int, b: int) -> None:
    """Zero the rows before a and from b on (vertical padding)."""
    if a:
        rows[:a].fill(0)
    if b < len(rows):
        rows[b:].fill(0)


def copy_column(rows: np.ndarray, zeros, copies) -> None:
    """One kernel column's rows (r, c, n, j): zero its `zeros` column ranges, copy each
    (first, stop, source) of `copies` into its range."""
    for z0, z1 in zeros:
        rows[..., z0:z1].fill(0)
    for e0, e1, source in copies:
        np.copyto(rows[..., e0:e1], source)


def strided(base: np.ndarray, offset: int, shape, strides) -> np.ndarray:
    """A view of a contiguous array's bytes with other strides, to read from (its
    elements may overlap: nothing writes through it; `_view` makes its own read-only
    for the layers). Made with the
    ndarray constructor: numpy's as_strided went through __array_interface__, which on
    arena views allocated about a megabyte (measured under tracemalloc)."""
    return np.ndarray(shape, base.dtype, buffer=base, offset=offset, strides=strides)
