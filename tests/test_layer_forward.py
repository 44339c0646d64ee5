"""Forward results against direct, loop-based definitions (the gradient checks only
prove backward agrees with forward)."""

import numpy as np
import pytest

from helpers import Harness, make_layer


def direct_conv(x, w, b, stride, pad, dil):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    t, bo, l, r = pad
    xp = np.zeros((n, c, h + t + bo, wd + l + r))
    xp[:, :, t:t + h, l:l + wd] = x
    oh = (h + t + bo - (kh - 1) * dil[0] - 1) // stride[0] + 1
    ow = (wd + l + r - (kw - 1) * dil[1] - 1) // stride[1] + 1
    y = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride[0]:i * stride[0] + (kh - 1) * dil[0] + 1:dil[0],
                       j * stride[1]:j * stride[1] + (kw - 1) * dil[1] + 1:dil[1]]
            y[:, :, i, j] = np.einsum("nckl,fckl->nf", patch, w) + b
    return y


@pytest.mark.parametrize("props,shape,pad", [
    ({"filters": 4, "kernel_size": (3, 3)}, (2, 3, 7, 6), (0, 0, 0, 0)),
    ({"filters": 2, "kernel_size": (5, 5), "padding": "same"}, (1, 2, 8, 8), (2, 2, 2, 2)),
    ({"filters": 2, "kernel_size": (3, 3), "stride": (2, 2), "padding": "same"}, (1, 1, 6, 6),
     (0, 1, 0, 1)),
    ({"filters": 3, "kernel_size": (2, 3), "stride": (2, 1), "dilation": (2, 2),
      "padding": (1, 1, 2, 2)}, (2, 2, 7, 7), (1, 1, 2, 2)),
    ({"filters": 2, "kernel_size": (3, 3), "stride": (1, 2), "dilation": (1, 2),
      "padding": (1, 0, 0, 3)}, (2, 2, 5, 36), (1, 0, 0, 3)),
    # no horizontal padding: every kernel column lowered in one strided copy
    ({"filters": 2, "kernel_size": (3, 2), "stride": (1, 2), "dilation": (1, 3),
      "padding": (2, 1, 0, 0)}, (2, 3, 6, 11), (2, 1, 0, 0)),
])
def test_conv2d_matches_direct_definition(props, shape, pad):
    h = Harness(make_layer("conv2d", **props), [shape], np.random.default_rng(0))
    h.layer.forward(h.ctx, True)
    expected = direct_conv(h.ctx.inputs[0], h.ctx.weights["filter"], h.ctx.weights["bias"],
                           props.get("stride", (1, 1)), pad, props.get("dilation", (1, 1)))
    np.testing.assert_allclose(h.ctx.outputs[0], expected, rtol=1e-10, atol=1e-12)


def test_same_padding_is_tensorflow_style():
    h = Harness(make_layer("conv2d", filters=1, kernel_size=(3, 3), stride=(2, 2),
                           padding="same"), [(1, 1, 6, 6)], np.random.default_rng(0))
    assert h.fc.output_shapes == [(1, 1, 3, 3)]
    assert h.layer.win.pad == (0, 1, 0, 1)   # total 1: top/left get floor(1/2) = 0


def test_pooling_matches_direct_definition():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6))
    for kind, reduce in (("max", np.max), ("average", np.mean)):
        h = Harness(make_layer("pooling2d", pooling=kind, pool_size=(2, 2), stride=(2, 2)),
                    [x.shape], rng)
        h.ctx.inputs[0][...] = x
        h.layer.forward(h.ctx, True)
        expected = reduce(x.reshape(2, 3, 3, 2, 3, 2), axis=(3, 5))
        np.testing.assert_allclose(h.ctx.outputs[0], expected)
    h = Harness(make_layer("pooling2d", pooling="global_average"), [x.shape], rng)
    h.ctx.inputs[0][...] = x
    h.layer.forward(h.ctx, True)
    np.testing.assert_allclose(h.ctx.outputs[0][:, :, 0, 0], x.mean(axis=(2, 3)))


def test_average_pooling_divides_by_the_non_padding_count():
    h = Harness(make_layer("pooling2d", pooling="average", pool_size=(3, 3), stride=(1, 1),
                           padding=(1, 1, 1, 1)), [(1, 1, 3, 3)], np.random.default_rng(0))
    h.ctx.inputs[0][...] = 1.0
    h.layer.forward(h.ctx, True)
    np.testing.assert_allclose(h.ctx.outputs[0], 1.0)


def test_batch_norm_training_and_inference():
    rng = np.random.default_rng(5)
    h = Harness(make_layer("batch_normalization", momentum=0.9), [(8, 3, 2, 2)], rng)
    x = h.ctx.inputs[0]
    h.ctx.weights.update(moving_mean=np.zeros(3), moving_variance=np.ones(3),
                         gamma=np.ones(3), beta=np.zeros(3))
    h.layer.forward(h.ctx, True)
    y = h.ctx.outputs[0]
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    var = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), var / (var + 0.001), rtol=1e-10)
    np.testing.assert_allclose(h.ctx.weights["moving_mean"], 0.1 * x.mean(axis=(0, 2, 3)))
    h.layer.forward(h.ctx, False)   # inference uses the moving statistics
    mm, mv = h.ctx.weights["moving_mean"], h.ctx.weights["moving_variance"]
    expected = (x - mm[:, None, None]) / np.sqrt(mv[:, None, None] + 0.001)
    np.testing.assert_allclose(h.ctx.outputs[0], expected, rtol=1e-10)


def test_dropout_scales_kept_units_and_is_off_at_inference():
    rng = np.random.default_rng(0)
    h = Harness(make_layer("dropout", dropout_rate=0.25), [(64, 1, 1, 100)], rng)
    h.ctx.temps["mask"] = np.zeros((64, 1, 1, 100), np.float32)
    h.ctx.rng = rng
    x = h.ctx.inputs[0]
    x[...] = 1.0
    h.layer.forward(h.ctx, True)
    y = h.ctx.outputs[0]
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / 0.75, rtol=1e-6)
    assert abs((y == 0).mean() - 0.25) < 0.03
    dy = np.ones_like(y)
    h.ctx.out_grads[0][...] = dy
    h.layer.calc_derivative(h.ctx)
    np.testing.assert_allclose(h.ctx.in_grads[0], y)   # the same mask, same scale
    h.layer.forward(h.ctx, False)
    np.testing.assert_array_equal(h.ctx.outputs[0], x)


def test_gelu_and_swish_match_their_definitions():
    import math

    from nntrainer_cli.layers.activation import gelu, swish

    x = np.linspace(-6, 6, 241)
    y, scratch = np.empty_like(x), np.empty_like(x)
    gelu(x, y, scratch)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(y, exact, rtol=0, atol=1e-6)
    swish(x, y)
    np.testing.assert_allclose(y, x / (1 + np.exp(-x)), rtol=1e-12)


def test_lstm_matches_the_textbook_cell():
    rng = np.random.default_rng(3)
    h = Harness(make_layer("lstm", unit=3, return_sequences=True), [(2, 1, 4, 5)], rng)
    h.layer.forward(h.ctx, True)
    w = h.ctx.weights
    x = h.ctx.inputs[0][:, 0]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    hid, cell = np.zeros((2, 3)), np.zeros((2, 3))
    for t in range(4):
        z = x[:, t] @ w["weight_ih"] + hid @ w["weight_hh"] + w["bias_ih"] + w["bias_hh"]
        i, f, g, o = sig(z[:, :3]), sig(z[:, 3:6]), np.tanh(z[:, 6:9]), sig(z[:, 9:])
        cell = f * cell + i * g
        hid = o * np.tanh(cell)
        np.testing.assert_allclose(h.ctx.outputs[0][:, 0, t], hid, rtol=1e-12)


def test_embedding_looks_up_rows():
    rng = np.random.default_rng(4)
    h = Harness(make_layer("embedding", in_dim=6, out_dim=2), [(2, 1, 1, 3)], rng)
    ids = np.array([[0, 5, 2], [1, 1, 4]])
    h.ctx.inputs[0][...] = ids.reshape(2, 1, 1, 3)
    h.layer.forward(h.ctx, True)
    np.testing.assert_array_equal(h.ctx.outputs[0][:, 0], h.ctx.weights["embedding"][ids])


@pytest.mark.parametrize("kind,props,shape", [
    ("activation", {"activation": "relu"}, (3, 2, 4, 5)),
    ("conv2d", {"filters": 8, "kernel_size": (3, 3), "padding": "same"}, (5, 2, 6, 6)),
    ("conv2d", {"filters": 16, "kernel_size": (5, 5)}, (9, 6, 12, 12)),       # several chunks
    ("conv2d", {"filters": 3, "kernel_size": (3, 3), "stride": (2, 2), "padding": "same"},
     (7, 2, 9, 9)),                                              # scattered derivative
    ("conv2d", {"filters": 3, "kernel_size": (2, 3), "dilation": (2, 1)}, (6, 2, 7, 7)),
])
def test_frugal_layers_give_identical_results(kind, props, shape):
    """Frugal mode (tight budgets) changes buffers, never values."""
    from nntrainer_cli.layers import FinalizeContext

    out = []
    for frugal in (False, True):
        rng = np.random.default_rng(9)
        layer = make_layer(kind, **props)
        h = Harness(layer, [shape], rng)
        if frugal:  # finalize again asking for the smallest work buffers
            fc = FinalizeContext([shape], frugal=4)
            layer.finalize(fc)
            h.ctx.temps = {t.name: np.zeros(t.shape, t.dtype if t.dtype != np.float32
                                            else np.float64) for t in fc.temps}
        h.objective()
        y = h.ctx.outputs[0].copy()   # backward may use the output as scratch
        h.backward()
        out.append([y, h.ctx.in_grads[0].copy()] + [g.copy() for g in h.ctx.grads.values()])
    for a, b in zip(*out):
        assert np.array_equal(a, b)


def test_convolution_paths_agree(monkeypatch):
    """Lowering by rows and im2col (which large filters on small images keep) compute
    the same convolution, gradients and input derivative."""
    from nntrainer_cli.layers import conv

    out = []
    for cache in (conv.FILTER_IN_CACHE, 0):
        monkeypatch.setattr(conv, "FILTER_IN_CACHE", cache)
        h = Harness(make_layer("conv2d", filters=4, kernel_size=(3, 3), padding="same"),
                    [(2, 3, 6, 6)], np.random.default_rng(3))
        assert (h.layer.lowered is None) == (h.layer.lowered_deriv is None) == (cache == 0)
        h.objective()
        y = h.ctx.outputs[0].copy()
        h.backward()
        out.append([y, h.ctx.in_grads[0].copy()] + [g.copy() for g in h.ctx.grads.values()])
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("props,shape", [
    ({"filters": 16, "kernel_size": (3, 3), "padding": "same"}, (32, 16, 8, 8)),
    ({"filters": 6, "kernel_size": (5, 5), "padding": "same"}, (64, 1, 28, 28)),
    ({"filters": 4, "kernel_size": (3, 3), "stride": (2, 2), "padding": "same"}, (16, 3, 9, 9)),
    ({"filters": 16, "kernel_size": (5, 5)}, (64, 6, 14, 14)),   # derivative scattered
])
def test_frugal_convolutions_are_bit_identical_in_float32(props, shape):
    """float32 matrix products round differently as their shapes change, so frugal
    plans split a convolution's work where every product keeps its shape: the arena's
    float32, not only the float64 of the harness, gives the same bits at every level."""
    from nntrainer_cli.layers import FinalizeContext, RunContext

    def run(frugal):
        layer = make_layer("conv2d", **props)
        fc = FinalizeContext([shape], frugal=frugal)
        layer.finalize(fc)
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(np.float32)
        w = {r.name: rng.standard_normal(r.shape).astype(np.float32) for r in fc.weights}
        y = np.zeros(fc.output_shapes[0], np.float32)
        ctx = RunContext([x], [y], w, {k: np.zeros_like(v) for k, v in w.items()},
                         [np.zeros_like(x)], [rng.standard_normal(y.shape).astype(np.float32)],
                         {t.name: np.zeros(t.shape, t.dtype) for t in fc.temps})
        layer.forward(ctx, True)
        layer.calc_gradient(ctx)
        layer.calc_derivative(ctx)
        return [y, ctx.in_grads[0], *ctx.grads.values()]

    plain = run(0)
    for frugal in (2, 8, 64):
        assert all(np.array_equal(a, b) for a, b in zip(plain, run(frugal)))
