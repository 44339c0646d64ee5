"""Checkpoints and resuming: a run killed at random moments (SIGKILL) and resumed from
its last checkpoint, as often as it takes, ends with the weights of an uninterrupted
run, byte for byte; Ctrl-C and SIGTERM stop at an iteration boundary with a checkpoint;
NNTrainer's continue_train picks up from save_path; bad checkpoints are refused."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from helpers import REPO, frozen_conv, run

DIGITS = os.path.join(REPO, "datasets", "digits", "train.dat")
# batch norm, dropout (the layers' random state), Adam (its step count), shuffling
CNN = os.path.join(REPO, "configs", "digits_cnn.ini")
SGD = "type = sgd\nlearning_rate = 0.1\nmomentum = 0.9"


def command(model, tmp_path, *extra, epochs=3):
    return [sys.executable, "-m", "nntrainer_cli", "train", str(model), "-q", "--epochs",
            str(epochs), "--save", str(tmp_path / "w.bin"), *extra]


def uninterrupted(model, tmp_path, epochs=3):
    res = run("train", str(model), "-q", "--epochs", str(epochs), "--save",
              str(tmp_path / "full.bin"))
    assert res.exit_code == 0, res.output
    return (tmp_path / "full.bin").read_bytes()


@pytest.mark.parametrize("model,epochs", [("cnn", 3), ("frozen", 40), ("cnn at 25%", 2)])
def test_killed_at_random_moments_and_resumed_ends_as_an_uninterrupted_run(tmp_path, model,
                                                                            epochs):
    budget = []
    if model == "frozen":   # SGD momentum, and the feature cache rebuilt on every resume
        path = tmp_path / "frozen.ini"
        path.write_text(frozen_conv(DIGITS, SGD))
    else:
        path = CNN
    if model == "cnn at 25%":   # swap, micro-batches slot by slot, batch norm gathering
        budget = ["--memory-budget", "25%", "--swap-dir", str(tmp_path)]
    start = time.monotonic()   # kills fall within the time a whole run takes here
    subprocess.run(command(path, tmp_path, *budget, epochs=epochs), check=True)
    whole = time.monotonic() - start
    want = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "w.bin").unlink()
    ckpt = tmp_path / "run.ckpt"
    rng, kills = random.Random(7), 0
    while True:
        resume = ["--resume", str(ckpt)] if ckpt.exists() else ["--checkpoint", str(ckpt)]
        p = subprocess.Popen(command(path, tmp_path, "--save-every", "3", *resume, *budget,
                                     epochs=epochs), stderr=subprocess.PIPE, text=True)
        try:
            assert p.wait(timeout=rng.uniform(0.3, 0.9) * whole) == 0, p.stderr.read()
            break
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stderr.close()
            kills += 1
        assert kills < 40
    assert (tmp_path / "w.bin").read_bytes() == want
    assert kills >= 1, "never interrupted: no test"


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_writes_a_checkpoint_at_an_iteration_boundary(tmp_path, sig, code):
    want = uninterrupted(CNN, tmp_path)
    ckpt = tmp_path / "run.ckpt"
    p = subprocess.Popen(command(CNN, tmp_path, "--checkpoint", str(ckpt), "--save-every", "10"),
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(sig)
    assert p.wait(timeout=60) == code
    err = p.stderr.read()
    assert f"continue with --resume {ckpt}" in err and "Traceback" not in err, err
    with zipfile.ZipFile(ckpt) as z:
        assert "weights.bin" in z.namelist()
    res = run("train", CNN, "-q", "--epochs", "3", "--save", str(tmp_path / "w.bin"),
              "--resume", str(ckpt))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "w.bin").read_bytes() == want


def test_continue_train_picks_up_from_save_path(tmp_path):
    """[Model] continue_train = true (NNTrainer's key): the second run, asked for four
    epochs, continues the first run's two."""
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS, SGD).replace(
        "epochs = 3", "epochs = 2\nsave_path = w.bin\ncontinue_train = true"))
    assert run("train", str(tmp_path / "m.ini"), "-q").exit_code == 0
    assert (tmp_path / "w.bin.ckpt").exists()
    res = run("train", str(tmp_path / "m.ini"), "--epochs", "4")
    assert res.exit_code == 0 and "resumed from" in res.output and "at epoch 3" in res.output
    (tmp_path / "plain.ini").write_text(frozen_conv(DIGITS, SGD).replace("epochs = 3",
                                                                            "epochs = 4"))
    assert run("train", str(tmp_path / "plain.ini"), "-q", "--save",
               str(tmp_path / "plain.bin")).exit_code == 0
    assert (tmp_path / "w.bin").read_bytes() == (tmp_path / "plain.bin").read_bytes()


def test_bad_checkpoints_and_flags_are_refused(tmp_path):
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS, SGD))
    model, ckpt = str(tmp_path / "m.ini"), tmp_path / "c.ckpt"
    assert run("train", model, "-q", "--epochs", "1", "--checkpoint", str(ckpt)).exit_code == 0
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"")
    cases = [
        (["--resume", str(ckpt), "-b", "16"], "written for another model or batch size"),
        (["--save-every", "5"], "--save-every: needs a checkpoint path"),
        (["--resume", str(ckpt), "--init-weights", str(weights)], "both set the weights"),
        (["--resume", str(tmp_path / "none.ckpt")], "no checkpoint at"),
    ]
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[:300])
    cases.append((["--resume", str(tmp_path / "cut.ckpt")], "is not a readable checkpoint"))
    (tmp_path / "text.ckpt").write_text("hello")
    cases.append((["--resume", str(tmp_path / "text.ckpt")], "is not a readable checkpoint"))
    with zipfile.ZipFile(ckpt) as z:
        weights = bytearray(z.read("weights.bin"))
    weights[8:12] = b"\x00\x00\xc0\x7f"   # a NaN in the first tensor
    (tmp_path / "nan.bin").write_bytes(weights)
    cases.append((["--init-weights", str(tmp_path / "nan.bin")],
                  "tensor conv:filter holds a value that is not a finite number"))
    for args, message in cases:
        res = run("train", model, "-q", *args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert "Traceback" not in res.output


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs (needs root, as CI runs), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, tiny_disk):
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS, SGD))
    ckpt = tiny_disk / "c.ckpt"
    res = run("train", str(tmp_path / "m.ini"), "-q", "--epochs", "1", "--checkpoint", str(ckpt))
    assert res.exit_code == 0, res.output
    good = ckpt.read_bytes()
    (tiny_disk / "filler").write_bytes(b"\0" * (96 * 1024 - 2 * len(good) + 4096))
    res = run("train", str(tmp_path / "m.ini"), "-q", "--epochs", "3", "--resume", str(ckpt))
    assert res.exit_code == 2, res.output
    assert f"cannot write checkpoint {ckpt}: No space left on device" in res.output
    assert ckpt.read_bytes() == good
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["c.ckpt", "filler"]


def test_save_best_keeps_the_best_validation_epoch_across_a_resume(tmp_path):
    mlp = os.path.join(REPO, "configs", "digits_mlp.ini")

    def train(name, *args):   # the best file by NNTrainer's key: --set as a file has it
        res = run("train", mlp, "-q", "--set", f"model.save_best_path={tmp_path / name}.bin",
                  "--report", str(tmp_path / f"{name}.json"), *args)
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / f"{name}.json").read_text())

    whole = train("whole", "--epochs", "8")
    epochs = whole["epochs"]
    best = max(epochs, key=lambda e: (e["val_accuracy"], -e["val_loss"]))
    assert whole["best"]["epoch"] == best["epoch"] < 8   # the last epoch is not the best
    # the file holds that epoch's weights: eval on the validation set gives its accuracy
    res = run("eval", mlp, "--weights", str(tmp_path / "whole.bin"), "--data",
              os.path.join(REPO, "datasets", "digits", "valid.dat"), "--report",
              str(tmp_path / "eval.json"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == best["val_accuracy"]
    # stopped after epoch 3 and resumed: the same best epoch, the same bytes
    ckpt = str(tmp_path / "c.ckpt")
    train("part", "--epochs", "3", "--checkpoint", ckpt)
    part = train("part", "--epochs", "8", "--resume", ckpt)
    assert part["best"] == {**whole["best"], "weights": str(tmp_path / "part.bin")}
    assert (tmp_path / "part.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()


def test_save_best_needs_a_validation_set(tmp_path):
    (tmp_path / "m.ini").write_text(frozen_conv(DIGITS, SGD))
    res = run("train", str(tmp_path / "m.ini"), "-q", "--save-best", str(tmp_path / "b.bin"))
    assert res.exit_code == 2 and "add [valid_set]" in res.output, res.output
    res = run("train", str(tmp_path / "m.ini"), "--epochs", "1",
              "--set", f"model.save_best_path={tmp_path / 'b.bin'}")
    assert res.exit_code == 2 and "save_best_path: has no effect" in res.output, res.output
    assert not (tmp_path / "b.bin").exists()


def test_a_full_swap_directory_is_one_line_and_leaves_nothing(tmp_path, tiny_disk):
    mlp = os.path.join(REPO, "configs", "digits_mlp.ini")
    res = run("train", mlp, "-q", "--epochs", "1", "--memory-budget", "50%",
              "--swap-dir", str(tiny_disk))
    assert res.exit_code == 2, res.output
    assert f"swap file in {tiny_disk}: No space left on device" in res.output
    assert list(tiny_disk.iterdir()) == []
