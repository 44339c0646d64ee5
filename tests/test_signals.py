"""Stopping a run from outside: SIGTERM and Ctrl-C stop it cleanly with a line, an exit
code and the report of the finished epochs; no swap file outlives a run, not even one
killed with SIGKILL (the file is unlinked as soon as it is opened)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import REPO

DIGITS = os.path.join(REPO, "configs", "digits_mlp.ini")


def start(tmp_path, *extra):
    swap = tmp_path / "swap"
    swap.mkdir()
    cmd = [sys.executable, "-m", "nntrainer_cli", "train", DIGITS, "--epochs", "200",
           "--memory-budget", "50%", "--swap-dir", str(swap), "--save", str(tmp_path / "w.bin"),
           "--report", str(tmp_path / "r.json"), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:   # not a terminal: one plain line per epoch
        if line.startswith("epoch 1/200"):
            return proc, swap
    raise AssertionError(f"no epoch finished: {proc.wait()} {proc.stdout.read()}")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_ends_with_a_line_and_the_finished_epochs(tmp_path, sig, code):
    proc, swap = start(tmp_path)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    errors = [l for l in proc.stderr.read().splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "interrupted after" in errors[0], errors
    assert f"weights of finished epochs are in {tmp_path / 'w.bin'}" in errors[0]
    report = json.loads((tmp_path / "r.json").read_text())
    done = int(errors[0].split("after ")[1].split(" ")[0])
    assert report["interrupted"] and len(report["epochs"]) == done >= 1
    assert report["test"] is None   # every key is there; the test set never ran
    assert report["memory"]["planned_peak_bytes"] > 0
    assert os.listdir(swap) == []


def test_no_swap_file_is_left_even_after_sigkill(tmp_path):
    proc, swap = start(tmp_path)
    assert os.listdir(swap) == []   # unlinked while the run still uses it
    proc.kill()
    proc.wait(timeout=60)
    assert os.listdir(swap) == []


def test_a_stop_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path):
    """Stopped while its first epoch runs (batches of 2 make it long), a run says that
    no weights were saved, rather than that the finished epochs' weights are there."""
    save = tmp_path / "w.bin"
    cmd = [sys.executable, "-m", "nntrainer_cli", "train",
           os.path.join(REPO, "configs", "lenet_mnist.ini"), "--batch-size", "2",
           "--save", str(save), "--no-run-dir"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stderr.readline()   # the plan's summary comes before the first step
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    errors = [l for l in proc.stderr.read().splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "interrupted after 0 of" in errors[0], errors
    assert "no weights were saved" in errors[0] and not save.exists()
