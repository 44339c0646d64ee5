"""Tiled layers: a fully connected weight cut into row tiles, each with slots of its
own, trains as the whole layer does (within float summation order), bit-identically
with and without swap, and the planner tiles only what a budget needs."""

import json
import os
import struct

import numpy as np
import pytest

from nntrainer_cli.layers import FinalizeContext, RunContext
from nntrainer_cli.budget_search import MAX_TILES, moved
from nntrainer_cli.errors import ConfigError
from nntrainer_cli.pipeline import Planning, prepare
from nntrainer_cli.plan import SwapRefusal
from nntrainer_cli.plan.order import row_parts

from helpers import REPO, make_layer, run, write_records
from nntrainer_cli.runtime.weights import weight_floats
from test_swap import HELD_OUT, replay, replay_steps

DIGITS = os.path.join(REPO, "configs", "digits_mlp.ini")
# uneven tiles: fc1's 64 rows in 3, fc2's 256 in 5, the output layer's 128 in 2
TILES = {"fc1": 3, "fc2": 5, "output": 2}
VARIANTS = {   # --set overrides: what each step of a tiled layer must get right
    "adam": [],
    "l2norm and decay": ["--set", "fc2.weight_regularizer=l2norm",
                         "--set", "fc2.weight_regularizer_constant=0.01",
                         "--set", "fc1.weight_decay=0.001"],
    "clipped": ["--set", "fc2.clip_grad_by_norm=0.5", "--set", "output.clip_grad_by_norm=0.5"],
    "frozen first layer": ["--set", "fc1.trainable=false"],
    # a bias of 64 KiB, which untiled layers apply in row parts: a tiled one applies it
    # whole, after the last tile computed its gradient
    "large bias": ["--set", "fc2.unit=16384"],
}


def assert_tiles_match_differences(layer, ctxs, y, probe, pairs):
    """Runs a tiled layer as the plan does (forward tile by tile, then each tile's
    gradient and derivative, last tile first); each (array, its gradient) in `pairs`
    is the central differences of <y, probe> over the array's elements."""
    def objective():
        for c in ctxs:
            layer.forward(c, True)
        return float(np.vdot(y, probe))

    objective()
    for c in reversed(ctxs):
        layer.calc_gradient(c)
        layer.calc_derivative(c)
    for array, grad in pairs:
        numeric = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            keep = array[i]
            array[i] = keep + 1e-6
            up = objective()
            array[i] = keep - 1e-6
            numeric[i] = (up - objective()) / 2e-6
            array[i] = keep
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_a_tiled_fully_connected_layer_matches_finite_differences():
    """The layer run tile by tile as the plan runs it (forward over the tiles in order,
    backward in reverse, the bias handed to the first tile's slots only), on float64
    arrays: its weight, bias and input gradients are the central differences of its
    objective."""
    rng = np.random.default_rng(0)
    layer = make_layer("fully_connected", unit=5)
    fc = FinalizeContext([(4, 7)], tiles=3)
    layer.finalize(fc)
    w, b, x = rng.standard_normal((7, 5)), rng.standard_normal(5), rng.standard_normal((4, 7))
    probe, y, part = rng.standard_normal((4, 5)), np.zeros((4, 5)), np.zeros((4, 5))
    dw, db, dx = np.zeros_like(w), np.zeros_like(b), np.zeros_like(x)
    ctxs = [RunContext([x], [y], {"weight": w[lo:hi]} | ({"bias": b} if lo == 0 else {}),
                       {"weight": dw[lo:hi]} | ({"bias": db} if lo == 0 else {}), [dx],
                       [probe], {"part": part}, tile=(lo, hi))
            for lo, hi in row_parts(7, 3)]
    assert [t.name for t in fc.temps] == ["part"] and fc.weights[0].tiled
    assert_tiles_match_differences(layer, ctxs, y, probe, ((w, dw), (b, db), (x, dx)))


@pytest.mark.parametrize("props,shape", [
    ({"filters": 5, "kernel_size": (3, 3), "padding": "same"}, (2, 3, 5, 6)),  # derivative by rows
    ({"filters": 5, "kernel_size": (3, 3)}, (2, 2, 5, 5)),                   # scattered
    ({"filters": 4, "kernel_size": (3, 2), "stride": (2, 1), "disable_bias": True},
     (2, 3, 6, 5)),
])
def test_a_tiled_convolution_matches_finite_differences(props, shape):
    """A conv2d cut into tiles of filters (5 in 3: uneven), run as the plan runs it:
    forward tile by tile, backward last tile first; the bias is resident in the first
    tile's slots only, and every buffer a slot writes starts as NaN."""
    rng = np.random.default_rng(0)
    layer = make_layer("conv2d", **props)
    fc = FinalizeContext([shape], tiles=3)
    layer.finalize(fc)
    f = props["filters"]
    w = {wt.name: rng.standard_normal(wt.shape) * 0.5 for wt in fc.weights}
    g = {k: np.zeros_like(v) for k, v in w.items()}
    x, probe = rng.standard_normal(shape), rng.standard_normal(fc.output_shapes[0])
    y, dx = np.full(fc.output_shapes[0], np.nan), np.full(shape, np.nan)
    temps = {t.name: np.full(t.shape, np.nan) if t.dtype == np.float32 else
             np.zeros(t.shape, t.dtype) for t in fc.temps}
    ctxs = [RunContext([x], [y], {"filter": w["filter"][lo:hi],
                                  **({"bias": w["bias"]} if "bias" in w and lo == 0 else {})},
                       {"filter": g["filter"][lo:hi],
                        **({"bias": g["bias"]} if "bias" in g and lo == 0 else {})},
                       [dx], [probe], temps, tile=(lo, hi))
            for lo, hi in row_parts(f, 3)]
    assert fc.weights[0].tiled and len(ctxs) == 3
    assert_tiles_match_differences(layer, ctxs, y, probe,
                                   [(w[k], g[k]) for k in w] + [(x, dx)])


@pytest.mark.parametrize("props", [{"unit": 3},
                                   {"unit": 2, "return_sequences": True, "integrate_bias": True}])
def test_a_tiled_lstm_matches_finite_differences(props):
    """An lstm whose weight_ih is cut into tiles of input features (5 in 3: uneven),
    run as the plan runs it: forward tile by tile (the last runs the recurrence),
    backward last tile first (it runs backpropagation through time); weight_hh and the
    biases are resident in the last tile's slots only, every float buffer starts as
    NaN."""
    rng = np.random.default_rng(0)
    layer = make_layer("lstm", **props)
    shape = (2, 1, 4, 5)
    fc = FinalizeContext([shape], tiles=3)
    layer.finalize(fc)
    w = {wt.name: rng.standard_normal(wt.shape) * 0.5 for wt in fc.weights}
    g = {k: np.zeros_like(v) for k, v in w.items()}
    x, probe = rng.standard_normal(shape), rng.standard_normal(fc.output_shapes[0])
    y, dx = np.full(fc.output_shapes[0], np.nan), np.full(shape, np.nan)
    temps = {t.name: np.full(t.shape, np.nan) for t in fc.temps}
    def only(arrays, lo, hi):   # the last tile's slots hold the untiled weights
        return {k: v for k, v in arrays.items() if hi == 5} | {"weight_ih": arrays["weight_ih"][lo:hi]}

    ctxs = [RunContext([x], [y], only(w, lo, hi), only(g, lo, hi), [dx], [probe], temps,
                       tile=(lo, hi))
            for lo, hi in row_parts(5, 3)]
    assert [wt.name for wt in fc.weights if wt.tiled] == ["weight_ih"]
    assert_tiles_match_differences(layer, ctxs, y, probe,
                                   [(w[k], g[k]) for k in w] + [(x, dx)])


def test_a_tiled_embedding_matches_finite_differences():
    """An embedding table cut into row tiles (9 ids in 3, one tile never looked up,
    and a last pass shorter than the others), run as the plan runs it: each tile's
    slot writes the positions whose ids it holds and adds their derivative into its
    gradient; every float buffer starts as NaN. The table's gradient is the central differences, and
    the output is the whole table's lookup."""
    rng = np.random.default_rng(0)
    layer = make_layer("embedding", in_dim=9, out_dim=3)
    shape = (3, 1, 1, 11)   # 33 positions: passes of 5, the last of 3
    fc = FinalizeContext([shape], tiles=3)
    layer.finalize(fc)
    table, x = rng.standard_normal((9, 3)), np.full(shape, 0.0)
    x[...] = rng.choice([0, 1, 2, 6, 7, 8], shape) + 0.5   # none of ids 3-5
    probe, y = rng.standard_normal(fc.output_shapes[0]), np.full(fc.output_shapes[0], np.nan)
    grad = np.full_like(table, np.nan)
    temps = {t.name: np.full(t.shape, np.nan) if t.dtype == np.float32 else
             np.zeros(t.shape, t.dtype) for t in fc.temps}
    ctxs = [RunContext([x], [y], {"embedding": table[lo:hi]}, {"embedding": grad[lo:hi]},
                       [np.zeros(shape)], [probe], temps, tile=(lo, hi))
            for lo, hi in row_parts(9, 3)]
    assert fc.weights[0].tiled and temps["rows"].shape == (5, 3)
    assert_tiles_match_differences(layer, ctxs, y, probe, [(table, grad)])
    for c in ctxs:
        layer.forward(c, True)
    np.testing.assert_array_equal(y[:, 0], table[x[:, 0, 0].astype(int)])
    assert not grad[3:6].any()


def test_a_tiled_embedding_trains_to_the_same_bits(tmp_path, monkeypatch):
    """A vocabulary of 2,000 ids whose table, its gradient and Adam's state are 98% of
    the plan: untiled, no budget under 62% of the plan fits (the table, its gradient
    and a part of the state meet in one slot). Tiled, it trains at 25% and
    10%; each id's gradient adds its positions in the order the whole layer does, so
    the weights are bit-identical to the untiled run's, with or without swap."""
    model = embedding_model(tmp_path)
    whole_run, _ = train(tmp_path, monkeypatch, "whole", whole, model=model)
    tiled_run, _ = train(tmp_path, monkeypatch, "tiled", lambda p: p.plain(1, {"embed": 3}),
                         model=model)
    assert tiled_run == whole_run
    monkeypatch.undo()
    budgets = {}
    for share in ("25%", "10%"):
        p = prepare(model, budget=share)
        budgets[share] = p.plan.swap.budget
        assert p.plan.tiles.get("embed", 1) > 1 and p.plan.swap.peak <= p.plan.swap.budget
        replay(p.plan)
        res = run("train", model, "-q", "--no-shuffle", "--epochs", "1", "--no-run-dir",
                  "--memory-budget", share, "--swap-dir", str(tmp_path),
                  "--save", str(tmp_path / "budget.bin"))
        assert res.exit_code == 0, res.output
        assert (tmp_path / "budget.bin").read_bytes() == whole_run
    refusal = Planning(model, budget="25%")._at(1, budgets["25%"])
    assert not hasattr(refusal, "plan")   # untiled, the table does not fit


def test_tiles_stop_at_max_tiles(tmp_path):
    """A 2,000-row table could be cut 2,000 ways, each doubling planning about four
    times slower; the planner stops at MAX_TILES, and a budget that needs more is
    refused, naming the smallest one that works at that many tiles."""
    model = embedding_model(tmp_path)
    planning = Planning(model, budget="1%")
    refusal = planning._at(1, 1, {"embed": MAX_TILES})
    more = planning._more_tiles(refusal, {"embed": MAX_TILES})
    assert more is None or more["embed"] == MAX_TILES
    res = run("plan", model, "--memory-budget", "1%")
    assert res.exit_code == 2 and "smallest budget that works" in res.output


def embedding_model(tmp_path) -> str:
    """Records of 6 token ids of 2,000, classed by their first id (mod 4)."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 2000, (96, 6)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[ids[:, 0].astype(int) % 4]
    np.concatenate([ids, labels], axis=1).tofile(tmp_path / "tokens.dat")
    model = tmp_path / "tokens.ini"
    model.write_text("[Model]\nloss = cross\nbatch_size = 16\n[Optimizer]\ntype = adam\n"
                     "learning_rate = 0.01\n[train_set]\ntype = file\npath = tokens.dat\n"
                     "[input]\ntype = input\ninput_shape = 1:1:6\n"
                     "[embed]\ntype = embedding\nin_dim = 2000\nout_dim = 16\n"
                     "[flatten]\ntype = flatten\n"
                     "[output]\ntype = fully_connected\nunit = 4\nactivation = softmax\n")
    return str(model)


def train(tmp_path, monkeypatch, name, choose, *args, model=DIGITS, epochs=1):
    """`epochs` of a model (the digits MLP) on the plan `choose(planning)` gives; its
    weights file and report."""
    monkeypatch.setattr(Planning, "_prepared", choose)
    save, report = tmp_path / f"{name}.bin", tmp_path / f"{name}.json"
    res = run("train", model, "-q", "--no-shuffle", "--epochs", str(epochs), "--no-run-dir",
              "--save", str(save), "--report", str(report), "--swap-dir", str(tmp_path), *args)
    assert res.exit_code == 0, res.output
    return save.read_bytes(), json.loads(report.read_text())


def whole(p):
    return p.plain(1)


def tiled(p):
    return p.plain(1, TILES)


def tiled_within(share, derivative_first=False):
    def choose(p):
        budget = int(p.plain(1, TILES).plan.peak_bytes * share)
        return p._chosen(p._at(1, budget, TILES, derivative_first=derivative_first))
    return choose


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiled_layers_train_as_whole_ones_within_summation_order(tmp_path, monkeypatch,
                                                                  variant):
    """Forward sums the tiles' products in another order than one product does; the
    rest (each tile's gradient, derivative columns and update) is the same arithmetic.
    The weights after an epoch differ by float rounding only."""
    a, ra = train(tmp_path, monkeypatch, "whole", whole, *VARIANTS[variant])
    b, rb = train(tmp_path, monkeypatch, "tiled", tiled, *VARIANTS[variant])
    assert len(a) == len(b)
    wa, wb = weight_floats(a), weight_floats(b)
    assert np.abs(wa - wb).max() <= 1e-5 * np.abs(wa).max()
    assert rb["epochs"][0]["train_loss"] == pytest.approx(ra["epochs"][0]["train_loss"], rel=1e-5)
    if variant == "frozen first layer":   # a frozen tile is never written
        assert wa[:64 * 256 + 256].tobytes() == wb[:64 * 256 + 256].tobytes()


@pytest.mark.parametrize("share", [None, 0.5])
def test_untiled_weights_are_handed_to_one_tile_only(share):
    """A tiled layer's bias lives in its first tile's slots (lstm: the last tile's):
    only those use it, and a slot's context holds only what it uses, without swap
    (where every tensor is resident in every slot) or with it, so a layer tests whether
    it holds its bias, not which tile it runs."""
    from nntrainer_cli.optim.schedulers import make_schedule
    from nntrainer_cli.runtime.executor import Executor

    planning = Planning(DIGITS)
    p = tiled_within(share)(planning) if share else tiled(planning)
    ex = Executor(p.graph, p.plan, p.optimizer, make_schedule(p.cfg))
    holders, gradients = set(), set()
    for slot, ctx in zip(p.plan.slots, ex.slot_ctx):
        if slot.node in TILES and slot.phase.name != "APPLY_GRADIENT":
            if "bias" in ctx.weights or "bias" in ctx.grads:
                holders.add((slot.node, slot.part))
            if slot.phase.name == "CALC_GRADIENT" and "bias" in ctx.grads:
                gradients.add(slot.node)
    assert holders == {(n, 0) for n in TILES} and gradients == set(TILES)


def test_a_tiled_lstm_counts_its_l2_norm_once(tmp_path, monkeypatch):
    """The l2norm loss term is read at a weight's forward slots: an lstm's weight_hh
    (untiled, in the last tile's slots only) is counted there once, as untiled, so the
    loss of a tiled run equals the untiled run's within float rounding (it was
    counted in every tile's slot, then not found outside the last)."""
    rng = np.random.default_rng(1)
    write_records(tmp_path / "train.dat", rng.standard_normal((128, 1024)),
                  rng.integers(0, 3, 128), 3)
    model = tmp_path / "lstm.ini"
    model.write_text("[Model]\nloss = cross\nbatch_size = 64\n[train_set]\ntype = file\n"
                     "path = train.dat\n" + HELD_OUT["one_dominant_lstm"][2].replace(
                         "unit = 64\n", "unit = 64\nweight_regularizer = l2norm\n"
                         "weight_regularizer_constant = 0.5\n", 1))
    _, whole_run = train(tmp_path, monkeypatch, "whole", whole, model=str(model))
    _, tiled_run = train(tmp_path, monkeypatch, "tiled", lambda p: p.plain(1, {"seq": 4}),
                         model=str(model))
    loss = lambda r: r["epochs"][0]["train_loss"]  # noqa: E731
    assert loss(tiled_run) == pytest.approx(loss(whole_run), rel=1e-5)


@pytest.mark.parametrize("share", [0.5, 0.0])
def test_a_tiled_run_is_bit_identical_with_and_without_swap(tmp_path, monkeypatch, share):
    """Under a budget (0: everything idle swapped out) the tiles' slots run the same
    arithmetic in the same order."""
    plain, _ = train(tmp_path, monkeypatch, "plain", tiled, *VARIANTS["l2norm and decay"])
    swapped, report = train(tmp_path, monkeypatch, "swapped", tiled_within(share),
                            *VARIANTS["l2norm and decay"])
    assert swapped == plain
    m = report["memory"]
    assert m["swap"]["bytes_in"] > 0
    if share:   # at the floor (a 117 KiB arena) the trainer's own ~20 KiB (the epoch's
        # record order, its results) weigh more than 15%
        assert m["measured_peak_bytes"] <= 1.15 * m["swap"]["budget_bytes"]


@pytest.mark.parametrize("variant,share", [("l2norm and decay", 0.5), ("clipped", 0.7)])
def test_either_tile_order_trains_to_the_same_bits(tmp_path, monkeypatch, variant, share):
    """Each tile's derivative before its gradient runs the same arithmetic as the other
    order (the derivative reads the tile's weight before its update either way): the
    same bits without swap and under a budget."""
    def derivative_first(share):   # clipped gradients live to the clip slot: 70%
        def choose(p):
            found = tiled_within(share, True)(p) if share else \
                p.plain(1, TILES, derivative_first=True)
            assert found.plan.derivative_first
            return found
        return choose

    plain, _ = train(tmp_path, monkeypatch, "plain", tiled, *VARIANTS[variant])
    for share in (0, share):
        other, report = train(tmp_path, monkeypatch, f"first{share}", derivative_first(share),
                              *VARIANTS[variant])
        assert other == plain
        assert bool(share) == bool(report["memory"]["swap"])


def test_the_search_keeps_the_tile_order_that_moves_fewer_bytes(tmp_path):
    """With the derivative first a tile's gradient goes straight to its update; the
    784-1024-1024-10 MLP at 25% then moves fewer bytes with the same tiles, and the plan
    says so. An lstm's derivative reads what its gradient made: its gradient stays
    first in either order. Every schedule replays cleanly."""
    mlp = os.path.join(REPO, "benchmarks", "models", "mlp_784.ini")
    planning = Planning(mlp, budget="25%")
    found = planning.prepared()
    chosen = found.plan
    assert chosen.tiles and chosen.derivative_first
    other = planning._at(chosen.frugal, chosen.swap.budget, chosen.tiles)
    assert not other.plan.derivative_first and moved(found) < moved(other)
    replay(chosen)
    replay_steps(chosen, eager=False)
    assert [s.phase.name for s in chosen.slots if s.node == "fc2" and s.part == 0] == \
        ["FORWARD", "CALC_DERIVATIVE", "CALC_GRADIENT", "APPLY_GRADIENT"]
    res = run("plan", mlp, "--memory-budget", "25%")
    assert "(each tile's derivative before its gradient)" in res.output
    model = tmp_path / "lstm.ini"
    model.write_text("[Model]\nloss = cross\nbatch_size = 64\n" +   # pre, then a trainable lstm
                     HELD_OUT["frozen_lstm"][2].replace("trainable = false", ""))
    plan = Planning(str(model)).plain(1, {"seq": 4}, derivative_first=True).plan
    assert [s.phase.name for s in plan.slots if s.node == "seq" and s.part == 3] == \
        ["FORWARD", "CALC_GRADIENT", "CALC_DERIVATIVE", "APPLY_GRADIENT"]
    assert not plan.derivative_first   # nothing was reordered: the plan does not say so


def test_a_refused_budget_names_the_floor_of_either_tile_order():
    """Below every plan the search finds (gradient first), the candidate with the lowest
    floor is planned again derivative first: for the 784 MLP that floor is lower, so the
    refusal names it, a budget at it plans in that order (it was refused: the floor
    named was 589,824 bytes, 11% more), and 64 bytes under it is refused."""
    mlp = os.path.join(REPO, "benchmarks", "models", "mlp_784.ini")
    with pytest.raises(ConfigError) as e:
        prepare(mlp, budget="100")
    floor = int(str(e.value).split("works is ")[1].split(" ")[0].replace(",", ""))
    planning = Planning(mlp, budget=str(floor))
    gradient_first = planning._fitting(floor)
    assert isinstance(gradient_first, SwapRefusal) and gradient_first.floor > floor
    found = planning.prepared().plan
    assert found.derivative_first and found.swap.peak <= floor
    replay(found)
    replay_steps(found, eager=False)
    with pytest.raises(ConfigError, match=f"works is {floor:,} bytes"):
        prepare(mlp, budget=str(floor - 64))


def test_the_planner_tiles_only_what_the_budget_needs():
    """70% fits without tiles; 25% tiles the layers whose weights crowd the busiest
    slot, as coarsely as fits; every tiled schedule replays cleanly."""
    assert prepare(DIGITS, budget="70%").plan.tiles == {}
    p = prepare(DIGITS, budget="25%")
    tiles = p.plan.tiles
    assert tiles and set(tiles) <= {"fc1", "fc2"}
    assert p.plan.swap.peak <= p.plan.swap.budget
    planning, budget = Planning(DIGITS, budget="25%"), p.plan.swap.budget
    for k in set(tiles.values()):   # no group of layers could have had fewer tiles
        coarser = {n: c // 2 if c == k else c for n, c in tiles.items()}
        trial = planning._at(1, budget, {n: c for n, c in coarser.items() if c > 1})
        assert not hasattr(trial, "plan"), f"{coarser} would have fit"
    replay(p.plan)
    for eager in (True, False):
        replay_steps(p.plan, eager=eager)


def test_tiling_goes_on_past_a_doubling_that_does_not_lower_the_floor(tmp_path):
    """Two tiles add the layer's `part` temporary, which can cancel what halving the
    weight saved (here in a forward-only plan: input, output and part weigh as much as
    the weight); four and eight tiles lower the floor again."""
    model = tmp_path / "forward.ini"
    model.write_text("[Model]\nbatch_size = 128\n[input]\ntype = input\n"
                     "input_shape = 1:1:256\n[fc]\ntype = fully_connected\nunit = 256\n")
    p = prepare(str(model), budget="440000", require_loss=False)
    assert p.plan.tiles["fc"] >= 4 and p.plan.swap.peak <= 440000


def test_plan_shows_the_tiles():
    res = run("plan", DIGITS, "--memory-budget", "25%")
    assert res.exit_code == 0, res.output
    assert "row tiles" in res.output and "forward tile 1/" in res.output
    res = run("plan", DIGITS, "--memory-budget", "25%", "--format", "json")
    tiles = json.loads(res.output)["tiles"]
    assert tiles and all(k > 1 for k in tiles.values())
    res = run("plan", DIGITS, "--memory-budget", "25%", "--format", "svg")
    assert "row tiles" in res.output


def evaluate(tmp_path, weights):
    report = tmp_path / "eval.json"
    res = run("eval", DIGITS, "--weights", str(tmp_path / weights),
              "--report", str(report))
    assert res.exit_code == 0, res.output
    r = json.loads(report.read_text())
    return r["loss"], r["accuracy"]


def test_tiled_weights_are_saved_and_read_whole(tmp_path, monkeypatch):
    """A tiled run's weights files hold each weight whole, as an untiled run's do: the
    .bin's tiles back to back, the safetensors file under the weight's own name and
    shape; both load into a tiled plan (an evaluation) and into an untiled one alike."""
    binary, _ = train(tmp_path, monkeypatch, "t", tiled_within(0.5))
    res = run("train", DIGITS, "-q", "--no-shuffle", "--epochs", "1", "--no-run-dir",
              "--save", str(tmp_path / "t.safetensors"), "--swap-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    data = (tmp_path / "t.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    assert header["fc2:weight"]["shape"] == [256, 128]
    assert binary.startswith(data[8 + length:])   # then Adam's state, in the .bin
    monkeypatch.setattr(Planning, "_prepared", tiled)   # eval takes no budget
    tiled_eval = [evaluate(tmp_path, w) for w in ("t.bin", "t.safetensors")]
    monkeypatch.undo()
    whole_eval = evaluate(tmp_path, "t.bin")
    assert tiled_eval[0] == tiled_eval[1]
    assert tiled_eval[0][1] == whole_eval[1]
    assert tiled_eval[0][0] == pytest.approx(whole_eval[0], rel=1e-5)


def test_a_checkpoint_resumes_under_another_tiling(tmp_path):
    """A checkpoint holds weights and optimizer state whole, so a run stopped under one
    budget (here none, then 15%: every layer tiled) resumes under another, to weights
    within float rounding of the uninterrupted run."""
    ckpt, common = tmp_path / "ck", ["-q", "--no-shuffle", "--no-run-dir",
                                     "--swap-dir", str(tmp_path)]
    res = run("train", DIGITS, *common, "--epochs", "1", "--checkpoint", str(ckpt))
    assert res.exit_code == 0, res.output
    res = run("train", DIGITS, *common, "--epochs", "2", "--resume", str(ckpt),
              "--memory-budget", "15%", "--save", str(tmp_path / "resumed.bin"))
    assert res.exit_code == 0, res.output
    res = run("train", DIGITS, *common, "--epochs", "2", "--save", str(tmp_path / "whole.bin"))
    assert res.exit_code == 0, res.output
    a, b = (np.fromfile(tmp_path / f, "<f4")[:-2] for f in ("whole.bin", "resumed.bin"))
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
