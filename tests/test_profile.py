"""`train --profile`: every slot timed, shares that add up, and the products' FLOPs."""

from __future__ import annotations

import json

import pytest

from helpers import DIGITS, run
from nntrainer_cli.layers.base import Phase
from nntrainer_cli.pipeline import prepare
from nntrainer_cli.runtime.profile import slot_flops


def test_profile_times_every_slot(tmp_path):
    out = tmp_path / "r.json"
    r = run("train", DIGITS, "--epochs", "2", "--profile", "--no-tracemalloc", "--report",
            str(out))
    assert r.exit_code == 0, r.output
    prof = json.loads(out.read_text())["profile"]
    plan = prepare(DIGITS).plan
    assert [s["slot"] for s in prof["slots"]] == [s.index for s in plan.slots]
    assert prof["steps"] == 2 * (1257 // 32)
    inside = sum(s["share"] for s in prof["slots"])
    assert 0.3 < inside <= 1 and abs(inside + prof["outside_kernels_share"] - 1) < 1e-9
    products = {(s["layer"], s["phase"]): s["gflops"] for s in prof["slots"]}
    assert products[("fc1", "forward")] > 0 and products[("fc1", "calc_gradient")] > 0
    assert products[("fc1", "apply_gradient")] is None
    assert prof["gemm_gflops"] > 0
    assert "(outside kernels)" in r.output and "GFLOP/s" in r.output


@pytest.mark.parametrize("layer, phase, flops", [
    ("fc1", Phase.FORWARD, 2 * 32 * 64 * 256),
    ("fc2", Phase.CALC_DERIVATIVE, 2 * 32 * 256 * 128),
    ("fc1", Phase.APPLY_GRADIENT, None)])
def test_product_flops(layer, phase, flops):
    node = prepare(DIGITS).graph.by_name[layer]
    assert slot_flops(node, phase) == flops


def test_conv_flops():
    from helpers import REPO
    graph = prepare(f"{REPO}/configs/digits_cnn.ini").graph
    conv = next(n for n in graph.nodes if n.type == "conv2d")
    b, c, h, w = conv.ctx.output_shapes[0]
    cout, cin, kh, kw = conv.ctx.weights[0].shape
    assert slot_flops(conv, Phase.FORWARD) == 2 * b * h * w * cout * cin * kh * kw


def test_profile_names_tiles_and_parts(tmp_path):
    """Under a budget that tiles the layers, each slot's row says which tile it ran,
    as `plan` does: no two rows read alike."""
    out = tmp_path / "r.json"
    r = run("train", DIGITS, "--epochs", "1", "--profile", "--no-tracemalloc", "--report",
            str(out), "--memory-budget", "10%", "--swap-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    prof = json.loads(out.read_text())["profile"]
    rows = [(s["layer"], s["label"]) for s in prof["slots"]]
    assert len(set(rows)) == len(rows)
    tiled = [s for s in prof["slots"] if s["tile"] is not None]
    assert tiled and all(f"tile {s['tile'] + 1}/" in s["label"] for s in tiled)
    assert any(f"{s['label']} " in r.output for s in tiled)
