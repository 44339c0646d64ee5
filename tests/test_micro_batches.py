"""Micro-batches: under a budget below one batch's activations, a step's batch runs in
equal parts, each slot for every part in turn (or, where no layer gathers over the
parts, the parts one after another, each forward and back), their gradients summed
before the update. It trains as the whole batch does (within float summation order)
and bit-identically with and without swap; batch norm's statistics are the whole
batch's, gathered over the parts in its own slots, and dropout draws the whole batch's
masks."""

import json
import os

import numpy as np
import pytest

from nntrainer_cli.budget_search import moved
from nntrainer_cli.config import load_config
from nntrainer_cli.graph import build_graph
from nntrainer_cli.pipeline import Planning, prepare
from nntrainer_cli.plan import SwapRefusal, make_plan
from nntrainer_cli.plan.interleave import accumulates
from nntrainer_cli.plan.order import Phase
from nntrainer_cli.report.svg import plan_svg

from helpers import REPO, run, weight_difference as close, write_records
from nntrainer_cli.runtime.weights import weight_floats
from test_swap import replay, replay_steps
from test_tiles import TILES, VARIANTS, train

DIGITS = os.path.join(REPO, "configs", "digits_mlp.ini")
LENET = os.path.join(REPO, "configs", "lenet_mnist.ini")
CNN = os.path.join(REPO, "configs", "digits_cnn.ini")   # batch norm


def in_parts(parts, tiles=None, share=None, accumulate=False):
    """The frugal graph in `parts` micro-batches (with `tiles`; `accumulate`: one after
    another), without swap or within `share` of its own plan."""
    def choose(p):
        plain = p.plain(1, tiles, parts, accumulate=accumulate)
        assert plain.plan.accumulate == accumulate
        if share is None:
            return plain
        return p._chosen(p._at(1, int(plain.plan.peak_bytes * share), tiles, parts,
                               accumulate=accumulate))
    return choose


ORDERS = {"slot by slot": False, "one after another": True}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("variant", ["adam", "l2norm and decay", "clipped",
                                     "frozen first layer"])
def test_micro_batches_train_as_the_whole_batch_within_summation_order(tmp_path, monkeypatch,
                                                                       variant, order):
    """Each part's gradient is the mean over its rows; the parts' sum divided by their
    count (a power of two: exact) is the whole batch's mean in another summation order.
    After an epoch (43 steps) the weights differ by float rounding only, in either
    order of the parts, and the test set, evaluated part by part, scores alike."""
    a, ra = train(tmp_path, monkeypatch, "whole", in_parts(1), *VARIANTS[variant])
    b, rb = train(tmp_path, monkeypatch, "parts", in_parts(4, accumulate=ORDERS[order]),
                  *VARIANTS[variant])
    assert close(a, b) <= 1e-5
    assert a != b   # the summation order did change: the parts really ran apart
    assert rb["epochs"][0]["train_loss"] == pytest.approx(ra["epochs"][0]["train_loss"], rel=1e-5)
    assert rb["epochs"][0]["train_accuracy"] == ra["epochs"][0]["train_accuracy"]
    assert rb["batch_size"] == ra["batch_size"] == 32
    assert rb["test"]["loss"] == pytest.approx(ra["test"]["loss"], rel=1e-4)
    assert abs(rb["test"]["accuracy"] - ra["test"]["accuracy"]) <= 0.002


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("share", [0.3, 0.0])
def test_a_micro_batched_run_is_bit_identical_with_and_without_swap(tmp_path, monkeypatch,
                                                                    share, order):
    """Parts and tiles together, under a budget (0: everything idle swapped out): the
    gradient sums are swapped like optimizer state and the same arithmetic runs."""
    args = VARIANTS["l2norm and decay"]
    accumulate = ORDERS[order]
    plain, _ = train(tmp_path, monkeypatch, "plain", in_parts(2, TILES, accumulate=accumulate),
                     *args)
    swapped, report = train(tmp_path, monkeypatch, "swapped",
                            in_parts(2, TILES, share, accumulate), *args)
    assert swapped == plain
    assert report["memory"]["swap"]["bytes_in"] > 0


def test_the_slots_run_part_by_part_with_a_copy_of_each_parts_tensors():
    """Every slot runs once per part (batch norm's twice: gathering, then using), apply
    slots once after the last part. Each part has its own inputs, activations and
    temporaries, used only in its slots; weights are shared; each gradient's running
    sum lives across its calc_gradient slots only: the tile's, or a whole weight's
    last one."""
    cfg = load_config(LENET)
    graph = build_graph(cfg, micro_batches=4, tiles={"f5": 2})
    assert (graph.batch_size, graph.step_batch) == (8, 32)
    base = make_plan(build_graph(cfg, batch_size=8, tiles={"f5": 2}), ("m", "v"))
    plan = make_plan(graph, ("m", "v"))
    assert plan.batch_size == 32 and plan.micro_batches == 4
    applies = sum(s.phase == Phase.APPLY_GRADIENT for s in base.slots)
    assert len(plan.slots) == 4 * (len(base.slots) - applies) + applies
    runs = []   # (slot of one part, the parts running it in a row)
    for s in plan.slots:
        key = (s.node, s.phase, s.part, s.gather)
        if runs and runs[-1][0] == key:
            runs[-1][1].append(s.micro)
        else:
            runs.append((key, [s.micro]))
    assert [key for key, _ in runs] == [(s.node, s.phase, s.part, False) for s in base.slots]
    for (_, phase, _, _), parts in runs:
        assert parts == ([3] if phase == Phase.APPLY_GRADIENT else [0, 1, 2, 3])
    for p in range(4):
        x = plan.specs[f"input:input@{p}"]
        assert x.shape[0] == 8 and {plan.slots[u].micro for u in x.uses} == {p}
    assert "input:input" not in plan.specs
    weight = plan.specs["c1:filter"]
    assert {plan.slots[u].micro for u in weight.uses} == {0, 1, 2, 3}
    ts = plan.tensors
    sums = [s for s in plan.specs.values() if s.name.endswith(":sum")]
    grads = [s for s in plan.specs.values() if s.kind == "gradient" and s not in sums]
    assert len(sums) == len(grads) > 0
    for s in sums:
        grad = plan.specs[s.name.removesuffix(":sum")]
        assert not s.persistent and s.shape == grad.shape
        slots = [plan.slots[u] for u in sorted(s.uses)]
        assert [t.micro for t in slots] == [0, 1, 2, 3]
        assert all(t.phase == Phase.CALC_GRADIENT and t.index in grad.uses for t in slots)
        if ":t" not in s.name:
            assert slots[-1].index == ts.node_slots[slots[0].node].last(Phase.CALC_GRADIENT)
    bn = make_plan(build_graph(load_config(CNN), micro_batches=2), ("m", "v"))
    forward = [(s.micro, s.gather) for s in bn.slots
               if s.node == "bn1" and s.phase == Phase.FORWARD]
    assert forward == [(0, True), (1, True), (0, False), (1, False)]
    assert make_plan(build_graph(cfg), ("m", "v")).micro_batches == 1


def test_parts_one_after_another_run_each_forward_and_back_in_turn():
    """In the other order each part runs every slot but the applies, forward and back,
    before the next part starts, and the applies come after the last. A part's
    activations end before the next part's begin, so without swap the plan holds one
    part's; each gradient's running sum lives from the first part's calc_gradient to the
    last one's."""
    cfg = load_config(LENET)
    base = make_plan(build_graph(cfg, batch_size=8, tiles={"f5": 2}), ("m", "v"))
    graph = build_graph(cfg, micro_batches=4, tiles={"f5": 2})
    plan = make_plan(graph, ("m", "v"), accumulate=True)
    slot_by_slot = make_plan(graph, ("m", "v"))
    assert plan.accumulate and not slot_by_slot.accumulate and accumulates(graph)
    applies = [(s.node, s.phase, s.part) for s in base.slots if s.phase == Phase.APPLY_GRADIENT]
    steps = [(s.node, s.phase, s.part) for s in base.slots if s.phase != Phase.APPLY_GRADIENT]
    assert [(s.node, s.phase, s.part) for s in plan.slots] == 4 * steps + applies
    assert [s.micro for s in plan.slots] == \
        [p for p in range(4) for _ in steps] + [3] * len(applies)
    for p in range(3):
        mine = [s for s in plan.specs.values() if s.name.endswith(f"@{p}")]
        nxt = min(s.index for s in plan.slots if s.micro == p + 1)
        assert mine and all(s.last < nxt for s in mine if not s.alias_of)
    for s in (s for s in plan.specs.values() if s.name.endswith(":sum")):
        slots = [plan.slots[u] for u in sorted(s.uses)]
        assert [t.micro for t in slots] == [0, 1, 2, 3]
        assert s.first == slots[0].index and s.last == slots[-1].index
    assert plan.peak_bytes < slot_by_slot.peak_bytes
    grads = [s for s in plan.specs.values() if s.name.startswith("f6:weight:grad@")]
    assert len(grads) == 4   # each part's own, dead once added to the sum
    for s in grads[:3]:
        assert {plan.slots[u].phase for u in s.uses} == {Phase.CALC_GRADIENT}
    assert Phase.APPLY_GRADIENT in {plan.slots[u].phase for u in grads[3].uses}
    svg = plan_svg(plan, "lenet")
    assert svg.count(">backward</text>") == 4 and "each micro-batch in turn" in svg
    assert plan_svg(slot_by_slot, "lenet").count(">backward</text>") == 1
    bn = build_graph(load_config(CNN), micro_batches=2)   # batch norm gathers over parts
    assert not accumulates(bn) and not make_plan(bn, ("m", "v"), accumulate=True).accumulate


def test_the_budget_keeps_the_order_of_parts_that_moves_fewer_bytes():
    """The search finds the parts slot by slot, then plans the same graph with the
    parts one after another and keeps whichever moves fewer bytes: the transfer model
    at 25% moves about half as many one after another (and took 0.78 ms a step, not
    0.84); LeNet at 10% would move more, and batch norm's model cannot: both keep them
    slot by slot. Both schedules replay."""
    model = os.path.join(REPO, "configs", "lenet_transfer.ini")
    found = prepare(model, budget="25%")
    chosen = found.plan
    assert chosen.accumulate and chosen.micro_batches == 2
    other = Planning(model, budget="25%")._at(chosen.frugal, chosen.swap.budget, chosen.tiles,
                                              chosen.micro_batches, chosen.derivative_first)
    assert not other.plan.accumulate
    assert moved(found) < 0.7 * moved(other)
    for plan in (chosen, other.plan):
        replay(plan)
        replay_steps(plan, eager=True)
    res = run("plan", model, "--memory-budget", "25%")
    assert res.exit_code == 0 and "micro-batches of 16, one after another" in res.output
    lenet = prepare(LENET, budget="10%")   # one after another moves more: kept slot by slot
    q = lenet.plan
    assert q.micro_batches > 1 and not q.accumulate
    more = Planning(LENET, budget="10%")._at(q.frugal, q.swap.budget, q.tiles,
                                             q.micro_batches, q.derivative_first, True)
    assert more.plan.accumulate and moved(more) > moved(lenet)
    cnn = prepare(CNN, budget="25%").plan   # batch norm gathers over the parts
    assert cnn.micro_batches > 1 and not cnn.accumulate


def test_conv_buffers_cut_to_a_quarter_give_way_to_more_parts():
    """One-row or quarter conv pieces cost more time than twice the parts (measured:
    LeNet at 10% 15.5 ms a step in 4 parts of one-row pieces, 7.5 in 8 parts), halved
    ones less (LeNet at 25%: 4.4 ms in 2 parts, 5.2 in 4), and tiles that fit with
    smaller buffers are tried with whole ones: the personalization fine-tuning at 25%
    (2 parts of quarter pieces before) runs 5 parts, tiled, with whole buffers; each
    schedule replays cleanly."""
    finetune = os.path.join(REPO, "configs", "personal_finetune.ini")
    for model, share, most in ((LENET, "10%", 1), (LENET, "25%", 2), (finetune, "25%", 1)):
        p = prepare(model, budget=share).plan
        assert p.micro_batches > 1 and p.frugal <= most, (model, share, p.frugal)
        replay(p)
        replay_steps(p, eager=False)
    assert p.tiles and p.micro_batches == 5


def test_the_planner_splits_the_batch_only_when_tiles_are_not_enough():
    """LeNet's floor without micro-batches is its conv activations (36% of its plan):
    at 50% it is not split, at 25% and 10% it is, in as few parts as fit without smaller
    conv buffers or tiles (those cost more time than parts); each schedule replays
    cleanly. digits_cnn (batch norm, 41% without parts) fits its 25% in 2 parts only
    with one-row conv pieces, in 4 as written: it takes 4."""
    assert prepare(LENET, budget="50%").plan.micro_batches == 1
    for share in ("25%", "10%"):
        p = prepare(LENET, budget=share)
        parts = p.plan.micro_batches
        assert parts > 1 and p.plan.swap.peak <= p.plan.swap.budget
        if parts > 2:   # half as many parts would not have fit as written
            half = Planning(LENET, budget=share)._search(p.plan.swap.budget, parts // 2)[0]
            assert isinstance(half, SwapRefusal) or half.plan.frugal > 1 or half.plan.tiles
        replay(p.plan)
        replay_steps(p.plan, eager=False)
    cnn = prepare(CNN, budget="25%")
    assert cnn.plan.micro_batches == 4 and cnn.plan.frugal <= 1 and not cnn.plan.tiles
    two = Planning(CNN, budget="25%")._search(cnn.plan.swap.budget, 2)[0]
    assert two.plan.frugal > 1
    res = run("plan", CNN, "--memory-budget", "25%")
    assert res.exit_code == 0 and "batch 32 in 4 micro-batches of 8" in res.output
    res = run("plan", LENET, "--memory-budget", "25%")
    assert res.exit_code == 0 and "batch 32 in 2 micro-batches of 16" in res.output
    res = run("plan", LENET, "--memory-budget", "25%", "--format", "json")
    assert json.loads(res.output)["micro_batches"] == 2
    # an input normalized by its batch's range is not split (nothing gathers the range)
    res = run("plan", LENET, "--memory-budget", "25%", "--set", "input.normalization=true")
    assert res.exit_code == 2 and "37% of the plan" in res.output


@pytest.mark.parametrize("order", ORDERS)
def test_a_feature_cache_feeds_micro_batches(tmp_path, monkeypatch, order):
    """A frozen prefix's cached output is read part by part: two epochs with the cache
    give the weights of two epochs without it, within float summation order."""
    model = os.path.join(REPO, "configs", "lenet_transfer.ini")
    parts = in_parts(4, accumulate=ORDERS[order])
    a, ra = train(tmp_path, monkeypatch, "cached", parts, model=model, epochs=2)
    b, _ = train(tmp_path, monkeypatch, "uncached", parts, "--no-feature-cache",
                 model=model, epochs=2)
    assert ra["feature_cache"] is not None
    assert close(a, b) <= 1e-5


KNN = os.path.join(REPO, "configs", "personal_knn.ini")     # an enrollment: no gradient
HEAD = os.path.join(REPO, "configs", "personal_head.ini")   # batch 10


@pytest.mark.parametrize("order", ORDERS)
def test_an_enrollment_runs_in_micro_batches_each_record_once(tmp_path, monkeypatch, order):
    """centroid_knn learns without gradients, so its parts enroll the records in the same
    order: every class counts the same records, and the centroids differ only by the
    feature convolution's rounding (its products have the parts' shape), so the test set
    is recognized alike. (The training accuracy differs: a record is scored against the
    centroids enrolled so far.) At batch 8 the 50 support records leave a last batch of
    2, which runs its first part only."""
    a, ra = train(tmp_path, monkeypatch, "whole", in_parts(1), "--batch-size", "8", model=KNN)
    b, rb = train(tmp_path, monkeypatch, "parts", in_parts(4, accumulate=ORDERS[order]),
                  "--batch-size", "8", model=KNN)
    counts = [weight_floats(w)[-5:] for w in (a, b)]
    assert counts[0].tolist() == counts[1].tolist() == [10] * 5
    assert close(a, b) <= 1e-6
    assert rb["test"]["accuracy"] == ra["test"]["accuracy"]
    assert rb["test"]["loss"] == pytest.approx(ra["test"]["loss"], rel=1e-5)


def test_a_batch_splits_into_parts_that_are_not_a_power_of_two(tmp_path, monkeypatch):
    """Batch 10 splits into 2, 5 or 10 parts: at a quarter of its plan the personal head
    takes 5 of 2 records (2 parts do not fit), its schedule replays, and it trains as
    the whole batch does within float rounding (the sum divided by 5 rounds once)."""
    p = prepare(HEAD, budget="25%")
    assert p.plan.micro_batches == 5 and p.plan.swap.peak <= p.plan.swap.budget
    assert not hasattr(Planning(HEAD, budget="25%")._search(p.plan.swap.budget, 2)[0], "plan")
    replay(p.plan)
    a, _ = train(tmp_path, monkeypatch, "whole", in_parts(1), model=HEAD, epochs=3)
    b, _ = train(tmp_path, monkeypatch, "parts", in_parts(5), model=HEAD, epochs=3)
    assert close(a, b) <= 1e-5


RESIDUAL = os.path.join(REPO, "configs", "digits_residual.ini")


@pytest.mark.parametrize("model, extra", [(CNN, ()), (RESIDUAL, ())])
def test_batch_norm_in_micro_batches_trains_as_the_whole_batch(tmp_path, monkeypatch,
                                                              model, extra):
    """Each part normalizes by the whole batch's mean and variance and takes the whole
    batch's sums in its derivative, and dropout draws the whole batch's masks, so after
    an epoch in 4 parts the weights are the whole batch's within float rounding. (SGD:
    Adam turns the rounding noise of a bias before batch norm, whose true gradient is
    0, into whole steps.)"""
    args = ("--set", "optimizer.type=sgd", *extra)
    a, ra = train(tmp_path, monkeypatch, "whole", in_parts(1), *args, model=model)
    b, rb = train(tmp_path, monkeypatch, "parts", in_parts(4), *args, model=model)
    assert a != b
    assert close(a, b) <= 1e-6
    assert rb["epochs"][0]["train_loss"] == pytest.approx(ra["epochs"][0]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("share", [0.6, 0.0])
def test_batch_norm_in_micro_batches_is_bit_identical_with_and_without_swap(
        tmp_path, monkeypatch, share):
    """(The 4 parts' plan within 60% of itself, or everything idle swapped out: 0.)
    The statistics gathered over the parts (persistent temporaries) and every part's
    activations go through the swap file and come back the same."""
    plain, _ = train(tmp_path, monkeypatch, "plain", in_parts(4), model=CNN)
    swapped, report = train(tmp_path, monkeypatch, "swapped", in_parts(4, share=share),
                            model=CNN)
    assert swapped == plain
    assert report["memory"]["swap"]["bytes_in"] > 0


def sgd_model(batch: int) -> str:
    """A model file's head: SGD, cross-entropy, `batch`, training records at {data}."""
    return f"""[Model]
Type = NeuralNetwork
Loss = cross
batch_size = {batch}
[Optimizer]
Type = sgd
Learning_rate = 0.1
[train_set]
type = file
path = {{data}}
"""


DROPOUT_MLP = sgd_model(8) + """[input]
Type = input
Input_Shape = 1:1:6
[fc]
Type = fully_connected
Unit = 8
[drop]
Type = dropout
dropout_rate = 0.5
[out]
Type = fully_connected
Unit = 3
Activation = softmax
"""


@pytest.mark.parametrize("order", ["slot by slot (batch norm)", "one after another"])
def test_the_parts_draw_the_whole_batchs_dropout_masks(tmp_path, monkeypatch, order):
    """Slot by slot, dropout draws part 0's mask, then part 1's, from one stream: the
    masks of the whole batch, step after step. One after another the same holds while
    only one layer draws; with two, the parts stay slot by slot."""
    from nntrainer_cli.layers.norm import Dropout

    masks, forward = [], Dropout.forward

    def recorded(self, ctx, training):
        forward(self, ctx, training)
        if training:
            masks.append(ctx.temps["mask"].copy())

    monkeypatch.setattr(Dropout, "forward", recorded)
    model, accumulate = CNN, False
    if order == "one after another":
        rng = np.random.default_rng(3)
        model = on_records(tmp_path, DROPOUT_MLP, rng.standard_normal((64, 6)),
                           rng.integers(0, 3, 64), 3)
        accumulate = True
        two = DROPOUT_MLP.replace("[out]", "[drop2]\nType = dropout\ndropout_rate = 0.5\n[out]")
        (tmp_path / "two").mkdir()
        assert not accumulates(build_graph(load_config(on_records(
            tmp_path / "two", two, rng.standard_normal((8, 6)), rng.integers(0, 3, 8), 3)),
            micro_batches=2))
    train(tmp_path, monkeypatch, "whole", in_parts(1), model=model)
    whole, masks[:] = list(masks), []
    train(tmp_path, monkeypatch, "parts", in_parts(2, accumulate=accumulate), model=model)
    assert len(whole) >= 8 and len(masks) == 2 * len(whole)
    for step, mask in enumerate(whole):
        assert np.array_equal(mask, np.concatenate(masks[2 * step:2 * step + 2]))


def on_records(tmp_path, text: str, x, classes, n_classes: int) -> str:
    """A model file `text` (its train_set path left as {data}) reading these records."""
    data, model = tmp_path / "records.dat", tmp_path / "model.ini"
    write_records(data, x, classes, n_classes)
    model.write_text(text.format(data=data))
    return str(model)


BN_LSTM = sgd_model(32) + """[input]
Type = input
Input_Shape = 1:4:8
[fc0]
Type = fully_connected
Unit = 8
[bn]
Type = batch_normalization
[lstm]
Type = lstm
unit = 8
return_sequences = true
[flat]
Type = flatten
[fc]
Type = fully_connected
Unit = 3
Activation = softmax
"""


def test_an_lstm_after_batch_norm_trains_in_micro_batches(tmp_path, monkeypatch):
    """lstm's derivative reads the gate derivatives its gradient step made (a part's
    own temporary, across two slots) and batch norm gathers before it: 2 epochs in 4
    parts equal the whole batch within float rounding."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 32)).astype("<f4")
    model = on_records(tmp_path, BN_LSTM, x, rng.integers(0, 3, 256), 3)
    a, _ = train(tmp_path, monkeypatch, "whole", in_parts(1), model=model, epochs=2)
    b, _ = train(tmp_path, monkeypatch, "parts", in_parts(4), model=model, epochs=2)
    assert a != b
    assert close(a, b) <= 1e-6


BN_KNN = """[Model]
batch_size = 8
[train_set]
type = file
path = {data}
[input]
Type = input
Input_Shape = 1:1:16
[bn]
Type = batch_normalization
trainable = false
[l2norm]
Type = preprocess_l2norm
[knn]
Type = centroid_knn
num_class = 5
"""


def test_an_enrollment_with_batch_norm_gathers_over_every_part(tmp_path, monkeypatch):
    """Batch norm gathers over every part, a short last batch's too (padded as the
    whole batch is), so its statistics are complete; only the parts that hold records
    enroll: 50 records at batch 8 in 4 parts give the whole batch's centroids within
    rounding and the same counts."""
    x = np.random.default_rng(0).standard_normal((50, 16)).astype("<f4") * 3 + 1
    model = on_records(tmp_path, BN_KNN, x, np.arange(50) % 5, 5)
    a, _ = train(tmp_path, monkeypatch, "whole", in_parts(1), model=model)
    b, _ = train(tmp_path, monkeypatch, "parts", in_parts(4), model=model)
    assert weight_floats(a)[-5:].tolist() == weight_floats(b)[-5:].tolist() == [10] * 5
    assert close(a, b) <= 1e-6
