"""eval and predict: a forward-only plan (no gradients, derivatives or optimizer
state), the same accuracy training reported for the same weights, and predictions in
input order as .npy or .csv."""

import json

import numpy as np

from nntrainer_cli.pipeline import prepare

from helpers import DIGITS, REPO, run


def trained(tmp_path):
    report = tmp_path / "train.json"
    assert run("train", DIGITS, "-q", "--epochs", "3", "--save", str(tmp_path / "w.bin"),
               "--report", str(report)).exit_code == 0
    return str(tmp_path / "w.bin"), json.loads(report.read_text())


def test_eval_gives_the_accuracy_training_reported(tmp_path):
    weights, train = trained(tmp_path)
    res = run("eval", DIGITS, "-w", weights, "--report", str(tmp_path / "eval.json"))
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["accuracy"] == train["test"]["accuracy"]
    assert abs(report["loss"] - train["test"]["loss"]) < 1e-6
    m = report["memory"]
    assert m["planned_peak_bytes"] <= m["measured_peak_bytes"] <= 1.15 * m["planned_peak_bytes"]
    assert m["planned_peak_bytes"] < train["memory"]["planned_peak_bytes"] / 2


def test_the_plan_is_forward_only():
    kinds = {s.kind for s in prepare(DIGITS, inference=True).plan.specs.values()}
    assert kinds <= {"input", "label", "weight", "activation", "temporary"}
    assert {s.phase for s in prepare(DIGITS, inference=True).plan.slots} == {"forward"}


def test_predict_writes_every_record_in_order(tmp_path):
    weights, train = trained(tmp_path)
    test = f"{REPO}/datasets/digits/test.dat"
    for out in ("p.npy", "p.csv"):
        res = run("predict", DIGITS, "-w", weights, "--data", test, "-o", str(tmp_path / out))
        assert res.exit_code == 0, res.output
    probs = np.load(tmp_path / "p.npy")
    table = (tmp_path / "p.csv").read_text().splitlines()
    assert table[0] == "record," + ",".join(map(str, range(10))) + ",predicted"
    rows = [line.split(",") for line in table[1:]]
    assert [r[0] for r in rows] == [str(k) for k in range(len(probs))]
    np.testing.assert_allclose(np.array([r[1:-1] for r in rows], float), probs, rtol=1e-6)
    assert [int(r[-1]) for r in rows] == list(probs.argmax(1))
    labels = np.fromfile(test, dtype="<f4").reshape(-1, 74)[:, 64:].argmax(1)
    assert probs.shape == (len(labels), 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert (probs.argmax(1) == labels).mean() == train["test"]["accuracy"]


def test_a_model_that_swaps_evaluates_and_predicts_in_its_swap_memory(tmp_path):
    """memory_swap = true holds for eval and predict too: the forward pass swaps within
    as little memory as can be, with the results of a run without swap (to float32
    rounding where layers are tiled)."""
    weights, train = trained(tmp_path)
    (tmp_path / "swap").mkdir()
    swap = ["--set", "model.memory_swap=true", "--set", f"model.memory_swap_path={tmp_path}/swap"]
    res = run("eval", DIGITS, "-w", weights, "--report", str(tmp_path / "eval.json"), *swap)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["accuracy"] == train["test"]["accuracy"]
    assert abs(report["loss"] - train["test"]["loss"]) < 1e-6
    sw = report["memory"]["swap"]
    assert sw["bytes_in"] > 0 and sw["resident_peak_bytes"] < report["memory"]["planned_peak_bytes"]
    assert "resident under swap" in res.output
    test = f"{REPO}/datasets/digits/test.dat"
    for name, extra in (("plain.npy", []), ("swapped.npy", swap)):
        res = run("predict", DIGITS, "-w", weights, "--data", test, "-o", str(tmp_path / name),
                  *extra)
        assert res.exit_code == 0, res.output
    # as little memory as can be tiles the dense layers: sums in another order
    plain, swapped = np.load(tmp_path / "plain.npy"), np.load(tmp_path / "swapped.npy")
    np.testing.assert_allclose(swapped, plain, rtol=1e-5, atol=1e-7)
    assert np.array_equal(swapped.argmax(1), plain.argmax(1))
    assert list((tmp_path / "swap").iterdir()) == []


def test_predict_needs_no_labels(tmp_path):
    weights, _ = trained(tmp_path)
    records = np.fromfile(f"{REPO}/datasets/digits/test.dat", dtype="<f4").reshape(-1, 74)
    np.savez(tmp_path / "x.npz", x=records[:, :64])
    assert run("predict", DIGITS, "-w", weights, "--data", f"{REPO}/datasets/digits/test.dat",
               "-o", str(tmp_path / "with.npy")).exit_code == 0
    res = run("predict", DIGITS, "-w", weights, "--data", str(tmp_path / "x.npz"),
              "-o", str(tmp_path / "without.npy"))
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(tmp_path / "with.npy"), np.load(tmp_path / "without.npy"))
    res = run("eval", DIGITS, "-w", weights, "--data", str(tmp_path / "x.npz"))
    assert res.exit_code == 2 and "x.npz has no array 'y'" in res.output, res.output


def test_inference_input_errors(tmp_path):
    weights, _ = trained(tmp_path)
    no_test = tmp_path / "m.ini"
    text = open(DIGITS).read()
    no_test.write_text(text.replace("[test_set]\ntype = file\npath = ../datasets/digits/test.dat\n",
                                    ""))
    res = run("eval", str(no_test), "-w", weights)
    assert res.exit_code == 2 and "no test data" in res.output, res.output
    res = run("predict", DIGITS, "-w", weights, "--data", f"{REPO}/datasets/digits/test.dat",
              "-o", str(tmp_path / "p.txt"))
    assert res.exit_code == 2 and "use .npy or .csv" in res.output
    res = run("eval", DIGITS, "-w", str(tmp_path / "missing.bin"))
    assert res.exit_code == 2 and "missing.bin' does not exist" in res.output
