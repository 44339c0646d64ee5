"""2-D convolution over (N, C, H, W) as stacked matrix products on planned work buffers.

The input is lowered by rows (`windows.RowLowering`): one strided copy per chunk of
samples (per kernel column with horizontal padding), then one stacked matmul for every output row. The input derivative of a
stride-1 convolution is itself a convolution (of the output derivative, padded, with
the flipped filter) and runs the same way; other strides, and outputs much smaller
than their input (where that convolution would mostly read padding), scatter columns
back, samples innermost. A vertically dilated kernel's rows are not one range, so it
keeps im2col, as do large filters on small images. Work buffers hold a few samples at
a time, about the output's size in all (NNTrainer goes one sample at a time); frugal
plans lower fewer output rows at a time (im2col: fewer samples).

The loops that call numpy many times a step live in short functions (here
`add_products`, `channels_last`, `scatter`, `bias_gradient`; in windows.py
`RowLowering._copy`, `copy_column`, `zero_outside`): tracemalloc, on in every run that measures its peak, finds
each allocation's line by walking its function's line table from the start (CPython
3.11), so a view made deep in a long function cost several µs more."""

from __future__ import annotations

import numpy as np

from nntrainer_cli.config import props as P

from .base import Access, FinalizeContext, Layer, Phase, RunContext, register
from .windows import RowLowering, Window, im2col, prefix, resolve_padding


def chunks(n: int, m: int):
    for start in range(0, n, m):
        yield start, min(m, n - start)


def bands(rows: int, band: int):
    for first in range(0, rows, band):
        yield first, min(rows, first + band)


BIAS_ROWS = 16              # samples per matrix-vector product of the bias gradient
FILTER_IN_CACHE = 1 << 20   # bytes: measured on ResNet-18, 0.6 MB filters gain, 2.4 MB lose


def by_rows(n: int, m: int, rows: int, filters: int) -> bool:
    """Whether to lower by rows rather than im2col. Row lowering moves less data per
    sample, but a step reads the filter once per output row and chunk of m samples
    (im2col: once per sample). That only costs while the filter is out of cache: large
    filters on small images (ResNet's last blocks) stay with im2col."""
    return filters * 4 <= FILTER_IN_CACHE or -(-n // m) * rows <= n


def from_rows(out, y, bias, add: bool = False) -> None:
    """Output rows (oh, f, m·ow) back to (m, f, oh, ow), adding the bias on the way
    (or added to what y holds)."""
    oh, f, _ = out.shape
    rows = out.reshape(oh, f, len(y), -1).transpose(2, 1, 0, 3)
    if add:
        np.add(y, rows, out=y)
        return
    if bias is not None:   # on the rows' long runs, then a copy: a quarter faster than
        np.add(out, bias[:, None], out=out)   # one add in y's order (short runs)
    np.copyto(y, rows)


def scatter(win: Window, taps, dy_last, cols, dx) -> None:
    """dx (c, h, w, m) = each kernel tap's columns added where its window read them:
    per kernel row ki, one product (taps[ki]·dy) makes its kw taps' columns (c, kw, oh,
    ow, m) of all m samples at once, from dy_last (ft, oh, ow, m)."""
    dx.fill(0)
    row = None
    for ki, kj, (orow, ocol), (irow, icol) in win.taps:
        if ki != row:
            row = ki
            np.matmul(taps[ki], dy_last.reshape(len(dy_last), -1),
                      out=cols.reshape(len(taps[ki]), -1))
        target = dx[:, irow, icol]
        np.add(target, cols[:, kj, orow, ocol], out=target)


def channels_last(dy, buffer):
    """dy (m, ft, rows, ow) copied into `buffer` as (rows, m·ow, ft): each output row's
    product is then (k, m·ow)·(m·ow, ft), which ran 1.5-1.7x faster than (ft, m·ow)·(m·ow,
    k) on VGG's shapes."""
    m, ft, rows, ow = dy.shape
    out = prefix(buffer, (rows, m * ow, ft))
    np.copyto(out.reshape(rows, m, ow, ft), dy.transpose(2, 0, 3, 1))
    return out


def add_products(v, dyr, products, total) -> None:
    """total += v[i]·dyr[i] for each output row i in turn, `len(products)` rows per
    stacked product: one order of sums at every chunking."""
    group = len(products)
    for a in range(0, len(v), group):
        b = min(len(v), a + group)
        np.matmul(v[a:b], dyr[a:b], out=products[:b - a])
        for part in products[:b - a]:
            np.add(total, part, out=total)


def bias_gradient(dy, temps, db) -> None:
    """db = dy summed over samples and positions: per sample a matrix-vector product
    (a third of np.sum's time over axes (0, 2, 3)), BIAS_ROWS samples at a time."""
    ones, parts = temps["ones"], temps["bias_parts"]
    n, f = dy.shape[:2]
    ones.fill(1)
    db.fill(0)
    for s, m in chunks(n, len(parts) - 1):
        np.matmul(dy[s:s + m].reshape(m, f, -1), ones, out=parts[:m])
        db += np.sum(parts[:m], axis=0, out=parts[-1])


@register
class Conv2D(Layer):
    """Tileable: under a tight budget the filter is cut into tiles of filters (output
    channels), each slot running the row lowering for its own: forward writes its
    channels (the first tile also every channel's bias, which the later ones add to),
    backward adds each tile's share of the input derivative."""
    type = "conv2d"
    weighted = True
    tileable = True
    in_pieces = True
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
        self.win = win = Window((h, w), p["kernel_size"], p["stride"], pad, p["dilation"])
        (oh, ow), (kh, kw), f = win.out, p["kernel_size"], p["filters"]
        ctx.output_shapes = [(n, f, oh, ow)]
        self.request_weight(ctx, "filter", (f, c, kh, kw), tiled=True)
        self.request_bias(ctx, "bias", (f,))
        # tiles lower by rows, which a vertically dilated kernel cannot
        self.tileable = win.dilation[0] == 1
        if ctx.tiles > 1 and not self.tileable:
            raise AssertionError("a vertically dilated conv2d is not tileable")   # planner bug
        ft = -(-f // ctx.tiles)   # the most filters a tile holds
        if not p["disable_bias"]:   # its gradient: per sample a matrix-vector product
            ctx.temp("ones", (oh * ow,), Phase.CALC_GRADIENT)
            ctx.temp("bias_parts", (min(n, BIAS_ROWS) + 1, f), Phase.CALC_GRADIENT)  # + a sum
        self.shape = (n, f, c, kh, kw)
        output = n * f * oh * ow

        def samples(per_sample: int, frugal: int = 1) -> int:
            """Samples per chunk: a phase's buffers hold about an output's worth."""
            return max(1, min(n, -(-output // per_sample)) // frugal)

        # Lowered by rows, a phase takes m samples at a time, and frugal plans lower
        # fewer output rows at a time instead of fewer samples: every matrix product
        # keeps its shape, and float32 products are not bit-identical across shapes.
        # (im2col runs one product per sample, so there frugal plans take fewer samples.)
        # At most oh samples: one output row of them lowers into no more than one
        # sample's im2col columns, the least memory frugal plans had before.
        k, frugal = c * kh * kw, max(ctx.frugal, 1)
        hp = h + pad[0] + pad[1]
        m = min(oh, samples(hp * kw * c * ow + f * oh * ow))
        band = max(1, oh // frugal)
        self.lowered = None
        if win.dilation[0] == 1 and (ctx.tiles > 1 or by_rows(n, m, oh, ft * k)):
            self.lowered = RowLowering(c, (h, w), win, m, band)   # forward and gradient
            self.lowered.temps(ctx, Phase.FORWARD, "")
            ctx.temp("filter_rows", (ft, k), Phase.FORWARD)
            ctx.temp("out_rows", (band, ft, m * ow), Phase.FORWARD)
            self.lowered.temps(ctx, Phase.CALC_GRADIENT, "grad_")
            ctx.temp("out_grad_rows", (band, m * ow, ft), Phase.CALC_GRADIENT)
            # products of `group` output rows at a time: a quarter of the rows buffer, or
            # one filter's worth
            rows_buffer = self.lowered.band_rows * kw * c * m * ow
            self.group = max(1, min(band, rows_buffer // (4 * ft * k)))
            ctx.temp("filter_parts", (self.group, k, ft), Phase.CALC_GRADIENT)
        else:
            self.m_col = samples(k * oh * ow, frugal)
            ctx.temp("col", (self.m_col, c, kh, kw, oh, ow), Phase.FORWARD)
            ctx.temp("col_grad", (self.m_col, c, kh, kw, oh, ow), Phase.CALC_GRADIENT)
            ctx.temp("filter_part", (f, k), Phase.CALC_GRADIENT)
        # the input derivative: a stride-1 convolution of dy, or columns scattered back
        back = [size - 1 - q for size, q in zip((kh, kh, kw, kw), pad)]
        self.lowered_deriv = None
        hq = oh + back[0] + back[1]
        m = min(h, samples(hq * kw * ft * w + c * h * w))
        band = max(1, h // frugal)
        if win.stride == (1, 1) and win.dilation == (1, 1) and min(back) >= 0 and \
                4 * oh * ow >= 3 * h * w and by_rows(n, m, h, ft * k):
            full = Window((oh, ow), (kh, kw), (1, 1), tuple(back))
            self.lowered_deriv = RowLowering(ft, (oh, ow), full, m, band)
            self.lowered_deriv.temps(ctx, Phase.CALC_DERIVATIVE, "deriv_")
            ctx.temp("filter_flipped", (c, kh * kw * ft), Phase.CALC_DERIVATIVE)
            ctx.temp("in_rows", (band, c, m * w), Phase.CALC_DERIVATIVE)
        else:
            # m at every frugal level: a product's shape sets its bits
            self.m_deriv = m = samples(ft * oh * ow + c * kw * oh * ow + c * h * w)
            ctx.temp("filter_taps", (kh, c * kw, ft), Phase.CALC_DERIVATIVE)
            ctx.temp("dy_last", (ft, oh * ow * m), Phase.CALC_DERIVATIVE)
            ctx.temp("tap_cols", (c, kw, oh, ow, m), Phase.CALC_DERIVATIVE)
            ctx.temp("dx_last", (c, h, w, m), Phase.CALC_DERIVATIVE)

    @staticmethod
    def _convolve(lowering: RowLowering, weights, x, y, bias, temps, name, out_name,
                  channels=None, add: bool = False) -> None:
        """y = (or, with `add`, y +=) the convolution of x's `channels` (all without)
        with weights (filters, kh·kw·c), by chunks of samples and bands of output rows,
        in the buffers `name` names."""
        (oh, ow), f = lowering.win.out, len(weights)
        for s, m in chunks(len(x), lowering.m):
            for first, stop in bands(oh, lowering.band):
                out = prefix(temps[out_name], (stop - first, f, m * ow))
                np.matmul(weights, lowering.lower(x[s:s + m], temps, name, first, stop,
                                                  channels), out=out)
                from_rows(out, y[s:s + m, :, first:stop], bias, add)

    def forward(self, ctx: RunContext, training: bool) -> None:
        n, f, c, kh, kw = self.shape
        x, y, filt = ctx.inputs[0], ctx.outputs[0], ctx.weights["filter"]
        if self.lowered:
            lo, hi = ctx.tile or (0, f)
            rows = prefix(ctx.temps["filter_rows"], (hi - lo, c * kh * kw))
            np.copyto(rows.reshape(hi - lo, kh, kw, c), filt.transpose(0, 2, 3, 1))
            has_bias = not self.p["disable_bias"]
            bias = ctx.weights.get("bias")   # a tiled layer's first tile's slots only
            if bias is not None:   # the first tile writes every channel's bias: later add
                np.copyto(y[:, hi:], bias[hi:, None, None])
                bias = bias[lo:hi]
            self._convolve(self.lowered, rows, x, y[:, lo:hi], bias, ctx.temps, "",
                           "out_rows", add=lo > 0 and has_bias)
            return
        col, y3 = ctx.temps["col"], y.reshape(n, f, -1)
        for s, m in chunks(n, self.m_col):
            im2col(x[s:s + m], self.win, col[:m])
            np.matmul(filt.reshape(f, -1), col[:m].reshape(m, c * kh * kw, -1), out=y3[s:s + m])
        if "bias" in ctx.weights:
            y3 += ctx.weights["bias"][:, None]

    def calc_gradient(self, ctx: RunContext) -> None:
        if self.lowered:
            self._rows_gradient(ctx)
        else:
            self._columns_gradient(ctx)
        if "bias" in ctx.grads:   # a tiled layer's first tile's slots only
            bias_gradient(ctx.out_grads[0], ctx.temps, ctx.grads["bias"])

    def _rows_gradient(self, ctx: RunContext) -> None:
        """The filter's gradient from the lowered rows, output row by output row."""
        n, f, c, kh, kw = self.shape
        x, dy, dw, temps = ctx.inputs[0], ctx.out_grads[0], ctx.grads["filter"], ctx.temps
        oh, low = self.win.out[0], self.lowered
        lo, hi = ctx.tile or (0, f)
        ft = hi - lo
        # the sum so far, transposed (k in the rows' order, then filters) till the end
        total = dw.reshape(-1, ft)
        total.fill(0)
        products = prefix(temps["filter_parts"], (self.group, low.k, ft))
        for s, m in chunks(n, low.m):
            for first, stop in bands(oh, low.band):
                v = low.lower(x[s:s + m], temps, "grad_", first, stop)
                add_products(v, channels_last(dy[s:s + m, lo:hi, first:stop],
                                              temps["out_grad_rows"]), products, total)
        part = prefix(temps["filter_parts"], (low.k, ft))
        np.copyto(part, total)
        np.copyto(dw, part.reshape(kh, kw, c, ft).transpose(3, 2, 0, 1))

    def _columns_gradient(self, ctx: RunContext) -> None:
        """The filter's gradient from im2col's columns, sample by sample."""
        n, f, c, kh, kw = self.shape
        x, dy, dw = ctx.inputs[0], ctx.out_grads[0], ctx.grads["filter"]
        part, dw2 = ctx.temps["filter_part"], dw.reshape(f, -1)
        col, dy3 = ctx.temps["col_grad"], dy.reshape(n, f, -1)
        dw.fill(0)
        for s, m in chunks(n, self.m_col):
            im2col(x[s:s + m], self.win, col[:m])
            col3 = col[:m].reshape(m, c * kh * kw, -1)
            for i in range(m):
                np.matmul(dy3[s + i], col3[i].T, out=part)
                dw2 += part

    def calc_derivative(self, ctx: RunContext) -> None:
        n, f, c, kh, kw = self.shape
        dy, dx, filt = ctx.out_grads[0], ctx.in_grads[0], ctx.weights["filter"]
        lo, hi = ctx.tile or (0, f)      # tiles run backward last first: the others add
        ft, add = hi - lo, hi < f
        if self.lowered_deriv:
            flipped = prefix(ctx.temps["filter_flipped"], (c, kh * kw * ft))
            np.copyto(flipped.reshape(c, kh, kw, ft), filt[:, :, ::-1, ::-1].transpose(1, 2, 3, 0))
            self._convolve(self.lowered_deriv, flipped, dy, dx, None, ctx.temps, "deriv_",
                           "in_rows", (lo, hi), add)
            return
        # columns scattered back, samples innermost so each tap adds long runs
        win, temps = self.win, ctx.temps
        (oh, ow), (_, _, h, w) = win.out, dx.shape
        taps = prefix(temps["filter_taps"], (kh, c * kw, ft))
        np.copyto(taps.reshape(kh, c, kw, ft), filt.transpose(2, 1, 3, 0))
        for s, m in chunks(n, self.m_deriv):
            dyl = prefix(temps["dy_last"], (ft, oh, ow, m))
            cols = prefix(temps["tap_cols"], (c, kw, oh, ow, m))
            dxl = prefix(temps["dx_last"], (c, h, w, m))
            np.copyto(dyl, dy[s:s + m, lo:hi].transpose(1, 2, 3, 0))
            scatter(win, taps, dyl, cols, dxl)
            if add:
                np.add(dx[s:s + m], dxl.transpose(3, 0, 1, 2), out=dx[s:s + m])
            else:
                np.copyto(dx[s:s + m], dxl.transpose(3, 0, 1, 2))
