"""Federated averaging: the average itself, the splits, and the oracles that pin the
engine to plain training (one client is `train`; equal IID shards with one full-batch
SGD step each are one centralized step)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import DIGITS, REPO, run, write_records
from nntrainer_cli.runtime import partition
from nntrainer_cli.runtime.federation import fedavg

DIGITS_DIR = os.path.join(REPO, "datasets", "digits")

SGD_MLP = """[Model]
loss = cross
batch_size = {batch}
epochs = 1
[Optimizer]
type = sgd
[LearningRateScheduler]
type = constant
learning_rate = 0.1
[train_set]
path = {train}
[valid_set]
path = {valid}
[in]
type = input
input_shape = 1:1:64
[fc1]
type = fully_connected
unit = 32
activation = relu
[out]
type = fully_connected
unit = 10
activation = softmax
"""


def sgd_model(tmp_path, batch=32, train=None):
    path = tmp_path / "sgd.ini"
    path.write_text(SGD_MLP.format(batch=batch, train=train or f"{DIGITS_DIR}/train.dat",
                                   valid=f"{DIGITS_DIR}/valid.dat"))
    return str(path)


def weights_of(path, model):
    """The saved .bin's weights (without the trailing epoch and iteration counters)."""
    return np.fromfile(path, dtype="<f4")[:-2]


def test_fedavg_is_the_weighted_mean():
    rng = np.random.default_rng(0)
    clients = [([rng.standard_normal((3, 4)).astype(np.float32),
                 rng.standard_normal(5).astype(np.float32)], n) for n in (10, 30, 7)]
    got = fedavg(clients)
    counts = np.array([n for _, n in clients], dtype=np.float64)
    for t, tensor in enumerate(got):
        stacked = np.stack([w[t].astype(np.float64) for w, _ in clients])
        want = np.tensordot(counts / counts.sum(), stacked, axes=1)
        assert tensor.dtype == np.float32
        np.testing.assert_allclose(tensor, want, rtol=1e-6, atol=1e-7)
    alone = fedavg(clients[:1])   # one client: its weights exactly
    assert all(np.array_equal(a, b) for a, b in zip(alone, clients[0][0]))
    before = [t.copy() for w, _ in clients for t in w]
    fedavg(clients)                # the clients' arrays are left as they were
    assert all(np.array_equal(a, b) for a, b in zip(before, [t for w, _ in clients for t in w]))


def test_splits_cover_the_records_once():
    rng = np.random.default_rng(3)
    classes = rng.integers(0, 10, 1000)
    for kind, alpha in (("iid", None), ("dirichlet", 0.3), ("dirichlet", 100.0)):
        shards = partition.split(1000, classes, 8, kind, alpha, np.random.default_rng(1), 32)
        joined = np.concatenate(shards)
        assert sorted(joined) == list(range(1000)), kind
        assert all(len(s) >= 32 and np.all(np.diff(s) > 0) for s in shards)
        again = partition.split(1000, classes, 8, kind, alpha, np.random.default_rng(1), 32)
        assert all(np.array_equal(a, b) for a, b in zip(shards, again))   # seeded
    iid = partition.split(1000, None, 8, "iid", None, np.random.default_rng(1), 1)
    assert {len(s) for s in iid} == {125}

    def classes_held(alpha):   # classes making up 90% of a client's records, on average
        shards = partition.split(1000, classes, 8, "dirichlet", alpha,
                                 np.random.default_rng(2), 10)
        held = []
        for s in shards:
            counts = np.sort(np.bincount(classes[s], minlength=10))[::-1]
            held.append(np.searchsorted(np.cumsum(counts), 0.9 * len(s)) + 1)
        return np.mean(held)
    assert classes_held(0.1) < classes_held(100.0) - 3   # small alpha: few classes each


@pytest.mark.parametrize("spec", ["dirichlet", "dirichlet:0", "dirichlet:-1", "zipf", "iid:2",
                                  "dirichlet:1e400"])
def test_bad_partition_specs_are_one_line(spec):
    r = run("federate", DIGITS, "--clients", "4", "--rounds", "1", "--partition", spec)
    assert r.exit_code == 2, r.output
    assert "--partition" in r.output and "Traceback" not in r.output


def test_too_many_clients_and_no_count_are_clear(tmp_path):
    r = run("federate", DIGITS, "--clients", "50", "--rounds", "1")
    assert r.exit_code == 2 and "1257 training records cannot give 50 clients" in r.output
    r = run("federate", DIGITS, "--rounds", "1")
    assert r.exit_code == 2 and "--clients" in r.output


def test_one_client_trains_exactly_as_train(tmp_path):
    """One client for R rounds of one local epoch is `train` for R epochs: same
    initial weights, data order, generators and iteration count, so the same bytes."""
    model = sgd_model(tmp_path)
    a, b = tmp_path / "train.bin", tmp_path / "fed.bin"
    r = run("train", model, "--epochs", "3", "--save", str(a), "-q")
    assert r.exit_code == 0, r.output
    r = run("federate", model, "--clients", "1", "--rounds", "3", "--save", str(b), "-q")
    assert r.exit_code == 0, r.output
    assert a.read_bytes() == b.read_bytes()
    # and two local epochs per round are two epochs each
    r = run("federate", model, "--clients", "1", "--rounds", "2", "--local-epochs", "2",
            "--save", str(b), "-q")
    r2 = run("train", model, "--epochs", "4", "--save", str(a), "-q")
    assert r.exit_code == r2.exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_equal_iid_shards_one_step_each_is_one_centralized_step(tmp_path):
    """FedSGD: with equal shards, each client one full-batch SGD step, the weighted mean
    of the clients' weights is one full-batch step on all records (the mean of the
    shards' gradients is the full gradient)."""
    rng = np.random.default_rng(5)
    data = np.fromfile(f"{DIGITS_DIR}/train.dat", "<f4").reshape(-1, 74)[:128]
    write_records(tmp_path / "small.dat", data[:, :64], data[:, 64:].argmax(1), 10)
    init = tmp_path / "init.bin"
    model = sgd_model(tmp_path, batch=32, train=tmp_path / "small.dat")
    assert run("train", model, "--epochs", "1", "--save", str(init), "-q").exit_code == 0
    fed, central = tmp_path / "fed.bin", tmp_path / "central.bin"
    r = run("federate", model, "--clients", "4", "--rounds", "1", "--init-weights", str(init),
            "--save", str(fed), "-q", "--seed", str(rng.integers(100)))
    assert r.exit_code == 0, r.output
    r = run("train", model, "--batch-size", "128", "--epochs", "1", "--init-weights",
            str(init), "--save", str(central), "-q")
    assert r.exit_code == 0, r.output
    got, want = weights_of(fed, model), weights_of(central, model)
    moved = np.abs(want - weights_of(init, model)).max()
    assert moved > 1e-3                     # the step did something
    assert np.abs(got - want).max() < 1e-6


def test_dirichlet_digits_learns_and_reports_rounds(tmp_path):
    out = tmp_path / "fed.json"
    r = run("federate", DIGITS, "--clients", "4", "--rounds", "5", "--local-epochs", "2",
            "--partition", "dirichlet:0.5", "--report", str(out))
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    fed = rep["federation"]
    assert len(rep["epochs"]) == len(fed["rounds"]) == 5
    assert sum(fed["shard_sizes"]) == 1257 and len(fed["shard_sizes"]) == 4
    assert all([c["samples"] for c in rnd] == fed["shard_sizes"] for rnd in fed["rounds"])
    assert rep["epochs"][-1]["val_accuracy"] > 0.85
    assert rep["epochs"][-1]["val_accuracy"] > rep["epochs"][0]["val_accuracy"]
    assert "round 5/5" in r.output and "clients (records each)" in r.output
    # memory: the plan, the global weights and their sum, whatever the number of clients
    m = rep["memory"]
    assert m["measured_peak_bytes"] <= 1.05 * (m["planned_peak_bytes"]
                                               + 2 * fed["weights_bytes"])


def test_client_folders(tmp_path):
    """`--partition dir`: one data file per client in the training folder."""
    data = np.fromfile(f"{DIGITS_DIR}/train.dat", "<f4").reshape(-1, 74)
    folder = tmp_path / "clients"
    folder.mkdir()
    for k, part in enumerate((data[:300], data[300:700], data[700:])):
        part.tofile(folder / f"phone{k}.dat")
    model = tmp_path / "m.ini"
    model.write_text(open(DIGITS).read().replace("../datasets/digits/train.dat", str(folder))
                     .replace("../datasets", os.path.join(REPO, "datasets")))
    out = tmp_path / "r.json"
    r = run("federate", str(model), "--partition", "dir", "--rounds", "2", "--report", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["federation"]["shard_sizes"] == [300, 400, 557]
    r = run("federate", str(model), "--partition", "dir", "--clients", "4", "--rounds", "1")
    assert r.exit_code == 2 and "holds 3 client entries, not 4" in r.output


def test_flower_engine_without_flower_says_what_to_install():
    code = ("import sys; sys.modules['flwr'] = None; from nntrainer_cli.cli import main; "
            "main()")
    r = subprocess.run([sys.executable, "-c", code, "federate", DIGITS, "--clients", "2",
                        "--rounds", "1", "--engine", "flower"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: --engine: the flower engine needs Flower: pip install "
                                "'nntrainer_cli[federated]'")


def test_under_a_memory_budget_the_weights_are_the_same(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    common = ["--clients", "4", "--rounds", "2", "--partition", "dirichlet:1", "-q"]
    r = run("federate", DIGITS, *common, "--save", str(a))
    r2 = run("federate", DIGITS, *common, "--save", str(b), "--memory-budget", "50%")
    assert r.exit_code == r2.exit_code == 0, r.output + r2.output
    assert a.read_bytes() == b.read_bytes()


IMAGE_MLP = """[Model]
loss = cross
batch_size = 16
[Optimizer]
type = adam
learning_rate = 0.02
[train_set]
type = dir
path = clients
[test_set]
type = dir
path = test
[in]
type = input
input_shape = 1:8:8
[flat]
type = flatten
[fc]
type = fully_connected
unit = 10
activation = softmax
"""


def test_client_image_folders_lacking_classes(tmp_path):
    """Each client a folder of class folders, some classes missing from some clients:
    classes are numbered by all the names together, in training and in `eval`."""
    Image = importlib.import_module("PIL.Image") if os.environ.get("CI") \
        else pytest.importorskip("PIL.Image")
    data = np.fromfile(f"{DIGITS_DIR}/train.dat", "<f4").reshape(-1, 74)
    x, y = (data[:, :64] * 255).round().astype(np.uint8), data[:, 64:].argmax(1)

    def save(folder, rows):
        for i in rows:
            (folder / str(y[i])).mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].reshape(8, 8)).save(folder / str(y[i]) / f"{i}.png")
    save(tmp_path / "clients" / "alice", np.flatnonzero(y < 7)[:200])    # no 7, 8, 9
    save(tmp_path / "clients" / "bob", np.flatnonzero(y > 0)[200:400])   # no 0
    save(tmp_path / "clients" / "carol", np.arange(900, 1100))
    save(tmp_path / "test", np.arange(1100, 1257))
    model = tmp_path / "m.ini"
    model.write_text(IMAGE_MLP)
    out, weights = tmp_path / "r.json", tmp_path / "w.bin"
    r = run("federate", str(model), "--partition", "dir", "--rounds", "3", "--local-epochs", "2",
            "--report", str(out), "--save", str(weights))
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["federation"]["shard_sizes"] == [200, 200, 200]
    assert rep["classes"] == [str(k) for k in range(10)]
    assert rep["test"]["accuracy"] > 0.7
    r = run("eval", str(model), "--weights", str(weights))
    assert r.exit_code == 0, r.output
    assert f"{rep['test']['accuracy']:.4f}" in r.output


def test_client_tables_name_classes_for_eval(tmp_path):
    """`--partition dir` over CSV tables with class names: `eval` numbers a test table
    that lacks some classes by the names all clients give together, as `federate` did."""
    data = np.fromfile(f"{DIGITS_DIR}/train.dat", "<f4").reshape(-1, 74)
    x, y = data[:, :64], data[:, 64:].argmax(1)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

    def table(path, rows):
        path.write_text("".join(",".join(f"{v:g}" for v in x[i]) + f",{names[y[i]]}\n"
                                for i in rows))
    (tmp_path / "clients").mkdir()
    table(tmp_path / "clients" / "a.csv", np.flatnonzero(y < 7)[:300])
    table(tmp_path / "clients" / "b.csv", np.flatnonzero(y > 2)[:300])
    table(tmp_path / "test.csv", np.flatnonzero(y >= 5)[-120:])   # no zero to four
    model = tmp_path / "m.ini"
    model.write_text(IMAGE_MLP.replace("type = dir\npath = clients", "type = csv\npath = clients")
                     .replace("type = dir\npath = test", "type = csv\npath = test.csv")
                     .replace("input_shape = 1:8:8\n[flat]\ntype = flatten",
                              "input_shape = 1:1:64"))
    out, weights = tmp_path / "r.json", tmp_path / "w.bin"
    r = run("federate", str(model), "--partition", "dir", "--rounds", "3", "--report", str(out),
            "--save", str(weights), "-q")
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["classes"] == sorted(names)
    r = run("eval", str(model), "--weights", str(weights))
    assert r.exit_code == 0, r.output
    assert f"{rep['test']['accuracy']:.4f}" in r.output and rep["test"]["accuracy"] > 0.3
