"""Training under a memory budget: the schedule is checked by an independent replay of
where each tensor's value is, and training gives bit-identical weights."""

import json
import os

import numpy as np
import pytest

from nntrainer_cli.pipeline import Budget, Planning, parse_size, prepare
from nntrainer_cli.plan.planners import Item, check_valid
from nntrainer_cli.errors import ConfigError

from helpers import REPO, frozen_conv, run, weight_difference, write_records

CONFIGS = os.path.join(REPO, "configs")


def replay(plan):
    """Walk the slots and follow each tensor's value: every use finds it resident, every
    load reads a value the file really holds, and weights end each iteration in the file
    or in the arena, not lost."""
    sw, ts = plan.swap, plan.tensors
    uses = {s.name: set(s.uses) for s in ts.roots()}
    for s in ts.specs.values():
        if s.alias_of:
            uses[s.alias_of] |= s.uses
    by = {}
    for r in sw.residencies:
        by.setdefault(r.tensor, []).append(r)
    for name, stays in by.items():
        stays.sort(key=lambda r: r.first)
        spec = ts.specs[name]
        for u in uses[name]:
            assert any(r.first <= u <= r.last for r in stays), f"{name} not resident at {u}"
        for a, b in zip(stays, stays[1:]):
            assert a.last < b.first, f"{name} resident twice at once"
        in_file = spec.persistent   # weights and optimizer state start in the file
        for r in stays:
            if r.loaded:
                assert in_file, f"{name} read back at {r.first} but never written"
                assert r.first <= r.use_first
            if r.stored:
                in_file = True
            elif spec.persistent and r.loaded and len(stays) > 1:
                # a stay that changes a trainable weight must write it back
                grad = f"{name}:grad" in ts.specs
                if grad and max(uses[name]) in range(r.first, r.last + 1):
                    raise AssertionError(f"{name} updated at {r.last} and never written")
    moved = {r.tensor for r in sw.residencies if r.loaded or r.stored}
    assert moved == set(sw.file_offsets)   # each swapped tensor has its own file bytes
    spans = sorted((at, at + by[name][0].bytes) for name, at in sw.file_offsets.items())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert not spans or spans[-1][1] <= sw.file_bytes
    items = [Item(r.bytes, r.first, r.last) for r in sw.residencies]
    assert check_valid(items, [r.offset for r in sw.residencies], sw.peak) == []
    assert sw.peak <= sw.budget


def replay_steps(plan, eager: bool, iterations: int = 2):
    """Run the plan's swap steps (the transfers each slot issues and the one it waits
    for) on a model of the arena and the file that tags every byte with the tensor it
    holds. The I/O thread may do a transfer any time between its issue and the wait that
    covers it: `eager` does each at once, otherwise as late as allowed. Every use must
    find its tensor's bytes, every load a value the file holds, every store the bytes of
    the tensor whose file place it writes."""
    sw, ts = plan.swap, plan.tensors
    unit = 64
    ids = {name: k + 1 for k, name in enumerate(ts.specs)}
    uses = {s.name: set(s.uses) for s in ts.roots()}
    for s in ts.specs.values():
        if s.alias_of:
            uses[s.alias_of] |= s.uses
    at_file = {at: name for name, at in sw.file_offsets.items()}
    in_file = {name for name in sw.file_offsets if ts.specs[name].persistent}
    arena = np.zeros(-(-sw.peak // unit), np.int64)
    for r in sw.residencies:   # between iterations: resident weights are where they stay
        if ts.specs[r.tensor].persistent and not r.loaded and r.first == 0:
            arena[r.offset // unit:(r.offset + r.bytes) // unit] = ids[r.tensor]
    slots = range(len(plan.slots))
    expected = {(op, t): sorted((r.offset, r.bytes) for r in sw.residencies
                                if (r.loaded and r.first == t if op == "in" else
                                    r.stored and r.last == t))
                for op in ("in", "out") for t in slots}

    def do(transfer):
        pos = transfer.file_offset
        for off, n in transfer.stays:
            name = at_file[pos]   # the stays lie back to back in the file
            region = slice(off // unit, (off + n) // unit)
            if transfer.op == "in":
                assert name in in_file, f"{name} read from the file before it was written"
                arena[region] = ids[name]
            else:
                assert (arena[region] == ids[name]).all(), \
                    f"store of {name} (transfer {transfer.number}) finds other bytes"
                in_file.add(name)
            pos += n

    for _ in range(iterations):
        pending, issued = [], 0
        for t in slots:
            step = sw.steps[t]
            for op, transfers in (("in", step.loads), ("out", step.stores)):
                got = sorted(stay for x in transfers for stay in x.stays)
                assert got == expected[(op, t)], f"slot {t}: the {op} transfers"
            for x in step.loads:
                issued += 1
                assert x.number == issued
                do(x) if eager else pending.append(x)
            assert step.wait <= issued
            while pending and pending[0].number <= step.wait:
                do(pending.pop(0))
            for r in sw.residencies:   # the slot computes what it writes first
                if not r.loaded and r.first == t and not ts.specs[r.tensor].persistent:
                    arena[r.offset // unit:(r.offset + r.bytes) // unit] = ids[r.tensor]
            for name, used in uses.items():
                if t in used and ts.specs[name].bytes:
                    r = next(r for r in sw.of(name) if r.first <= t <= r.last)
                    held = arena[r.offset // unit:(r.offset + r.bytes) // unit]
                    assert (held == ids[name]).all(), f"slot {t} finds other bytes for {name}"
            for x in step.stores:
                issued += 1
                assert x.number == issued
                do(x) if eager else pending.append(x)
        while pending:   # drained between iterations
            do(pending.pop(0))


@pytest.mark.parametrize("config", ["digits_mlp", "digits_cnn", "digits_residual",
                                    "lenet_mnist", "lenet_transfer"])
@pytest.mark.parametrize("share", ["90%", "70%", "min"])
def test_schedules_replay_cleanly(config, share):
    path = os.path.join(CONFIGS, config + ".ini")
    try:
        p = prepare(path, budget=share if share != "min" else None,
                    overrides=["model.memory_swap=true"] if share == "min" else ())
    except ConfigError as e:
        assert "smallest budget that works" in str(e)
        return
    assert p.plan.swap is not None
    replay(p.plan)
    replay_steps(p.plan, eager=True)
    replay_steps(p.plan, eager=False)
    plain = prepare(path).plan.peak_bytes   # the share is of the plan without a budget
    if share == "90%":
        assert p.plan.swap.budget == int(0.9 * plain)


def train_weights(model, tmp_path, name, *args):
    save = tmp_path / f"{name}.bin"
    report = tmp_path / f"{name}.json"
    res = run("train", model, "-q", "--no-shuffle", "--epochs", "1", "--save", str(save),
              "--report", str(report), *args)
    assert res.exit_code == 0, res.output
    return save.read_bytes(), json.loads(report.read_text())


def test_frozen_weights_are_read_back_but_never_written(tmp_path):
    """A frozen weight's copy in the swap file stays good: it is loaded before its uses
    but never stored (a frozen convolution near the smallest budget), while the
    trainable weights and their optimizer state are."""
    model = tmp_path / "m.ini"
    model.write_text(frozen_conv(os.path.join(REPO, "datasets", "digits", "train.dat")))
    p = prepare(str(model), budget="45500")
    specs, stays = p.plan.specs, p.plan.swap.residencies
    frozen = {r.tensor for r in stays if r.loaded and specs[r.tensor].constant}
    assert frozen == {"conv:filter"} and not any(r.stored for r in stays if r.tensor in frozen)
    assert any(r.stored for r in stays if not specs[r.tensor].constant
               and specs[r.tensor].persistent)
    replay(p.plan)
    replay_steps(p.plan, eager=False)


@pytest.mark.parametrize("config,budget", [("digits_mlp", "70%"), ("digits_mlp", "45%"),
                                           ("digits_cnn", "45%"), ("digits_residual", "50%")])
def test_budget_gives_bit_identical_weights(tmp_path, config, budget):
    model = os.path.join(CONFIGS, config + ".ini")
    swap_dir = tmp_path / "swap"
    swap_dir.mkdir()
    plain, _ = train_weights(model, tmp_path, "plain")
    swapped, report = train_weights(model, tmp_path, "swapped", "--memory-budget", budget,
                                    "--swap-dir", str(swap_dir))
    assert swapped == plain
    m = report["memory"]
    sw = m["swap"]
    assert sw["resident_peak_bytes"] <= sw["budget_bytes"] < m["planned_peak_bytes"]
    assert m["measured_peak_bytes"] <= 1.15 * sw["budget_bytes"]
    assert sw["bytes_in"] > 0 and sw["bytes_out"] > 0
    assert list(swap_dir.iterdir()) == []          # the swap file is gone


@pytest.mark.parametrize("path", ["inline", "background", "mixed"])
def test_every_io_path_gives_bit_identical_weights(tmp_path, monkeypatch, path):
    """Loads the page cache holds are done by the compute thread itself, others by the
    background thread; a refused inline load hands over to the thread mid-iteration."""
    from nntrainer_cli.runtime import swap_io

    if swap_io.NOWAIT is None and path != "background":
        pytest.skip("this platform has no RWF_NOWAIT reads")
    model = os.path.join(CONFIGS, "digits_mlp.ini")
    plain, _ = train_weights(model, tmp_path, "plain")
    if path == "background":
        monkeypatch.setattr(swap_io, "NOWAIT", None)
    if path == "mixed":
        real, calls = swap_io.SwapFile.move, {"n": 0}

        def every_third_load_misses(self, job, flags=0):
            calls["n"] += job.op == "in"
            if flags and calls["n"] % 3 == 0:
                raise BlockingIOError(11, "not in the page cache")
            real(self, job, flags)

        monkeypatch.setattr(swap_io.SwapFile, "move", every_third_load_misses)
    swapped, report = train_weights(model, tmp_path, "swapped", "--memory-budget", "45%",
                                    "--swap-dir", str(tmp_path))
    assert swapped == plain
    sw = report["memory"]["swap"]
    assert (sw["loads_inline"] > 0) == (path != "background")
    assert (sw["loads_background"] > 0) == (path != "inline")


def test_budget_too_small_names_the_smallest_that_works(tmp_path, tiny_model):
    model = tiny_model
    res = run("train", model, "--memory-budget", "100")
    assert res.exit_code == 2
    line = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and "smallest budget that works is" in line[0]
    smallest = line[0].split("works is ", 1)[1].split(" ")[0].replace(",", "")
    assert run("train", model, "-q", "--memory-budget", smallest).exit_code == 0
    assert run("plan", model, "--memory-budget", str(int(smallest) - 64)).exit_code == 2


def test_budgets_near_the_smallest_are_decided_in_a_few_rounds(monkeypatch):
    """Just under the smallest budget is refused at once (it used to search byte by byte
    for minutes); just over it plans with one relief path per plan tried, replayed
    target by target."""
    import nntrainer_cli.pipeline as pipeline
    import nntrainer_cli.plan.swap as swap
    model = os.path.join(CONFIGS, "digits_mlp.ini")
    with pytest.raises(ConfigError) as e:
        prepare(model, budget="100")
    smallest = int(str(e.value).split("works is ")[1].split(" ")[0].replace(",", ""))
    calls, relieve = [0], swap._relieve

    def counted(*args, **kw):
        calls[0] += 1
        assert calls[0] < 200, "the budget search does not converge"
        return relieve(*args, **kw)

    plans, with_swap = [0], pipeline.with_swap

    def counted_plans(*args, **kw):
        plans[0] += 1
        return with_swap(*args, **kw)

    monkeypatch.setattr(swap, "_relieve", counted)
    monkeypatch.setattr(pipeline, "with_swap", counted_plans)
    for budget in (smallest - 1, smallest - 82):
        calls[0] = plans[0] = 0
        with pytest.raises(ConfigError, match=f"works is {smallest:,} bytes"):
            prepare(model, budget=str(budget))
        # one floor per plan tried (plain, frugal, tiled until tiles stop helping, a
        # conv level; then each halving of the batch with tiles), no search beyond it
        assert calls[0] == plans[0] <= 40
    for budget in (smallest, smallest + 1, smallest + 500, smallest * 2):
        calls[0] = plans[0] = 0
        p = prepare(model, budget=str(budget))
        replay(p.plan)
        replay_steps(p.plan, eager=False)
        assert p.plan.swap.peak <= budget and calls[0] == plans[0] <= 40


def test_nntrainer_swap_keys_swap_as_much_as_possible(tmp_path, tiny_model):
    model = tiny_model
    text = open(model).read().replace("[Model]\n", "[Model]\nmemory_swap = true\n"
                                      "memory_swap_path = swapdir\nmemory_swap_lookahead = 1\n")
    open(model, "w").write(text)
    res = run("train", model, "-q")
    assert res.exit_code == 2 and "swap directory" in res.output   # swapdir does not exist
    (tmp_path / "swapdir").mkdir()
    report = tmp_path / "r.json"
    res = run("train", model, "-q", "--report", str(report))
    assert res.exit_code == 0, res.output
    sw = json.loads(report.read_text())["memory"]["swap"]
    assert sw["lookahead"] == 1 and sw["bytes_out"] > 0
    assert list((tmp_path / "swapdir").iterdir()) == []


def test_full_disk_stops_cleanly_and_keeps_saved_weights(tmp_path, monkeypatch):
    from nntrainer_cli.runtime import swap_io

    model = os.path.join(CONFIGS, "digits_mlp.ini")
    save = tmp_path / "w.bin"
    assert run("train", model, "-q", "--epochs", "1", "--save", str(save)).exit_code == 0
    before = save.read_bytes()
    calls = {"n": 0}
    real = swap_io.SwapFile.move

    def fill_up(self, job, flags=0):
        calls["n"] += job.op == "out"
        if calls["n"] > 200:
            raise OSError(28, "No space left on device")
        real(self, job, flags)

    monkeypatch.setattr(swap_io.SwapFile, "move", fill_up)
    res = run("train", model, "-q", "--epochs", "2", "--save", str(save),
              "--memory-budget", "70%", "--swap-dir", str(tmp_path))
    assert res.exit_code == 2
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], res.output
    assert save.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("nntrainer-swap")] == []


def test_plan_shows_the_schedule():
    model = os.path.join(CONFIGS, "digits_mlp.ini")
    res = run("plan", model, "--memory-budget", "70%", "--format", "json")
    plan = json.loads(res.output)
    sw = plan["swap"]
    assert {"budget_bytes", "lookahead", "events", "bytes_out", "bytes_in"} <= set(sw)
    assert plan["resident_peak_bytes"] <= sw["budget_bytes"] < plan["peak_bytes"]
    assert sum(e["bytes"] for e in sw["events"] if e["op"] == "in") == sw["bytes_in"]
    assert any(t["swapped"] for t in plan["tensors"])
    text = run("plan", model, "--memory-budget", "70%").output
    assert "swap events" in text and "resident arena" in text
    # the peak shown is of the graph the budget planned, and the text says which
    frugal = prepare(model, budget="70%").plan
    assert f"peak {frugal.peak_bytes / 1024:.1f} KiB" in text and frugal.frugal
    assert "(these figures are without swap, for the frugal graph: relu masks" in text
    assert "conv in smaller pieces" not in text and not frugal.in_pieces   # no conv


def test_plan_says_when_convs_run_in_smaller_pieces():
    """Frugal levels above 1 shrink conv's work buffers (Layer.in_pieces): the plan
    names the layers, and the summary says so; level 1 does not shrink them."""
    model = os.path.join(CONFIGS, "lenet_mnist.ini")
    plan = prepare(model, budget="50%").plan
    assert plan.frugal > 1 and plan.in_pieces == ("c1", "c3")
    assert "conv in smaller pieces at a time" in run("plan", model, "--memory-budget",
                                                     "50%").output
    planning = Planning(model)
    assert planning.plain(1).plan.in_pieces == () and planning.plain(0).plan.in_pieces == ()


@pytest.mark.parametrize("text,expected", [
    ("64MiB", Budget(bytes=64 * 2**20)), ("1.5GB", Budget(bytes=1_500_000_000)),
    ("500000", Budget(bytes=500000)), ("50%", Budget(share=50.0)), ("2k", Budget(bytes=2048)),
    (" Auto ", Budget(auto=True)), ("50 %", Budget(share=50.0)), ("64 MiB", Budget(bytes=64 * 2**20))])
def test_sizes(text, expected):
    assert parse_size(text) == expected


def test_a_budget_too_small_says_the_smallest_also_as_a_share_of_the_plan():
    model = os.path.join(CONFIGS, "digits_mlp.ini")
    plain = prepare(model).plan.peak_bytes
    res = run("train", model, "--memory-budget", "60")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    floor = int(res.output.split("works is ")[1].split(" ")[0].replace(",", ""))
    assert f"({-(-floor * 100 // plain)}% of the plan without swap, {plain:,} bytes)" \
        in res.output
    assert "a bare number is bytes: for a share of the plan write 60%" in res.output
    assert "bare number" not in run("train", model, "--memory-budget", "10%").output


@pytest.mark.parametrize("text", ["", "abc", "-5MiB", "0", "150%", "5 parsecs"])
def test_bad_sizes(text):
    with pytest.raises(ConfigError):
        parse_size(text)


def test_tight_budgets_go_frugal_with_the_same_plan_checks():
    """Below what whole work buffers allow, the plan switches to one-sample im2col, a
    relu mask and apply_gradient in parts; still a valid schedule within the budget."""
    path = os.path.join(CONFIGS, "lenet_mnist.ini")
    roomy = prepare(path, budget="75%")
    tight = prepare(path, budget="45%")
    assert roomy.plan.frugal == 1 and tight.plan.frugal > 1   # conv buffers shrink only if needed
    replay(tight.plan)
    parts = [s for s in tight.plan.slots if s.phase == "apply_gradient" and s.node == "f5"]
    assert [s.part for s in parts] == [0, 1, 2, 3]
    assert "f5:weight:adam_m:3" in tight.plan.specs


def test_short_transfers_continue_where_they_stopped(tmp_path, monkeypatch):
    """preadv/pwritev may move fewer bytes than asked; a job spanning several arena
    stays still lands byte for byte."""
    import numpy as np
    from nntrainer_cli.runtime import swap_io

    real_read, real_write = os.preadv, os.pwritev

    def at_most(real, limit):
        def call(fd, bufs, at, *flags):
            first = bytearray(min(limit, len(bufs[0])))
            if real is real_write:
                first[:] = bufs[0][:len(first)]
                return real(fd, [first], at)
            n = real(fd, [first], at, *flags)
            bufs[0][:n] = first[:n]
            return n
        return call

    f = swap_io.SwapFile(str(tmp_path), 64)
    try:
        src = np.arange(40, dtype=np.uint8)
        out = swap_io.Job.of("out", 3, [src[:7], src[7:8], src[8:40]])
        monkeypatch.setattr(os, "pwritev", at_most(real_write, 5))
        f.move(out)
        dst = np.zeros(40, dtype=np.uint8)
        monkeypatch.setattr(os, "preadv", at_most(real_read, 3))
        f.move(swap_io.Job.of("in", 3, [dst[:20], dst[20:]]))
        assert (dst == src).all()
    finally:
        f.close()
    assert list(tmp_path.iterdir()) == []


def adam(rate: float) -> str:
    """The optimizer section most held-out models share."""
    return f"[Optimizer]\ntype = adam\nlearning_rate = {rate}\n"


SOFTMAX_3 = "[out]\ntype = fully_connected\nunit = 3\nactivation = softmax\n"   # their head

HELD_OUT = {  # layers and options the shipped configs do not use; (features, ids?, text)
    "lstm": (128, False, adam(0.01) + """
[in]
type = input
input_shape = 1:8:16
[seq]
type = lstm
unit = 64
return_sequences = true
[last]
type = lstm
unit = 64
""" + SOFTMAX_3),
    "embedding_branches": (6, True, adam(0.01) + """
[in]
type = input
input_shape = 1:1:6
[embed]
type = embedding
in_dim = 10
out_dim = 8
[flat]
type = flatten
[fc]
type = fully_connected
unit = 256
# no bias before batch norm: its true gradient is 0, so it would move by rounding
# noise alone (Adam scales that to whole steps), and runs could not be compared
disable_bias = true
[bn]
type = batch_normalization
[act]
type = activation
activation = swish
[fork]
type = multiout
[left]
type = fully_connected
input_layers = fork
unit = 256
activation = tanh
[right]
type = fully_connected
input_layers = fork
unit = 256
activation = sigmoid
[join]
type = concat
input_layers = left, right
""" + SOFTMAX_3),
    "one_dominant_conv": (512, False, adam(0.001) + """
[in]
type = input
input_shape = 128:2:2
[wide]
type = conv2d
filters = 256
kernel_size = 3,3
padding = same
activation = relu
[pool]
type = pooling2d
pooling = global_average
[flat]
type = flatten
""" + SOFTMAX_3),
    "one_dominant_layer": (512, False, adam(0.001) + """
[in]
type = input
input_shape = 1:1:512
[wide]
type = fully_connected
unit = 2048
activation = relu
""" + SOFTMAX_3),
    "one_dominant_lstm": (1024, False, adam(0.001) + """
[in]
type = input
input_shape = 1:2:512
[seq]
type = lstm
unit = 64
""" + SOFTMAX_3),
    "frozen_lstm": (1024, False, adam(0.001) + """
[in]
type = input
input_shape = 1:2:512
[pre]
type = fully_connected
unit = 512
[seq]
type = lstm
unit = 64
trainable = false
""" + SOFTMAX_3),
    "conv_momentum_clip": (64, False, """
[Optimizer]
type = sgd
momentum = 0.9
learning_rate = 0.05
[in]
type = input
input_shape = 1:8:8
[conv]
type = conv2d
filters = 16
kernel_size = 3,3
padding = same
[bn]
type = batch_normalization
activation = relu
[pool]
type = pooling2d
pooling = average
pool_size = 2,2
stride = 2,2
[flat]
type = flatten
[drop]
type = dropout
dropout_rate = 0.2
[hidden]
type = fully_connected
unit = 128
activation = gelu
weight_regularizer = l2norm
weight_regularizer_constant = 0.001
clip_grad_by_norm = 1.0
[out]
type = fully_connected
unit = 3
activation = softmax
clip_grad_by_norm = 1.0
"""),
}


def same_tiles_without_swap(tmp_path, monkeypatch, model, tiles, parts, *args):
    """The weights of a run on the plan with these tiles and micro-batches but no budget."""
    from nntrainer_cli.pipeline import Planning

    with monkeypatch.context() as m:
        m.setattr(Planning, "_prepared", lambda p: p.plain(1, tiles, parts))
        return train_weights(model, tmp_path, "same_tiles", *args)[0]


@pytest.mark.parametrize("name,budget", [(name, "least") for name in sorted(HELD_OUT)]
                         + [(name, share) for name in ("one_dominant_layer", "one_dominant_conv")
                            for share in ("25%", "10%")]
                         + [("one_dominant_lstm", "25%"), ("frozen_lstm", "10%")])
def test_held_out_models_train_bit_identically_in_little_memory(tmp_path, monkeypatch,
                                                                name, budget):
    """Models unlike the shipped configs (LSTM, embedding with branches and batch norm,
    conv with dropout, momentum, L2 and gradient clipping, one dominant fully connected,
    conv or LSTM layer, a frozen LSTM whose backward pass runs tile by tile) in the
    least memory they can train in, and the dominant layer's in a quarter (and but for
    the LSTM, whose recurrent weight stays whole, a tenth) of its plan, large layers tiled (and under a budget in bytes the batch split into
    micro-batches) where that lowers the floor: the weights of the same tiles and parts
    without swap, the measured peak within 1.15x the budget, no swap file left."""
    import numpy as np

    features, ids, text = HELD_OUT[name]
    rng = np.random.default_rng(1)
    x = rng.integers(0, 10, (192, features)) if ids else rng.standard_normal((192, features))
    write_records(tmp_path / "train.dat", x, rng.integers(0, 3, 192), 3)
    model = tmp_path / f"{name}.ini"
    model.write_text("[Model]\nloss = cross\nbatch_size = 64\n"
                     "[train_set]\ntype = file\npath = train.dat\n" + text)
    swap_dir = tmp_path / "swap"
    swap_dir.mkdir()
    plain, whole = train_weights(str(model), tmp_path, "plain", "--epochs", "2")
    swapped, report = train_weights(
        str(model), tmp_path, "swapped", "--epochs", "2", "--swap-dir", str(swap_dir),
        *(["--set", "model.memory_swap=true"] if budget == "least"
          else ["--memory-budget", budget]))
    m, sw = report["memory"], report["memory"]["swap"]
    if sw["tiles"] or sw["micro_batches"] > 1:
        assert swapped == same_tiles_without_swap(tmp_path, monkeypatch, str(model),
                                                  sw["tiles"], sw["micro_batches"],
                                                  "--epochs", "2")
        assert weight_difference(plain, swapped) <= 3e-5   # 2 epochs: at most 1.1e-5 seen
    else:
        assert swapped == plain
    share = 0.8 if budget == "least" else int(budget[:-1]) / 100
    assert sw["resident_peak_bytes"] <= sw["budget_bytes"] <= \
        share * whole["memory"]["planned_peak_bytes"]
    assert not name.startswith("one_dominant") or sw["tiles"]
    assert name != "frozen_lstm" or budget != "10%" or "seq" in sw["tiles"]
    assert sw["bytes_in"] > 0
    assert m["measured_peak_bytes"] <= 1.15 * sw["budget_bytes"]
    assert list(swap_dir.iterdir()) == []


def test_two_runs_sharing_a_swap_directory_and_data_never_collide(tmp_path):
    """Two processes at once, one swap directory and one data file: each has its own
    swap file (made unique and unlinked at once), so both end with the weights of a run
    without swap, and the directory is left empty."""
    import subprocess
    import sys

    model = os.path.join(CONFIGS, "digits_cnn.ini")
    plain, _ = train_weights(model, tmp_path, "plain")
    swap_dir = tmp_path / "swap"
    swap_dir.mkdir()
    runs = [subprocess.Popen([sys.executable, "-m", "nntrainer_cli", "train", model, "-q",
                              "--no-shuffle", "--epochs", "1", "--memory-budget", "50%",
                              "--swap-dir", str(swap_dir), "--save", str(tmp_path / f"{k}.bin"),
                              "--no-run-dir"], stderr=subprocess.PIPE, text=True)
            for k in range(2)]
    for r in runs:
        assert r.wait(timeout=300) == 0, r.stderr.read()
    assert (tmp_path / "0.bin").read_bytes() == (tmp_path / "1.bin").read_bytes() == plain
    assert list(swap_dir.iterdir()) == []
