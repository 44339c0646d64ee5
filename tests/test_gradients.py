"""Every registered layer and loss: analytic gradients against central differences."""

import numpy as np
import pytest

from nntrainer_cli.layers import REGISTRY
from nntrainer_cli.layers.activation import FUNCTIONS

from helpers import Harness, make_layer

# (layer type, properties, input shapes) — every registered type must appear here.
CASES = [
    ("input", {}, [(2, 1, 1, 5)]),
    ("fully_connected", {"unit": 4}, [(3, 1, 2, 5)]),
    ("fully_connected", {"unit": 3, "disable_bias": True}, [(2, 1, 1, 4)]),
    ("flatten", {}, [(2, 3, 2, 2)]),
    ("multiout", {"outputs": 3}, [(2, 1, 1, 4)]),
    ("activation", {"activation": "relu"}, [(3, 1, 1, 6)]),
    ("activation", {"activation": "sigmoid"}, [(3, 1, 1, 6)]),
    ("activation", {"activation": "tanh"}, [(3, 1, 1, 6)]),
    ("activation", {"activation": "softmax"}, [(3, 1, 2, 6)]),
    ("activation", {"activation": "leaky_relu"}, [(3, 1, 1, 6)]),
    ("activation", {"activation": "swish"}, [(3, 1, 1, 6)]),
    ("activation", {"activation": "gelu"}, [(3, 1, 1, 6)]),
    # lowered by rows; the input derivative a stride-1 convolution of dy
    ("conv2d", {"filters": 2, "kernel_size": (3, 3), "padding": "same"}, [(2, 2, 3, 17)]),
    # by rows, the derivative's columns scattered back (an output much smaller than the
    # input; stride 2; padding wider than the kernel)
    ("conv2d", {"filters": 3, "kernel_size": (3, 3)}, [(2, 2, 5, 5)]),
    ("conv2d", {"filters": 2, "kernel_size": (3, 2), "stride": (2, 1), "padding": "same",
                "dilation": (1, 2)}, [(2, 3, 6, 5)]),
    ("conv2d", {"filters": 2, "kernel_size": (2, 2), "padding": (1, 0, 2, 1)}, [(1, 1, 4, 4)]),
    # dilated rows: im2col
    ("conv2d", {"filters": 2, "kernel_size": (2, 2), "dilation": (2, 1), "padding": "same"},
     [(2, 2, 5, 4)]),
    ("pooling2d", {"pooling": "max", "pool_size": (2, 2), "stride": (2, 2)}, [(2, 2, 4, 4)]),
    ("pooling2d", {"pooling": "max", "pool_size": (3, 3), "stride": (1, 1), "padding": "same"},
     [(1, 2, 4, 5)]),
    ("pooling2d", {"pooling": "average", "pool_size": (2, 2), "stride": (1, 1), "padding": "same"},
     [(2, 2, 3, 4)]),
    ("pooling2d", {"pooling": "average", "pool_size": (2, 2), "stride": (2, 2)}, [(2, 2, 4, 5)]),
    ("pooling2d", {"pooling": "global_average"}, [(2, 3, 3, 2)]),
    ("pooling2d", {"pooling": "global_max"}, [(2, 3, 3, 2)]),
    ("pooling2d", {"pooling": "global_max"}, [(2, 2, 12, 12)]),  # 144 taps: 16-bit argmax
    ("batch_normalization", {}, [(4, 3, 2, 2)]),
    ("batch_normalization", {}, [(5, 1, 1, 4)]),
    ("dropout", {"dropout_rate": 0.0}, [(2, 1, 1, 5)]),
    ("addition", {}, [(2, 1, 2, 3), (2, 1, 2, 3), (2, 1, 2, 3)]),
    ("concat", {"axis": "3"}, [(2, 1, 2, 3), (2, 1, 2, 2)]),
    ("concat", {"axis": "1"}, [(2, 2, 2, 3), (2, 1, 2, 3)]),
    ("reshape", {"target_shape": (3, 2, 1)}, [(2, 1, 1, 6)]),
    ("output", {}, [(2, 1, 2, 3)]),
    ("split", {"axis": "3"}, [(2, 1, 2, 3)]),
    ("split", {"axis": "2", "split_number": 2}, [(2, 1, 4, 3)]),
    ("embedding", {"in_dim": 5, "out_dim": 3}, [(3, 1, 1, 4)]),
    ("lstm", {"unit": 3}, [(2, 1, 4, 5)]),
    ("lstm", {"unit": 2, "return_sequences": True, "integrate_bias": True}, [(3, 1, 3, 2)]),
    ("lstm", {"unit": 2, "return_sequences": True, "disable_bias": True}, [(1, 1, 2, 3)]),
    ("mse", {}, [(4, 1, 1, 3)]),
    ("cross_softmax", {}, [(4, 1, 1, 5)]),
    ("cross_sigmoid", {}, [(4, 1, 1, 3)]),
    ("preprocess_l2norm", {}, [(3, 1, 1, 5)]),
    ("preprocess_l2norm", {"epsilon": 0.5}, [(2, 2, 2, 2)]),
]
# Layers that pass no gradient back (the graph refuses anything trainable before
# them); tests/test_personal.py checks what they compute.
NO_GRADIENT = {"centroid_knn", "preprocess_flip", "preprocess_translate"}


def test_every_layer_has_a_case():
    assert {c[0] for c in CASES} | NO_GRADIENT == set(REGISTRY)
    assert not any(REGISTRY[c[0]].differentiable is False for c in CASES)
    assert all(REGISTRY[k].differentiable is False for k in NO_GRADIENT)
    assert {c[1]["activation"] for c in CASES if c[0] == "activation"} == set(FUNCTIONS)


def numeric_grad(h, array, eps=1e-6):
    grad = np.zeros_like(array)
    flat, g = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        up = h.objective()
        flat[i] = keep - eps
        down = h.objective()
        flat[i] = keep
        g[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("kind,props,shapes", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_gradients_match_finite_differences(kind, props, shapes):
    rng = np.random.default_rng(7)
    layer = make_layer(kind, **props)
    outputs = (props.get("split_number") or shapes[0][int(props["axis"])]) if kind == "split" else 1
    h = Harness(layer, shapes, rng, requested_outputs=outputs)
    if kind == "embedding":  # token ids, away from the integer steps of the cast
        h.ctx.inputs[0][...] = rng.integers(0, props["in_dim"], shapes[0]) + 0.5
    if kind == "activation" and "relu" in props["activation"]:
        for x in h.ctx.inputs:  # keep away from the kink at 0
            x += np.sign(x) * 0.1
    if kind == "input":  # never runs backward; check it is the identity
        h.objective()
        np.testing.assert_array_equal(h.ctx.outputs[0], h.ctx.inputs[0])
        return
    h.backward()
    # gelu's erf is a 1.5e-7 approximation: its slope differs from φ by about 1e-6
    atol = 2e-6 if props.get("activation") == "gelu" else 1e-7
    for name, w in h.ctx.weights.items():
        np.testing.assert_allclose(h.ctx.grads[name], numeric_grad(h, w), rtol=1e-5, atol=atol,
                                   err_msg=f"{kind} weight {name}")
    for i, x in enumerate(h.ctx.inputs):
        np.testing.assert_allclose(h.ctx.in_grads[i], numeric_grad(h, x), rtol=1e-5, atol=atol,
                                   err_msg=f"{kind} input {i}")


def test_loss_values_are_the_textbook_ones():
    rng = np.random.default_rng(1)
    h = Harness(make_layer("cross_softmax"), [(4, 1, 1, 5)], rng)
    h.objective()
    x = h.ctx.inputs[0].reshape(4, 5)
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    expected = -(h.ctx.label.reshape(4, 5) * np.log(p)).sum(1).mean()
    assert h.ctx.loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(h.ctx.outputs[0].reshape(4, 5), p)

    h = Harness(make_layer("mse"), [(4, 1, 1, 3)], rng)
    h.objective()
    assert h.ctx.loss == pytest.approx(((h.ctx.inputs[0] - h.ctx.label) ** 2).mean())

    h = Harness(make_layer("cross_sigmoid"), [(4, 1, 1, 3)], rng)
    h.objective()
    s = 1 / (1 + np.exp(-h.ctx.inputs[0]))
    y = h.ctx.label
    assert h.ctx.loss == pytest.approx(-(y * np.log(s) + (1 - y) * np.log(1 - s)).mean())


def _prepared(kind, props, shapes):
    """A layer after forward, with the probe set as its output derivative."""
    rng = np.random.default_rng(7)
    layer = make_layer(kind, **props)
    outputs = (props.get("split_number") or shapes[0][int(props["axis"])]) if kind == "split" else 1
    h = Harness(layer, shapes, rng, requested_outputs=outputs)
    if kind == "embedding":
        h.ctx.inputs[0][...] = rng.integers(0, props["in_dim"], shapes[0]) + 0.5
    h.objective()
    for g, p in zip(h.ctx.out_grads, h.probe):
        g[...] = p
    return h, h.fc.access or layer.access


BACKWARD_CASES = [c for c in CASES if c[0] != "input"]


@pytest.mark.parametrize("kind,props,shapes", BACKWARD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BACKWARD_CASES)])
def test_backward_touches_only_what_the_layer_declares(kind, props, shapes):
    """The planner trusts a layer's Access: an input or output it does not declare as
    read may already hold other data by then, and one it does not declare as written
    must come out intact. So: poison what is not declared read (the results must not
    change) and make read-only what is not declared written (no write may fail)."""
    for step, reads in (("calc_gradient", "gradient_reads"), ("calc_derivative", "derivative_reads")):
        clean, access = _prepared(kind, props, shapes)
        clean.layer.calc_gradient(clean.ctx)
        poisoned, _ = _prepared(kind, props, shapes)
        if step == "calc_derivative":
            clean.layer.calc_derivative(clean.ctx)
            poisoned.layer.calc_gradient(poisoned.ctx)
        declared = getattr(access, reads)
        for role, arrays in (("input", poisoned.ctx.inputs), ("output", poisoned.ctx.outputs)):
            for a in arrays:
                if role not in declared:
                    a[...] = np.nan
                writable = step == "calc_derivative" and role in access.derivative_writes
                a.setflags(write=writable)
        for a in [*poisoned.ctx.weights.values(), *poisoned.ctx.out_grads] + \
                ([poisoned.ctx.label] if poisoned.ctx.label is not None else []):
            a.setflags(write=False)
        getattr(poisoned.layer, step)(poisoned.ctx)
        results = (("grads", clean.ctx.grads, poisoned.ctx.grads) if step == "calc_gradient"
                   else ("in_grads", dict(enumerate(clean.ctx.in_grads)),
                         dict(enumerate(poisoned.ctx.in_grads))))
        for name, want in results[1].items():
            np.testing.assert_array_equal(results[2][name], want,
                                          err_msg=f"{kind} {step} reads what it does not declare")
