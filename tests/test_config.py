"""Reading NNTrainer INI files: lexing as iniparser does, validation with locations."""

import glob
import os

import pytest

from nntrainer_cli.config import load_config
from nntrainer_cli.config.ini import parse_ini
from nntrainer_cli.config.reader import read_model_file
from nntrainer_cli.errors import ConfigError
from nntrainer_cli.graph import build_graph

from helpers import CORPUS

MODEL = """
[Model]
Type = NeuralNetwork	# tabs and inline comments
Epochs = 3
Loss = cross
Save_Path = "model.bin"  # quoted value, comment after
batch_size = 4

[Optimizer]
Type = ADAM
beta1 = 0.9

[Input]
Type = Input
Input_Shape = 1:1:4

[FC]
Type = Fully_Connected
Unit = 3
Activation = Softmax
"""


def write(tmp_path, text, name="m.ini"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_lexing_rules():
    sections = parse_ini("[A]\nKey = Va lue ; c\n; full comment\nq = 'x # y' tail\n"
                         "long = a, \\\n b\n", "f.ini")
    (a,) = sections
    assert a.name == "a"
    assert a.entries["key"].value == "Va lue"
    assert a.entries["q"].value == "x # y"
    assert a.entries["long"].value == "a, b"
    assert a.entries["key"].line == 2


def test_mixed_case_tabs_and_comments(tmp_path):
    cfg = load_config(write(tmp_path, MODEL))
    assert cfg.model["epochs"] == 3 and cfg.model["batch_size"] == 4
    assert cfg.model["save_path"] == "model.bin"
    assert cfg.optimizer == "adam" and cfg.optimizer_props["beta1"] == 0.9
    assert [s.name for s in cfg.layers] == ["input", "fc"]


@pytest.mark.parametrize("text,where,message", [
    ("[Model]\nepochs = 0\n", "2 [model] epochs", "positive integer"),
    ("[Model]\nepoch = 3\n[a]\ntype=input\ninput_shape=1\n", "2 [model] epoch", "did you mean 'epochs'"),
    ("[Model]\nbatch_size=1\n[a]\ntype = dense\n", "4 [a] type", "unknown layer type"),
    ("[Model]\nbatch_size=1\nthis is not ini\n", ":3", "cannot read this line"),
    ("[Model]\nbatch_size=1\n[a]\ntype=input\n[a]\ntype=input\n", "5 [a]", "appears twice"),
    ("", "", "empty"),
    ("[Optimizer]\ntype=sgd\n", "", "no [Model]"),
    ("[Model]\nbatch_size=1\n[Optimizer]\ntype=adamx\n", "4 [optimizer] type", "did you mean 'adam'"),
    ("[Model]\nbatch_size=1\n[Optimizer]\ntype=sgd\nbeta1=0.9\n", "5 [optimizer] beta1", "a key of adam, adamw, not of sgd"),
])
def test_errors_name_file_line_section_key(tmp_path, text, where, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        build_graph(load_config(path))
    line = f"error: {e.value}"
    assert path in line and where in line and message in line, line


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/model.ini")


def test_set_overrides_create_and_replace(tmp_path):
    cfg = load_config(write(tmp_path, MODEL), ["model.epochs=7", "train_set.path=data.dat"])
    assert cfg.model["epochs"] == 7
    assert cfg.data["train"].value == "data.dat"
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        load_config(write(tmp_path, MODEL), ["epochs"])


def test_set_cannot_invent_a_layer(tmp_path):
    with pytest.raises(ConfigError, match=r"no section \[fc9\] \(did you mean 'fc'\?\)"):
        load_config(write(tmp_path, MODEL), ["fc9.unit=10"])


def test_set_path_is_relative_to_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    model = write(tmp_path, MODEL.replace("[Input]", "[valid_set]\npath = v.dat\n[Input]"),
                  "models/m.ini")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(model, ["train_set.path=data/t.dat"])
    assert cfg.resolve(cfg.data["train"].section, "path") == str(tmp_path / "data" / "t.dat")
    assert cfg.resolve(cfg.data["valid"].section, "path") == str(tmp_path / "models" / "v.dat")


SCHEDULED = MODEL.replace("[Input]", "[LearningRateScheduler]\ntype = constant\n"
                          "learning_rate = 0.1\n[Input]")


def test_a_set_key_without_effect_is_an_error(tmp_path):
    path = write(tmp_path, SCHEDULED)
    with pytest.raises(ConfigError, match=r"--set \[optimizer\] learning_rate: has no effect: "
                       r"\[LearningRateScheduler\] sets"):
        load_config(path, ["optimizer.learning_rate=0.5"])
    with pytest.raises(ConfigError, match=r"\[model\] learning_rate: has no effect"):
        load_config(path, ["model.learning_rate=0.5"])
    assert load_config(path, ["learningratescheduler.learning_rate=0.5"]).warnings == []


@pytest.mark.parametrize("text,where", ids=["lr", "save_best", "fsu"], argvalues=[
    (SCHEDULED.replace("beta1 = 0.9", "learning_rate = 0.3"), ":11 [optimizer] learning_rate"),
    (MODEL.replace("batch_size = 4", "batch_size = 4\nsave_best_path = b.bin"),
      ":8 [model] save_best_path"),
    (MODEL.replace("batch_size = 4", "batch_size = 4\nfsu_path = /a\nmemory_swap_path = /b"),
     ":8 [model] fsu_path"),
])
def test_a_file_key_without_effect_is_a_warning(tmp_path, text, where):
    cfg = load_config(write(tmp_path, text))
    assert len(cfg.warnings) == 1 and where in cfg.warnings[0], cfg.warnings
    assert "has no effect" in cfg.warnings[0]


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.ini"
    path.write_bytes(b"\xef\xbb\xbf" + MODEL.lstrip().encode())
    assert load_config(str(path)).model["epochs"] == 3


def test_invisible_characters_in_a_key_are_shown(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_graph(load_config(write(tmp_path, MODEL.replace("Unit = 3", "Unit\u200b = 3"))))
    assert "unit\\u200b: unknown key (did you mean 'unit'?)" in str(e.value)


def test_backbone_is_spliced(tmp_path):
    write(tmp_path, "[b1]\ntype=fully_connected\nunit=5\n[b2]\ntype=fully_connected\nunit=6\n",
          "bb.ini")
    cfg = load_config(write(tmp_path, "[Model]\nbatch_size=1\n[in]\ntype=input\n"
                            "input_shape=1:1:3\n[net]\nbackbone=bb.ini\ntrainable=false\n"))
    assert [s.name for s in cfg.layers] == ["in", "b1", "b2"]
    assert cfg.layers[1].entries["trainable"].value == "false"


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="../shared/nntrainer-ini not present")
def test_every_corpus_file_lexes():
    files = glob.glob(os.path.join(CORPUS, "**", "*.ini"), recursive=True)
    assert len(files) >= 20
    for f in files:
        assert read_model_file(f), f
