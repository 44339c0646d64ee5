"""YAML models, `nntrainer convert` both ways, and the YAML twins of configs/."""

import glob
import json
import os

import pytest

from nntrainer_cli.config.reader import read_model_file

from helpers import CORPUS, CORPUS_EXPECTED, REPO, run


def plan_of(path, *extra):
    res = run("plan", path, "--format", "json", *extra)
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    plan.pop("model")
    return plan


def sections(path):
    return [(s.name, {k: e.value for k, e in s.entries.items()}) for s in read_model_file(path)]


@pytest.mark.parametrize("ini", sorted(glob.glob(os.path.join(REPO, "configs", "*.ini"))),
                         ids=os.path.basename)
def test_every_config_has_an_identical_yaml_twin(ini):
    twin = ini[:-4] + ".yaml"
    assert os.path.isfile(twin), f"no YAML twin for {ini}: nntrainer convert {ini} --to yaml"
    assert sections(twin) == sections(ini)
    assert plan_of(twin) == plan_of(ini)


@pytest.mark.parametrize("name", sorted(n for n, e in CORPUS_EXPECTED.items() if e is None))
def test_corpus_round_trips_through_yaml(tmp_path, name):
    if not os.path.isdir(CORPUS):
        pytest.skip("../shared/nntrainer-ini not present")
    src = os.path.join(CORPUS, name)
    as_yaml, back = tmp_path / "m.yaml", tmp_path / "m.ini"
    assert run("convert", src, "--to", "yaml", "-o", str(as_yaml)).exit_code == 0
    assert run("convert", str(as_yaml), "--to", "ini", "-o", str(back)).exit_code == 0
    assert sections(str(back)) == sections(str(as_yaml))
    assert plan_of(str(as_yaml), "-b", "2") == plan_of(src, "-b", "2")
    assert plan_of(str(back), "-b", "2") == plan_of(src, "-b", "2")


def test_yaml_values_are_text_as_in_ini(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("Model: {loss: mse, batch_size: 2}\n"
                    "layers:\n"
                    "  - {name: in, type: input, input_shape: 1:2:3}\n"
                    "  - {name: conv, type: conv2d, filters: 2, kernel_size: [1, 1]}\n"
                    "  - name: fc\n    type: fully_connected\n    unit: 4\n")
    s = dict(sections(str(path)))
    assert s["in"]["input_shape"] == "1:2:3"          # not YAML 1.1's base-60 integer
    assert s["conv"]["kernel_size"] == "1,1"
    assert run("check", str(path)).exit_code == 0


@pytest.mark.parametrize("text,message", [
    ("Model: {loss: mse\n", "malformed YAML"),
    ("", "the file is empty"),
    ("- a\n- b\n", "expected a mapping of sections"),
    ("Model: {loss: mse}\nlayers:\n  - {type: input}\n", "this layer has no name"),
    ("Model: {loss: mse, loss: cross}\n", "key 'loss' appears twice"),
    ("Model: {loss: mse}\nlayers: {a: 1}\n", "layers must be a list"),
    ("Model: {loss: {a: 1}}\n", "expected a value"),
    ("Model: {loss: mse}\nlayers:\n  - {name: in, type: input, input_shape: 1:1:4}\n"
     "  - {name: fc, type: fully_conected, unit: 2}\n", "did you mean 'fully_connected'"),
])
def test_bad_yaml_is_one_line_with_a_place(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    res = run("check", str(path))
    assert res.exit_code == 2
    errors = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and str(path) in errors[0], res.output
    assert "Traceback" not in res.output


def test_convert_rebases_relative_paths(tmp_path):
    out = tmp_path / "elsewhere" / "digits.yaml"
    out.parent.mkdir()
    assert run("convert", os.path.join(REPO, "configs", "digits_mlp.ini"), "--to", "yaml",
               "-o", str(out)).exit_code == 0
    res = run("check", str(out))
    assert res.exit_code == 0 and "warning" not in res.output, res.output


def test_odd_values_and_names_survive_a_round_trip(tmp_path):
    """Quotes, comment marks and a trailing backslash in values, a layer name outside
    Unicode's first plane, and a `name` key in a layer (found by fuzzing)."""
    src = tmp_path / "odd.ini"
    src.write_text('[Model]\nloss = cross\nbatch_size = 2\nsave_path = "we\\"ird#dir\\\\"\n'
                   "[in]\ntype = input\ninput_shape = 1:1:4\n"
                   "[\U0001d52cut]\ntype = fully_connected\nunit = 3\nname = x\nactivation = softmax\n")
    assert run("check", str(src)).exit_code == 0
    as_yaml, back = tmp_path / "odd.yaml", tmp_path / "back.ini"
    assert run("convert", str(src), "--to", "yaml", "-o", str(as_yaml)).exit_code == 0
    assert run("convert", str(as_yaml), "--to", "ini", "-o", str(back)).exit_code == 0
    for path in (src, as_yaml, back):
        sections = {s.name: s for s in read_model_file(str(path))}
        assert sections["model"].entries["save_path"].value == 'we"ird#dir\\', path
        assert "\U0001d52cut" in sections
    assert plan_of(str(src)) == plan_of(str(back))
