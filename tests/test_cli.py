"""The command line, end to end, through click's CliRunner."""

import json
import os

import numpy as np
import pytest

from helpers import DIGITS, REPO, run

def test_train_digits_learns_and_keeps_to_the_plan(tmp_path):
    report = tmp_path / "r.json"
    res = run("train", DIGITS, "--epochs", "3", "--report", str(report), "--quiet")
    assert res.exit_code == 0, res.output
    r = json.loads(report.read_text())
    losses = [e["train_loss"] for e in r["epochs"]]
    assert losses[0] > losses[-1]
    assert r["test"]["accuracy"] > 0.9
    m = r["memory"]
    assert m["lower_bound_bytes"] <= m["planned_peak_bytes"] <= m["naive_bytes"]
    assert m["measured_peak_bytes"] >= m["planned_peak_bytes"]      # the arena is in it
    assert m["measured_peak_bytes"] <= 1.15 * m["planned_peak_bytes"]
    for e in r["epochs"]:
        assert 0 <= e["train_accuracy"] <= 1 and 0 <= e["val_accuracy"] <= 1


def test_the_measured_peak_does_not_drift_over_epochs(tmp_path):
    """Each epoch keeps only its row of results (about 0.5 KiB): 20 epochs measure at
    most 16 KiB over 2 (the loader's bookkeeping once drifted 1.9 KiB an epoch)."""
    peaks = []
    for epochs in (2, 20):
        report = tmp_path / f"r{epochs}.json"
        res = run("train", DIGITS, "--epochs", str(epochs), "--report", str(report), "-q",
                  "--no-run-dir")
        assert res.exit_code == 0, res.output
        peaks.append(json.loads(report.read_text())["memory"]["measured_peak_bytes"])
    assert peaks[1] - peaks[0] <= 16 * 1024, peaks


def test_cnn_keeps_to_the_plan(tmp_path):
    report = tmp_path / "r.json"
    cnn = os.path.join(REPO, "configs", "digits_cnn.ini")
    res = run("train", cnn, "--epochs", "1", "--report", str(report), "--quiet")
    assert res.exit_code == 0, res.output
    r = json.loads(report.read_text())
    m = r["memory"]
    assert m["planned_peak_bytes"] <= m["measured_peak_bytes"] <= 1.15 * m["planned_peak_bytes"]
    assert r["test"]["accuracy"] > 0.5      # chance is 0.1


def test_train_prints_summary(tmp_path, tiny_model):
    res = run("train", tiny_model)
    assert res.exit_code == 0, res.output
    for word in ("train accuracy", "planned peak", "measured peak", "lower bound"):
        assert word in res.output


def test_in_place_changes_memory_not_results(tmp_path, tiny_model):
    from nntrainer_cli.optim.schedulers import make_schedule
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.runtime.data import open_datasets
    from nntrainer_cli.runtime.trainer import Trainer, TrainOptions

    weights = []
    for in_place in (True, False):
        p = prepare(tiny_model, in_place=in_place)
        save = tmp_path / f"w{in_place}.bin"
        data = open_datasets(p.cfg, p.graph)
        Trainer(p.cfg, p.graph, p.plan, p.optimizer, make_schedule(p.cfg), data,
                TrainOptions(epochs=2, quiet=True, save=str(save))).run()
        weights.append(save.read_bytes())
    assert weights[0] == weights[1]


def test_save_then_init_weights_round_trip(tmp_path, tiny_model):
    model = tiny_model
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    assert run("train", model, "-q", "--save", str(a)).exit_code == 0
    floats = (4 * 8 + 8 + 8 * 3 + 3)
    assert a.stat().st_size == 4 * floats + 8   # weights, then epoch and iteration
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    # zero learning rate: the weights come back unchanged
    res = run("train", model, "-q", "--init-weights", str(a), "--save", str(b),
              "--set", "optimizer.learning_rate=1e-30")
    assert res.exit_code == 0, res.output
    assert a.read_bytes()[:4 * floats] == b.read_bytes()[:4 * floats]


def test_plan_json_has_the_documented_fields():
    res = run("plan", DIGITS, "--format", "json", "--batch-size", "16")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    for key in ("planner", "batch_size", "peak_bytes", "lower_bound_bytes", "naive_bytes",
                "resident_peak_bytes", "execution_order", "tensors"):
        assert key in plan
    assert plan["batch_size"] == 16
    t = plan["tensors"][0]
    assert set(t) >= {"name", "kind", "shape", "bytes", "offset", "first", "last", "alias_of",
                      "swapped"}
    ends = [x["offset"] + x["bytes"] for x in plan["tensors"] if not x["alias_of"]]
    assert max(ends) == plan["peak_bytes"]


def test_plan_text():
    res = run("plan", DIGITS, "--planner", "sorted")
    assert res.exit_code == 0
    assert "execution order" in res.output and "apply_gradient" in res.output
    assert "planner sorted" in res.output


def test_check_configs_and_broken_files(tmp_path, tiny_model):
    res = run("check", os.path.join(REPO, "configs"))
    assert res.exit_code == 0, res.output
    bad = tmp_path / "bad.ini"
    bad.write_text("[Model]\nbatch_size = 2\n[in]\ntype = input\ninput_shape = 1:1:4\n"
                   "[fc]\ntype = fully_connected\nunits = 3\n")
    res = run("check", str(bad), os.path.join(REPO, "configs"))
    assert res.exit_code == 2
    assert "bad.ini:8 [fc] units: unknown key (did you mean 'unit'?)" in res.output
    missing = tmp_path / "nodata.ini"
    missing.write_text(open(tiny_model).read().replace("train.dat", "gone.dat"))
    res = run("check", str(missing))
    assert res.exit_code == 0 and "warning:" in res.output and "gone.dat" in res.output
    # run where there is no configs/ folder, the default
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = run("check")
    finally:
        os.chdir(here)
    assert res.exit_code == 2 and "no configs/ folder here, the default" in res.output


@pytest.mark.parametrize("mutate,args,message", [
    (lambda t: t.replace("unit = 8", "unit = eight"), (), "[hidden] unit: expected a positive"),
    (lambda t: t.replace("train.dat", "gone.dat"), (), "[train_set] path: data file not found"),
    (lambda t: t, ("--init-weights", "{tmp}/w.bin"), "weights file"),
    (lambda t: t, ("--save", "{tmp}/no/such/dir/w.bin"), "no such directory"),
    (lambda t: t, ("--set", "model.epochs=-1"), "--set [model] epochs"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, mutate, args, message, tiny_model):
    path = tiny_model
    with open(path) as f:
        text = mutate(f.read())
    with open(path, "w") as f:
        f.write(text)
    (tmp_path / "w.bin").write_bytes(b"\0" * 12)
    res = run("train", path, *[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.output
    assert "Traceback" not in res.output


def test_data_file_of_the_wrong_record_size(tmp_path, tiny_model):
    path = tiny_model
    with open(tmp_path / "train.dat", "ab") as f:
        f.write(b"\0" * 4)
    res = run("train", path)
    assert res.exit_code == 2
    assert "not a whole number of 28-byte records" in res.output


def test_nan_loss_exits_1_without_saving(tmp_path, tiny_model):
    path = tiny_model
    save = tmp_path / "w.bin"
    res = run("train", path, "--save", str(save), "--set", "optimizer.learning_rate=1e30",
              "--set", "hidden.activation=none")
    assert res.exit_code == 1
    assert "loss became" in res.output
    assert not save.exists()


def test_summary_lists_layers_and_parameters():
    res = run("summary", DIGITS)
    assert res.exit_code == 0, res.output
    assert "fc1/activation_realized" in res.output
    # 64·256+256 + 256·128+128 + 128·10+10
    assert "parameters 50,826 (50,826 trainable)" in res.output


@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_clipping_bounds_the_sgd_step(tmp_path, clip, tiny_model):
    """With plain SGD one step moves the weights by lr·g; clipped by global norm, that
    step's norm is at most lr·clip. A huge clip changes nothing at all."""
    model = tiny_model
    w0, w1, w2 = (tmp_path / f"w{i}.bin" for i in range(3))
    weights = lambda p: np.fromfile(p, "<f4")[:-2]  # noqa: E731  (drop the counters)
    assert run("train", model, "-q", "--save", str(w0), "--epochs", "1").exit_code == 0
    one_step = ["--init-weights", str(w0), "--epochs", "1", "--no-shuffle",
                "--set", "train_set.path=" + str(tmp_path / "one.dat")]
    (tmp_path / "one.dat").write_bytes((tmp_path / "train.dat").read_bytes()[:8 * 7 * 4])
    assert run("train", model, "-q", "--save", str(w1), *one_step).exit_code == 0
    res = run("train", model, "-q", "--save", str(w2), *one_step,
              "--set", f"model.clip_grad_by_norm={clip}")
    assert res.exit_code == 0, res.output
    free, clipped = weights(w1) - weights(w0), weights(w2) - weights(w0)
    if clip > 1:
        assert np.array_equal(free, clipped)
    else:
        assert np.linalg.norm(clipped) == pytest.approx(0.5 * clip, rel=1e-3)
        assert np.linalg.norm(free) > 100 * np.linalg.norm(clipped)


def test_plan_svg_draws_every_tensor(tmp_path):
    import xml.etree.ElementTree as ET

    from nntrainer_cli.pipeline import prepare

    out = tmp_path / "plan.svg"
    res = run("plan", DIGITS, "--format", "svg", "-o", str(out))
    assert res.exit_code == 0 and f"wrote {out} (svg, " in res.output, res.output
    svg = ET.parse(out).getroot()
    tips = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    roots = [s for s in prepare(DIGITS).plan.specs.values() if not s.alias_of and s.bytes]
    assert len(tips) == len(roots)
    assert all(any(t.startswith(s.name + ":") or t.startswith(s.name + " (") for t in tips)
               for s in roots)
    assert "lower bound" in out.read_text()


def test_plan_takes_its_format_from_the_output_name(tmp_path):
    for name, kind in (("p.json", "json"), ("p.svg", "svg"), ("p.txt", "text"), ("p", "text")):
        res = run("plan", DIGITS, "-o", str(tmp_path / name))
        assert res.exit_code == 0 and f"({kind}, " in res.output, res.output
    assert json.loads((tmp_path / "p.json").read_text())["peak_bytes"] > 0
    assert (tmp_path / "p.txt").read_text().startswith("model ")
    res = run("plan", DIGITS, "--format", "text", "-o", str(tmp_path / "q.json"))
    assert "(text, " in res.output   # the flag wins


def test_output_files_get_the_permissions_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        (tmp_path / "kept.json").write_text("{}")
        os.chmod(tmp_path / "kept.json", 0o640)
        outs = {"w.bin": 0o644, "r.json": 0o644, "p.svg": 0o644, "m.yaml": 0o644,
                "kept.json": 0o640}
        assert run("train", DIGITS, "--epochs", "1", "-q", "--save", str(tmp_path / "w.bin"),
                   "--report", str(tmp_path / "r.json")).exit_code == 0
        assert run("plan", DIGITS, "--format", "svg", "-o", str(tmp_path / "p.svg")).exit_code == 0
        assert run("convert", DIGITS, "--to", "yaml", "-o", str(tmp_path / "m.yaml")).exit_code == 0
        assert run("plan", DIGITS, "--format", "json", "-o", str(tmp_path / "kept.json")).exit_code == 0
    finally:
        os.umask(old)
    for name, mode in outs.items():
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == oct(mode), name


def test_no_command_prints_the_help():
    res = run()
    assert res.exit_code == 0 and res.output.startswith("Usage: ")
    assert "error" not in res.output and "train " in res.output


def test_convert_help_agrees_with_what_convert_does(tmp_path):
    assert "comment lines at the top of the file are carried over" in \
        " ".join(run("convert", "--help").output.split())
    out = tmp_path / "m.yaml"
    assert run("convert", DIGITS, "--to", "yaml", "-o", str(out)).exit_code == 0
    assert out.read_text().startswith("# A multi-layer perceptron on the 8x8 digits")


def test_flags_without_effect_are_named(tmp_path):
    res = run("train", DIGITS, "--epochs", "1", "--swap-direct", "--lookahead", "3",
              "--set", "model.epochs=3")
    warnings = [l for l in res.stderr.splitlines() if l.startswith("warning:")]
    assert res.exit_code == 0 and len(warnings) == 3, res.stderr
    assert "--swap-direct has no effect without --memory-budget" in res.stderr
    assert "--epochs wins over --set model.epochs" in res.stderr
    res = run("convert", DIGITS, "--to", "ini", "-o", str(tmp_path / "m.yaml"))
    assert res.exit_code == 2 and "named as the other format" in res.output
    assert not (tmp_path / "m.yaml").exists()


def test_train_says_where_the_weights_went(tmp_path):
    res = run("train", DIGITS, "--epochs", "1")
    assert "not saved (use --save FILE)" in res.stdout
    res = run("train", DIGITS, "--epochs", "1", "--save", str(tmp_path / "w.bin"))
    assert f"saved to {tmp_path / 'w.bin'}" in res.stdout
