"""Faults during a run, without root: training data that shrinks or vanishes, a disk
that fills up (ENOSPC injected where writes are synced) and a save path that becomes
unwritable. Each is one line naming the file, exit 2, and the last good weights and
checkpoint intact, with no temporary file left. (A real full tmpfs, which needs root,
is in test_resume.py.)"""

from __future__ import annotations

import importlib
import os
import shutil

import numpy as np
import pytest

from helpers import REPO, run

MLP = os.path.join(REPO, "configs", "digits_mlp.ini")
DIGITS = os.path.join(REPO, "datasets", "digits")


@pytest.fixture
def after_epoch(monkeypatch):
    """Runs `action` when epoch `n` has ended, before its weights are saved."""
    from nntrainer_cli.runtime.trainer import Trainer

    def arm(n, action):
        real = Trainer._tell

        def tell(self, ex, row, iteration):
            real(self, ex, row, iteration)
            if row.epoch == n:
                action()
        monkeypatch.setattr(Trainer, "_tell", tell)
    return arm


def train(*args):
    return run("train", MLP, "-q", "--no-run-dir", *args)


def one_epoch(tmp_path, *args):
    """The weights after one epoch, uninterrupted (the same seed and order)."""
    res = train("--epochs", "1", "--save", str(tmp_path / "one.bin"), *args)
    assert res.exit_code == 0, res.output
    return (tmp_path / "one.bin").read_bytes()


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_training_data_that_shrinks_mid_run_is_one_line(tmp_path, after_epoch):
    data = tmp_path / "train.dat"
    shutil.copy(os.path.join(DIGITS, "train.dat"), data)
    where = f"train_set.path={data}"
    good = one_epoch(tmp_path, "--set", where)
    after_epoch(1, lambda: os.truncate(data, data.stat().st_size // 2))
    res = train("--epochs", "3", "--save", str(tmp_path / "w.bin"), "--set", where)
    assert res.exit_code == 2, res.output
    assert len(errors(res.output)) == 1 and f"short read from {data} at record" in res.output
    assert (tmp_path / "w.bin").read_bytes() == good   # epoch 1's, not a broken epoch 2


def test_an_image_that_vanishes_mid_run_is_one_line(tmp_path, after_epoch):
    Image = importlib.import_module("PIL.Image") if os.environ.get("CI") \
        else pytest.importorskip("PIL.Image")
    r = np.fromfile(os.path.join(DIGITS, "valid.dat"), "<f4").reshape(-1, 74)[:40]
    for i, (pixels, k) in enumerate(zip(r[:, :64], r[:, 64:].argmax(1) % 2)):
        (tmp_path / "imgs" / str(k)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255).round().astype(np.uint8).reshape(8, 8)).save(
            tmp_path / "imgs" / str(k) / f"{i:03d}.png")
    (tmp_path / "m.ini").write_text(
        "[Model]\nloss = cross\nbatch_size = 8\nepochs = 3\n[Optimizer]\ntype = sgd\n"
        f"[train_set]\ntype = dir\npath = {tmp_path / 'imgs'}\n[in]\ntype = input\n"
        "input_shape = 1:8:8\n[flat]\ntype = flatten\n[fc]\ntype = fully_connected\n"
        "unit = 2\nactivation = softmax\n")
    gone = tmp_path / "imgs" / "1" / sorted(os.listdir(tmp_path / "imgs" / "1"))[0]
    after_epoch(1, gone.unlink)
    res = run("train", str(tmp_path / "m.ini"), "-q")
    assert res.exit_code == 2, res.output
    assert len(errors(res.output)) == 1 and str(gone) in res.output, res.output


def test_a_disk_that_fills_up_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from nntrainer_cli import files

    ckpt = tmp_path / "c.ckpt"
    res = train("--epochs", "1", "--save", str(tmp_path / "w.bin"), "--checkpoint", str(ckpt))
    assert res.exit_code == 0, res.output
    weights, good = (tmp_path / "w.bin").read_bytes(), ckpt.read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files.os, "fsync", full)
    res = train("--epochs", "3", "--save", str(tmp_path / "w.bin"), "--resume", str(ckpt))
    assert res.exit_code == 2, res.output
    assert errors(res.output) == [f"error: cannot save weights to {tmp_path / 'w.bin'}: "
                                  "No space left on device"]
    assert (tmp_path / "w.bin").read_bytes() == weights and ckpt.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt", "w.bin"]


def test_a_save_path_that_becomes_unwritable_keeps_the_last_weights(tmp_path, monkeypatch,
                                                                     after_epoch):
    from nntrainer_cli import files

    good = one_epoch(tmp_path)
    real = files.tempfile.mkstemp

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    after_epoch(2, lambda: monkeypatch.setattr(files.tempfile, "mkstemp", refused))
    res = train("--epochs", "3", "--save", str(tmp_path / "w.bin"))
    monkeypatch.setattr(files.tempfile, "mkstemp", real)
    assert res.exit_code == 2, res.output
    assert errors(res.output) == [f"error: cannot save weights to {tmp_path / 'w.bin'}: "
                                  "Permission denied"]
    assert (tmp_path / "w.bin").read_bytes() == good   # epoch 1 saved, epoch 2 refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.bin", "w.bin"]
