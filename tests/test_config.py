"""Reading NNTrainer INI files: lexing as iniparser does, validation with locations."""

import glob
import os

import pytest

from nntrainer_cli.config import load_config
from nntrainer_cli.config.ini import parse_ini, read_model_file
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
    ("[Model]\nbatch_size=1\n[Optimizer]\ntype=sgd\nbeta1=0.9\n", "5 [optimizer] beta1", "unknown key"),
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
