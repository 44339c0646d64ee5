"""Micro-batches: under a budget below one batch's activations, a step's batch runs in
equal parts whose gradients are summed before the update. It trains as the whole batch
does (within float summation order) and bit-identically with and without swap; batch
norm's statistics are the whole batch's, gathered in passes over the parts first."""

import json
import os

import numpy as np
import pytest

from nntrainer_cli.config import load_config
from nntrainer_cli.graph import build_graph
from nntrainer_cli.pipeline import Planning, prepare
from nntrainer_cli.plan import make_plan
from nntrainer_cli.plan.order import Phase

from helpers import REPO, run, weight_difference as close, write_records
from nntrainer_cli.runtime.weights import weight_floats
from test_swap import replay, replay_steps
from test_tiles import TILES, VARIANTS, train

DIGITS = os.path.join(REPO, "configs", "digits_mlp.ini")
LENET = os.path.join(REPO, "configs", "lenet_mnist.ini")
CNN = os.path.join(REPO, "configs", "digits_cnn.ini")   # batch norm


def in_parts(parts, tiles=None, share=None):
    """The frugal graph in `parts` micro-batches (with `tiles`), without swap or within
    `share` of its own plan."""
    def choose(p):
        plain = p.plain(1, tiles, parts)
        if share is None:
            return plain
        return p._chosen(p._at(1, int(plain.plan.peak_bytes * share), tiles, parts))
    return choose


@pytest.mark.parametrize("variant", ["adam", "l2norm and decay", "clipped",
                                     "frozen first layer"])
def test_micro_batches_train_as_the_whole_batch_within_summation_order(tmp_path, monkeypatch,
                                                                       variant):
    """Each part's gradient is the mean over its rows; the parts' sum divided by their
    count (a power of two: exact) is the whole batch's mean in another summation order.
    After an epoch (43 steps) the weights differ by float rounding only."""
    a, ra = train(tmp_path, monkeypatch, "whole", in_parts(1), *VARIANTS[variant])
    b, rb = train(tmp_path, monkeypatch, "parts", in_parts(4), *VARIANTS[variant])
    assert close(a, b) <= 1e-5
    assert a != b   # the summation order did change: the parts really ran apart
    assert rb["epochs"][0]["train_loss"] == pytest.approx(ra["epochs"][0]["train_loss"], rel=1e-5)
    assert rb["epochs"][0]["train_accuracy"] == ra["epochs"][0]["train_accuracy"]
    assert rb["batch_size"] == ra["batch_size"] == 32


@pytest.mark.parametrize("share", [0.3, 0.0])
def test_a_micro_batched_run_is_bit_identical_with_and_without_swap(tmp_path, monkeypatch,
                                                                    share):
    """Parts and tiles together, under a budget (0: everything idle swapped out): the
    gradient sums are swapped like optimizer state and the same arithmetic runs."""
    args = VARIANTS["l2norm and decay"]
    plain, _ = train(tmp_path, monkeypatch, "plain", in_parts(2, TILES), *args)
    swapped, report = train(tmp_path, monkeypatch, "swapped", in_parts(2, TILES, share), *args)
    assert swapped == plain
    assert report["memory"]["swap"]["bytes_in"] > 0


def test_the_gradient_sums_are_planned_beside_the_gradients():
    """One sum per gradient tensor (per tile of a tiled weight), kept between
    iterations, used where its gradient is complete: the tile's calc_gradient slot, or
    a whole weight's last one."""
    cfg = load_config(LENET)
    graph = build_graph(cfg, micro_batches=4, tiles={"f5": 2})
    assert (graph.batch_size, graph.step_batch) == (8, 32)
    plan = make_plan(graph, ("m", "v"))
    assert plan.batch_size == 32 and plan.micro_batches == 4
    assert plan.specs["input:input"].shape[0] == 8
    ts = plan.tensors
    sums = [s for s in plan.specs.values() if s.name.endswith(":sum")]
    grads = [s for s in plan.specs.values() if s.kind == "gradient" and s not in sums]
    assert len(sums) == len(grads) > 0
    for s in sums:
        grad = plan.specs[s.name.removesuffix(":sum")]
        assert s.persistent and s.shape == grad.shape
        (slot,) = s.uses
        assert plan.slots[slot].phase == Phase.CALC_GRADIENT and slot in grad.uses
        node = plan.slots[slot].node
        if ":t" not in s.name:
            assert slot == ts.node_slots[node].last(Phase.CALC_GRADIENT)
    assert make_plan(build_graph(cfg), ("m", "v")).micro_batches == 1


def test_the_planner_splits_the_batch_only_when_tiles_are_not_enough():
    """LeNet's floor without micro-batches is its conv activations (36% of its plan):
    at 50% it is not split, at 25% and 10% it is, in as few parts as fit; each schedule
    replays cleanly. So is a model with batch norm (41% without parts)."""
    assert prepare(LENET, budget="50%").plan.micro_batches == 1
    for share in ("25%", "10%"):
        p = prepare(LENET, budget=share)
        parts = p.plan.micro_batches
        assert parts > 1 and p.plan.swap.peak <= p.plan.swap.budget
        if parts > 2:   # half as many parts would not have fit
            planning = Planning(LENET, budget=share)
            assert not hasattr(planning._search(p.plan.swap.budget, parts // 2)[0], "plan")
        replay(p.plan)
        replay_steps(p.plan, eager=False)
    res = run("plan", CNN, "--memory-budget", "25%")
    assert res.exit_code == 0 and "batch 32 in 2 micro-batches of 16" in res.output
    res = run("plan", LENET, "--memory-budget", "25%")
    assert res.exit_code == 0 and "batch 32 in 2 micro-batches of 16" in res.output
    res = run("plan", LENET, "--memory-budget", "25%", "--format", "json")
    assert json.loads(res.output)["micro_batches"] == 2
    # an input normalized by its batch's range is not split (nothing gathers the range)
    res = run("plan", LENET, "--memory-budget", "25%", "--set", "input.normalization=true")
    assert res.exit_code == 2 and "37% of the plan" in res.output


def test_a_feature_cache_feeds_micro_batches(tmp_path, monkeypatch):
    """A frozen prefix's cached output is read part by part: two epochs with the cache
    give the weights of two epochs without it, within float summation order."""
    model = os.path.join(REPO, "configs", "lenet_transfer.ini")
    a, ra = train(tmp_path, monkeypatch, "cached", in_parts(4), model=model, epochs=2)
    b, _ = train(tmp_path, monkeypatch, "uncached", in_parts(4), "--no-feature-cache",
                 model=model, epochs=2)
    assert ra["feature_cache"] is not None
    assert close(a, b) <= 1e-5


KNN = os.path.join(REPO, "configs", "personal_knn.ini")     # an enrollment: no gradient
HEAD = os.path.join(REPO, "configs", "personal_head.ini")   # batch 10


def test_an_enrollment_runs_in_micro_batches_each_record_once(tmp_path, monkeypatch):
    """centroid_knn learns without gradients, so its parts enroll the records in the same
    order: every class counts the same records, and the centroids differ only by the
    feature convolution's rounding (its products have the parts' shape), so the test set
    is recognized alike. (The training accuracy differs: a record is scored against the
    centroids enrolled so far.) At batch 8 the 50 support records leave a last batch of
    2, which runs its first part only."""
    a, ra = train(tmp_path, monkeypatch, "whole", in_parts(1), "--batch-size", "8", model=KNN)
    b, rb = train(tmp_path, monkeypatch, "parts", in_parts(4), "--batch-size", "8", model=KNN)
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
NO_DROPOUT = ("--set", "drop.dropout_rate=0")


@pytest.mark.parametrize("model, extra", [(CNN, NO_DROPOUT), (RESIDUAL, ())])
def test_batch_norm_in_micro_batches_trains_as_the_whole_batch(tmp_path, monkeypatch,
                                                              model, extra):
    """Each part normalizes by the whole batch's mean and variance and takes the whole
    batch's sums in its derivative, so after an epoch in 4 parts the weights are the
    whole batch's within float rounding. (SGD, no dropout: Adam turns the rounding
    noise of a bias before batch norm, whose true gradient is 0, into whole steps, and
    dropout draws its masks per part.)"""
    args = ("--set", "optimizer.type=sgd", *extra)
    a, ra = train(tmp_path, monkeypatch, "whole", in_parts(1), *args, model=model)
    b, rb = train(tmp_path, monkeypatch, "parts", in_parts(4), *args, model=model)
    assert a != b
    assert close(a, b) <= 1e-6
    assert rb["epochs"][0]["train_loss"] == pytest.approx(ra["epochs"][0]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("share", [0.6, 0.0])
def test_batch_norm_in_micro_batches_is_bit_identical_with_and_without_swap(
        tmp_path, monkeypatch, share):
    """(The 4 parts' plan fits in 59% of itself, or everything idle swapped out: 0.)
    The gathering passes run the plan's slots with some steps left out, the swap
    schedule's transfers all the same: the gathered statistics (persistent temporaries)
    and the dropout masks come out the same with and without swap."""
    plain, _ = train(tmp_path, monkeypatch, "plain", in_parts(4), model=CNN)
    swapped, report = train(tmp_path, monkeypatch, "swapped", in_parts(4, share=share),
                            model=CNN)
    assert swapped == plain
    assert report["memory"]["swap"]["bytes_in"] > 0


def test_each_part_draws_the_same_dropout_masks_in_every_pass(tmp_path, monkeypatch):
    """Dropout after the last batch norm runs in three stages of a step (the passes
    gathering bn2's and bn1's sums, then the full step): a part's masks must be the
    same in each, or the sums would not be those of the step's own derivatives."""
    from nntrainer_cli.layers.norm import Dropout

    masks, forward = [], Dropout.forward

    def recorded(self, ctx, training):
        forward(self, ctx, training)
        if training:
            masks.append(ctx.temps["mask"].copy())

    monkeypatch.setattr(Dropout, "forward", recorded)
    train(tmp_path, monkeypatch, "parts", in_parts(2), model=CNN)
    steps = len(masks) // 6
    assert steps > 0 and len(masks) == 6 * steps
    for step in range(steps):
        (a0, a1), (b0, b1), (c0, c1) = (masks[6 * step + 2 * k: 6 * step + 2 * k + 2]
                                        for k in range(3))
        assert np.array_equal(a0, b0) and np.array_equal(a0, c0)
        assert np.array_equal(a1, b1) and np.array_equal(a1, c1)
        assert not np.array_equal(a0, a1)


def on_records(tmp_path, text: str, x, classes, n_classes: int) -> str:
    """A model file `text` (its train_set path left as {data}) reading these records."""
    data, model = tmp_path / "records.dat", tmp_path / "model.ini"
    write_records(data, x, classes, n_classes)
    model.write_text(text.format(data=data))
    return str(model)


BN_LSTM = """[Model]
Type = NeuralNetwork
Loss = cross
batch_size = 32
[Optimizer]
Type = sgd
Learning_rate = 0.1
[train_set]
type = file
path = {data}
[input]
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


def test_an_lstm_after_batch_norm_runs_its_gradient_step_in_the_passes(tmp_path, monkeypatch):
    """lstm's derivative reads the gate derivatives its gradient step made, so the pass
    gathering bn's sums runs that step too (without summing it): 2 epochs in 4 parts
    equal the whole batch within float rounding (without it: 3% off)."""
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
    """The gathering passes run every part, a short last batch's too (padded as the
    whole batch is), so its statistics are complete; the full step then enrolls only
    the parts that hold records: 50 records at batch 8 in 4 parts give the whole
    batch's centroids within rounding and the same counts."""
    x = np.random.default_rng(0).standard_normal((50, 16)).astype("<f4") * 3 + 1
    model = on_records(tmp_path, BN_KNN, x, np.arange(50) % 5, 5)
    a, _ = train(tmp_path, monkeypatch, "whole", in_parts(1), model=model)
    b, _ = train(tmp_path, monkeypatch, "parts", in_parts(4), model=model)
    assert weight_floats(a)[-5:].tolist() == weight_floats(b)[-5:].tolist() == [10] * 5
    assert close(a, b) <= 1e-6
