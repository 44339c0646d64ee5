"""The feature cache's epochs under the head's own plan (runtime/head_run.py): a frozen
conv whose activations make a tight budget split the batch, and a head that fits it
whole."""

import json
import os

import numpy as np

from nntrainer_cli.pipeline import Planning
from nntrainer_cli.runtime.executor import Executor, allocate_arena
from nntrainer_cli.runtime.head_run import HeadRun, pieces
from nntrainer_cli.runtime.swap_io import open_swap
from nntrainer_cli.runtime.weights import weight_floats

from helpers import REPO, frozen_conv, run

DIGITS = os.path.join(REPO, "datasets", "digits", "train.dat")
BUDGET = "30%"   # the full model in micro-batches and tiles, its head whole


def test_the_head_plan_is_the_model_without_its_prefix_within_the_budget(tmp_path):
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS))
    planning = Planning(str(tmp_path / "m.ini"), budget=BUDGET, swap_dir=str(tmp_path))
    full = planning.prepared()
    head = planning.head_plan(full)
    assert full.plan.micro_batches > 1 and head.plan.micro_batches == 1
    assert [n.name for n in head.graph.nodes] == ["pool", "head", "cross_softmax"]
    assert head.graph.nodes[0].layer.type == "input"
    assert head.plan.arena_bytes <= head.swap.budget == full.swap.budget
    # without a budget (no swap) there is none: nothing would gain from it
    assert Planning(str(tmp_path / "m.ini")).head_plan(Planning(str(tmp_path / "m.ini"))
                                                       .prepared()) is None


def test_switching_moves_every_weight_and_state_whole_both_ways(tmp_path):
    """The two plans cut the tensors differently (tiles, parts of an update) and share
    the arena's bytes and the swap file: what the full model holds reaches the head,
    and what the head changes comes back, the prefix's weights intact."""
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS))
    planning = Planning(str(tmp_path / "m.ini"), budget="20%", swap_dir=str(tmp_path))
    full, head = planning.prepared(), None
    head = planning.head_plan(full)
    assert full.plan.tiles != head.plan.tiles or full.plan.micro_batches != 1
    arena = allocate_arena(max(full.plan, head.plan, key=lambda p: p.arena_bytes), full.swap)
    io = open_swap(full.plan, full.swap, max(full.plan.swap.file_bytes, head.plan.swap.file_bytes))
    try:
        a = Executor(full.graph, full.plan, full.optimizer, None, arena, swap_io=io)
        b = Executor(head.graph, head.plan, head.optimizer, None, arena, swap_io=io)
        switch = HeadRun(a, b, str(tmp_path))
        rng = np.random.default_rng(1)
        for name, _, tensor in pieces(a):   # every weight and state: distinct values
            with a.persistent(tensor, write=True) as v:
                v[...] = rng.standard_normal(v.shape)

        def whole(ex):
            out = {}
            for name, _, tensor in pieces(ex):
                with ex.persistent(tensor, write=False) as v:
                    out.setdefault(name, []).append(v.copy().reshape(-1))
            return {k: np.concatenate(v) for k, v in out.items()}
        before = whole(a)
        switch.to_head()
        mine = whole(b)
        assert set(mine) < set(before) and "conv:filter" not in mine
        assert all(np.array_equal(mine[k], before[k]) for k in mine)
        for name, _, tensor in pieces(b):   # the head's epochs change its own
            with b.persistent(tensor, write=True) as v:
                v += 1
        # and its steps wrote over every byte of the arena but its own tensors'
        kept = []
        for name, _, tensor in pieces(b):
            with b.persistent(tensor, write=False) as v:
                kept.append((v, v.copy()))
        arena[...] = 255
        for v, value in kept:
            v[...] = value
        switch.to_full()
        after = whole(a)
        assert all(np.array_equal(after[k], before[k] + (k in mine)) for k in before)
        switch.close()
    finally:
        io.close()


def test_training_the_cached_epochs_under_the_heads_plan(tmp_path):
    """Same weights as the full model's plan in every epoch, within the summation order
    its micro-batches change, and the same validation figures (the head evaluates the
    validation set from the cache); checkpoints written in a head's epoch (by the full
    model, and back) change no bit."""
    valid = DIGITS.replace("train.dat", "valid.dat")
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS, extra=f"[valid_set]\npath = {valid}"))
    model, out = str(tmp_path / "m.ini"), {}
    flags = {"head": [], "checkpoints": ["--checkpoint", str(tmp_path / "c.ckpt"),
                                         "--save-every", "7"],
             "full plan": ["--profile"]}   # --profile keeps one plan: the full model's
    for name, extra in flags.items():
        res = run("train", model, "-q", "--memory-budget", BUDGET, "--swap-dir", str(tmp_path),
                  "--save", str(tmp_path / f"{name}.bin"), "--report",
                  str(tmp_path / f"{name}.json"), *extra)
        assert res.exit_code == 0, res.output
        out[name] = (json.loads((tmp_path / f"{name}.json").read_text()),
                     weight_floats((tmp_path / f"{name}.bin").read_bytes()))
    report, weights = out["head"]
    cache = report["feature_cache"]
    assert cache["head_plan"]["micro_batches"] == 1 < report["memory"]["swap"]["micro_batches"]
    assert cache["head_plan"]["exchanged_bytes"] > 0   # the switches, reported
    assert "head_plan" not in out["full plan"][0]["feature_cache"]
    assert np.array_equal(weights, out["checkpoints"][1])
    other = out["full plan"][1]
    assert not np.array_equal(weights, other)   # the head's sums ran in another order
    assert np.abs(weights - other).max() <= 1e-5 * np.abs(other).max()
    assert report["memory"]["swap"]["bytes_in"] > 0
    one = out["full plan"][0]
    for a, b in zip(report["epochs"], one["epochs"]):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-5 * b["val_loss"]
    assert cache["bytes"] == one["feature_cache"]["bytes"] + 180 * (64 + 10) * 4   # valid too
    res = run("train", model, "--memory-budget", BUDGET, "--swap-dir", str(tmp_path),
              "--epochs", "2", "--no-run-dir")
    assert "epochs 2+: the rest's own plan" in res.output


def test_as_little_memory_as_can_be_keeps_the_same_bits(tmp_path):
    """NNTrainer's memory_swap (no budget: as little as can be) keeps results bit for bit;
    the head then gets no more than the full model's arena, not its own least, whose
    tiles would change sums."""
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS))
    model = str(tmp_path / "m.ini")
    for name, extra in (("plain", []), ("swap", ["--set", "model.memory_swap=true",
                                                 "--swap-dir", str(tmp_path)])):
        res = run("train", model, "-q", "--save", str(tmp_path / f"{name}.bin"), "--report",
                  str(tmp_path / f"{name}.json"), *extra)
        assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "swap.json").read_text())
    head = report["feature_cache"]["head_plan"]
    assert head["tiles"] == {} and head["micro_batches"] == 1
    assert head["resident_peak_bytes"] <= report["memory"]["swap"]["resident_peak_bytes"]
    assert (tmp_path / "swap.bin").read_bytes() == (tmp_path / "plain.bin").read_bytes()


def test_a_resumed_run_is_the_uninterrupted_one(tmp_path):
    """Resumed after epoch 1, the cache is filled first, so the resumed epochs run under
    the head's plan as the uninterrupted run's did: the same bits."""
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS))
    common = [str(tmp_path / "m.ini"), "-q", "--memory-budget", BUDGET, "--swap-dir",
              str(tmp_path), "--no-run-dir"]
    ckpt = str(tmp_path / "c.ckpt")
    assert run("train", *common, "--save", str(tmp_path / "u.bin")).exit_code == 0
    assert run("train", *common, "--epochs", "1", "--checkpoint", ckpt).exit_code == 0
    res = run("train", *common, "--resume", ckpt, "--save", str(tmp_path / "r.bin"),
              "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert "head_plan" in json.loads((tmp_path / "r.json").read_text())["feature_cache"]
    assert (tmp_path / "r.bin").read_bytes() == (tmp_path / "u.bin").read_bytes()


def test_no_head_plan_where_memory_is_measured_as_a_device_would(tmp_path):
    """Under --swap-direct (and auto) the moves between the plans would go through the
    page cache, which those runs keep out: one plan, as before."""
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS))
    planning = Planning(str(tmp_path / "m.ini"), budget="60%", swap_dir=str(tmp_path),
                        direct=True)   # (whole 4 KiB blocks: 30% cannot be met)
    assert planning.head_plan(planning.prepared()) is None
    buffered = Planning(str(tmp_path / "m.ini"), budget="60%", swap_dir=str(tmp_path))
    assert buffered.head_plan(buffered.prepared()) is not None
