"""Shared set-up for the tests: the small model most CLI tests train."""

import numpy as np
import pytest

from helpers import write_records


@pytest.fixture
def tiny_model(tmp_path) -> str:
    """A 4-feature, 3-class problem that is linearly separable, as NNTrainer raw data
    (`train.dat`, 64 records) beside its model file `tiny.ini`; the model's path."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype("<f4")
    write_records(tmp_path / "train.dat", x, np.argmax(x[:, :3], axis=1), 3)
    path = tmp_path / "tiny.ini"
    path.write_text("[Model]\nepochs = 5\nloss = cross\nbatch_size = 8\n"
                    "[Optimizer]\ntype = sgd\nlearning_rate = 0.5\n"
                    "[train_set]\ntype = file\npath = train.dat\n"
                    "[in]\ntype = input\ninput_shape = 1:1:4\n"
                    "[hidden]\ntype = fully_connected\nunit = 8\nactivation = tanh\n"
                    "[out]\ntype = fully_connected\nunit = 3\nactivation = softmax\n")
    return str(path)
