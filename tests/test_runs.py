"""Run folders (`train --run-dir`), the HTML page of one (`report`) and the comparison
of several (`compare`), including folders of runs cut short or damaged."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from html.parser import HTMLParser

from helpers import DIGITS, run


def train_run(tmp_path, name, *args):
    folder = tmp_path / name
    r = run("train", DIGITS, "--epochs", "3", "--run-dir", str(folder), "-q", *args)
    assert r.exit_code == 0, r.output
    return folder


class Page(HTMLParser):
    """What the page holds: tags, external references, the chart series, the text."""

    def __init__(self):
        super().__init__()
        self.tags, self.external, self.series, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("#"):
                self.external.append(a[key])
        if tag == "polyline" and a.get("data-series"):
            self.series.append((a["data-series"], len(a["points"].split())))

    def handle_data(self, data):
        self.text.append(data)


def test_a_run_folder_holds_the_whole_run(tmp_path):
    folder = train_run(tmp_path, "a", "--set", "fc1.unit=64")
    assert sorted(os.listdir(folder)) == ["checkpoint.ckpt", "metrics.csv", "model.ini",
                                          "plan.json", "plan.svg", "report.json", "run.json",
                                          "weights.bin"]
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    report = json.loads((folder / "report.json").read_text())
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_accuracy"]) for r in rows] == [e["val_accuracy"]
                                                        for e in report["epochs"]]
    assert all(int(r["planned_bytes"]) == report["memory"]["planned_peak_bytes"] for r in rows)
    assert all(int(r["rss_bytes"]) > 0 and float(r["learning_rate"]) == 0.001 for r in rows)
    # the model as it ran: after --set and --epochs, and it trains from its new place
    text = (folder / "model.ini").read_text()
    assert "unit = 64" in text and "epochs = 3" in text
    r = run("train", str(folder / "model.ini"), "--epochs", "1", "-q")
    assert r.exit_code == 0, r.output
    info = json.loads((folder / "run.json").read_text())
    assert info["machine"]["cores"] == os.cpu_count()
    assert info["command"] == (f"nntrainer train {DIGITS} --epochs 3 --run-dir {folder} "
                               "--quiet --set fc1.unit=64")
    assert report["weights"] == str(folder / "weights.bin")


def test_two_runs_never_share_a_folder(tmp_path):
    folder = train_run(tmp_path, "a")
    before = sorted(os.listdir(folder))
    r = run("train", DIGITS, "--epochs", "1", "--run-dir", str(folder))
    assert r.exit_code == 2 and "already holds a run" in r.output
    assert sorted(os.listdir(folder)) == before


def test_saved_weights_get_a_numbered_run_folder_beside_them(tmp_path):
    weights = tmp_path / "out" / "w.bin"
    weights.parent.mkdir()
    for n in (1, 2):
        r = run("train", DIGITS, "--epochs", "1", "--save", str(weights))
        assert r.exit_code == 0, r.output
        folder = tmp_path / "out" / "runs" / f"w-{n}"
        assert f"run folder: {folder}" in r.output
        assert sorted(os.listdir(folder)) == ["checkpoint.ckpt", "metrics.csv", "model.ini",
                                              "plan.json", "plan.svg", "report.json",
                                              "run.json"]   # the weights went where asked
        assert json.loads((folder / "report.json").read_text())["weights"] == str(weights)
    r = run("train", DIGITS, "--epochs", "1", "--save", str(weights), "--no-run-dir")
    assert r.exit_code == 0 and "run folder" not in r.output
    assert sorted(os.listdir(tmp_path / "out" / "runs")) == ["w-1", "w-2"]
    r = run("train", DIGITS, "--run-dir", str(tmp_path / "x"), "--no-run-dir")
    assert r.exit_code == 2 and "contradict" in r.output and not (tmp_path / "x").exists()


def test_bad_data_leaves_no_run_folder(tmp_path):
    r = run("train", DIGITS, "--save", str(tmp_path / "w.bin"),
            "--set", f"train_set.path={tmp_path / 'missing.npz'}")
    assert r.exit_code == 2 and "missing.npz" in r.output
    assert os.listdir(tmp_path) == []


def test_writing_checkpoints_is_measured_apart_from_training(tmp_path):
    plain = json.loads(run_json(tmp_path, "p.json"))
    folder = train_run(tmp_path, "a")
    kept = json.loads((folder / "report.json").read_text())["memory"]
    assert plain["memory"]["checkpoint_write_peak_bytes"] is None
    assert kept["checkpoint_write_peak_bytes"] > 0
    # what the zip archive allocates is the writer's, not training's
    assert kept["measured_peak_bytes"] < plain["memory"]["measured_peak_bytes"] + \
        kept["checkpoint_write_peak_bytes"] / 2


def run_json(tmp_path, name):
    r = run("train", DIGITS, "--epochs", "3", "-q", "--report", str(tmp_path / name),
            "--save", str(tmp_path / "w.bin"), "--no-run-dir")
    assert r.exit_code == 0, r.output
    return (tmp_path / name).read_text()


def test_the_page_is_self_contained_with_curves_and_the_memory_map(tmp_path):
    folder = train_run(tmp_path, "a")
    r = run("report", str(folder))
    assert r.exit_code == 0, r.output
    page = Page()
    page.feed((folder / "report.html").read_text())
    assert page.external == [] and "script" not in page.tags
    assert ("train", 3) in page.series and ("validation", 3) in page.series
    text = " ".join(page.text)
    assert "Memory map" in text and "Layers" in text and "fc1" in text
    assert page.tags.count("svg") >= 4   # three charts and the memory map


def test_an_interrupted_run_renders_what_it_left(tmp_path):
    folder = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "nntrainer_cli", "train", DIGITS,
                             "--epochs", "200", "--run-dir", str(folder)],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGINT)
            break
    proc.stderr.read()
    assert proc.wait(60) == 130
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert 2 <= len(rows) < 200
    assert json.loads((folder / "report.json").read_text())["interrupted"]
    (folder / "report.json").unlink()          # as if killed before the report
    with open(folder / "metrics.csv", "a") as f:
        f.write("9,0.1")                        # a row cut off mid-write
    r = run("report", str(folder))
    assert r.exit_code == 0, r.output
    assert "lacks report.json" in r.output
    html = (folder / "report.html").read_text()
    assert "the run may not have finished" in html
    r = run("compare", str(folder), "--format", "json")
    assert json.loads(r.output)[0]["epochs"] == f"{len(rows)} (stopped)"


def test_compare_sets_runs_side_by_side(tmp_path):
    a = train_run(tmp_path, "small", "--set", "fc1.unit=32")
    b = train_run(tmp_path, "budget", "--memory-budget", "60%")
    r = run("compare", str(a), str(b))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:2] == ["run", "epochs"] and len(lines) == 4
    rows = json.loads(run("compare", str(a), str(b), "--format", "json").output)
    reports = [json.loads((d / "report.json").read_text()) for d in (a, b)]
    assert [r["planned_peak_bytes"] for r in rows] == [
        rep["memory"]["planned_peak_bytes"] for rep in reports]
    assert rows[0]["budget_bytes"] is None and rows[1]["budget_bytes"] > 0


def test_bad_run_folders_are_one_line(tmp_path):
    r = run("report", str(tmp_path / "none"))
    assert r.exit_code == 2 and "does not exist" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("compare", str(empty))
    assert r.exit_code == 2 and "has no run.json" in r.output
    folder = train_run(tmp_path, "a")
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**info, "format": 99}))
    r = run("report", str(folder))
    assert r.exit_code == 2 and "newer format" in r.output
    (folder / "run.json").write_text('{"format": ')
    r = run("report", str(folder))
    assert r.exit_code == 2 and "is not valid JSON" in r.output
    (folder / "run.json").write_text(json.dumps(info))
    # files cut off mid-write: left out, said so, the rest rendered
    (folder / "report.json").write_text('{"epochs": [')
    svg = (folder / "plan.svg").read_text()
    (folder / "plan.svg").write_text(svg[:len(svg) // 2])
    r = run("report", str(folder))
    assert r.exit_code == 0 and "report.json (damaged), plan.svg (damaged)" in r.output
    html = (folder / "report.html").read_text()
    assert "cut off or damaged, left out" in html and "Memory map" not in html
    assert "Layers" in html   # what follows the damaged map is still there
    r = run("compare", str(folder), str(tmp_path / "none"))
    assert r.exit_code == 2 and str(folder) in r.output and "does not exist" in r.output
    file = tmp_path / "file"
    file.write_text("x")
    r = run("train", DIGITS, "--run-dir", str(file))
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_a_budget_run_shows_its_resident_arena_and_what_it_swapped(tmp_path):
    folder = train_run(tmp_path, "b", "--memory-budget", "60%")
    r = run("report", str(folder), "-o", "-", "-q")   # the page to standard output
    assert r.exit_code == 0 and r.output.startswith("<!doctype html>")
    assert not (folder / "report.html").exists()
    rep = json.loads((folder / "report.json").read_text())
    arena = rep["memory"]["swap"]["resident_peak_bytes"]
    from nntrainer_cli.sizes import human
    assert f"resident arena (under the budget)</td><td class=\"n\">{human(arena)}" in r.output
    assert "tensors go to the swap file" in r.output
    assert 'viewBox="0 0' in r.output   # the memory map scales to the page
    rows = json.loads(run("compare", str(folder), "--format", "json").output)
    assert rows[0]["arena_bytes"] == arena and rows[0]["swap_bytes"] > 0


def test_a_profiled_run_shows_time_per_layer(tmp_path):
    folder = train_run(tmp_path, "p", "--profile", "--no-tracemalloc")
    assert run("report", str(folder), "-q").exit_code == 0
    html = (folder / "report.html").read_text()
    assert "ms/step (--profile)" in html
    prof = json.loads((folder / "report.json").read_text())["profile"]
    fc1 = sum(s["seconds_per_step"] for s in prof["slots"] if s["layer"] == "fc1")
    assert "<td>fc1</td>" in html and f"{1000 * fc1:.3f}</td>" in html


def test_a_federated_run_keeps_one_metrics_row_per_round(tmp_path):
    folder = tmp_path / "fed"
    r = run("federate", DIGITS, "--clients", "3", "--rounds", "2", "--run-dir", str(folder))
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    report = json.loads((folder / "report.json").read_text())
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["val_accuracy"]) for r in rows] == [e["val_accuracy"]
                                                        for e in report["epochs"]]
    assert (folder / "weights.bin").stat().st_size > 0
    assert "federate" in json.loads((folder / "run.json").read_text())["command"]
    r = run("compare", str(folder), str(train_run(tmp_path, "a")))
    assert r.exit_code == 0 and "fed" in r.output, r.output
    r = run("federate", DIGITS, "--rounds", "1", "--clients", "2", "--connect",
            "127.0.0.1:1", "--client-id", "0", "--run-dir", str(tmp_path / "c"))
    assert r.exit_code == 2 and "server's" in r.output
