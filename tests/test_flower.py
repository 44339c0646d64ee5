"""The Flower engine: a real Flower server and client processes on 127.0.0.1 agree with
the local engine, survive a client that dies, and fail clearly without a server. Needs
the `federated` extra (CI installs it: there a missing Flower fails, elsewhere skips)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import DIGITS, run

flwr = __import__("flwr") if os.environ.get("CI") else pytest.importorskip("flwr")

COMMAND = [sys.executable, "-m", "nntrainer_cli", "federate", DIGITS]


def test_flower_processes_agree_with_the_local_engine(tmp_path):
    common = ["--clients", "4", "--rounds", "3", "--partition", "dirichlet:1", "--seed", "4",
              "--fraction", "0.5", "-q"]
    out, local = tmp_path / "flower.json", tmp_path / "local.json"
    r = subprocess.run([*COMMAND, *common, "--engine", "flower", "--save",
                        str(tmp_path / "flower.bin"), "--report", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = run("federate", DIGITS, *common, "--save", str(tmp_path / "local.bin"), "--report",
            str(local))
    assert r.exit_code == 0, r.output
    # the same up to the BLAS's summation order: its client processes get one thread
    # each here, this process two (with one thread both, the bytes are the same)
    a = np.fromfile(tmp_path / "flower.bin", "<f4")
    b = np.fromfile(tmp_path / "local.bin", "<f4")
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6
    rep = json.loads(out.read_text())
    fed = rep["federation"]
    assert fed["engine"] == "flower" and len(fed["rounds"]) == 3
    picked = [[c["client"] for c in clients] for clients in fed["rounds"]]
    assert picked == [[c["client"] for c in clients]
                      for clients in json.loads(local.read_text())["federation"]["rounds"]]
    assert all(len(p) == 2 for p in picked) and len({tuple(p) for p in picked}) > 1
    # every client ran in its own process and said how much memory it took
    for clients in fed["rounds"]:
        assert all(c["peak_rss_bytes"] > rep["memory"]["planned_peak_bytes"] for c in clients)
    assert fed["server_peak_rss_bytes"] > 0


def _children(pid: int) -> dict[int, int]:
    """Client id → pid of the processes `pid` started."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"--client-id" in args:
            out[int(args[args.index(b"--client-id") + 1])] = int(entry)
    return out


def test_a_client_that_dies_is_left_out_and_the_run_goes_on(tmp_path):
    out = tmp_path / "r.json"
    server = subprocess.Popen([*COMMAND, "--clients", "3", "--rounds", "4", "--local-epochs",
                               "4", "--engine", "flower", "--report", str(out)],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    try:
        for line in server.stderr:
            lines.append(line)
            if line.startswith("round 1/4"):   # round 2 is under way: kill client 1
                os.kill(_children(server.pid)[1], signal.SIGKILL)
                break
        lines += server.stderr.readlines()
        assert server.wait(120) == 0, "".join(lines)
    finally:
        server.kill()
    rounds = json.loads(out.read_text())["federation"]["rounds"]
    assert len(rounds) == 4 and [c["client"] for c in rounds[0]] == [0, 1, 2]
    assert [c["client"] for c in rounds[-1]] == [0, 2]
    text = "".join(lines)
    assert "Traceback" not in text
    assert "round 4/4  clients 2" in text


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_ends_the_run_after_the_round_and_leaves_no_client(tmp_path, signum, code):
    """Flower's server installs its own signal handlers; ours are taken back, so a
    Ctrl-C (to the whole process group, as a terminal sends it) or a SIGTERM ends the
    run after the round in progress, with the report of the rounds done."""
    out = tmp_path / "r.json"
    server = subprocess.Popen([*COMMAND, "--clients", "2", "--rounds", "30", "--local-epochs",
                               "3", "--engine", "flower", "--report", str(out)],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              start_new_session=True)
    try:
        for line in server.stderr:
            if line.startswith("round 2/30"):
                os.killpg(server.pid, signum)
                break
        rest = server.stderr.read()
        assert server.wait(60) == code, rest
    finally:
        server.kill()
    assert "error: interrupted after" in rest and "Traceback" not in rest
    rep = json.loads(out.read_text())
    assert rep["interrupted"] and 2 <= len(rep["epochs"]) < 30
    assert _children(server.pid) == {}


def test_a_client_started_with_other_settings_is_refused(tmp_path):
    """`--listen`: the server waits for clients started elsewhere; one whose settings
    differ from the server's says so and is left out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    common = ["--clients", "2", "--rounds", "2", "-q"]
    server = subprocess.Popen([*COMMAND, *common, "--engine", "flower", "--listen", address],
                              stderr=subprocess.PIPE, text=True)
    good = subprocess.Popen([*COMMAND, *common, "--connect", address, "--client-id", "0"],
                            stderr=subprocess.PIPE, text=True)
    bad = subprocess.run([*COMMAND, *common, "--connect", address, "--client-id", "1",
                          "--local-epochs", "3"], capture_output=True, text=True, timeout=120)
    try:
        assert bad.returncode == 2
        assert bad.stderr.strip() == ("error: --local-epochs: the server federates with "
                                      "--local-epochs 1, this client was started with 3")
        assert server.wait(120) == 0 and good.wait(60) == 0
    finally:
        server.kill()
        good.kill()


def test_no_server_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # nothing listens here once closed
    t0 = time.monotonic()
    r = run("federate", DIGITS, "--clients", "2", "--rounds", "1", "--connect",
            f"127.0.0.1:{port}", "--client-id", "0", "--wait", "0.5")
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == \
        f"error: --connect: cannot reach a Flower server at 127.0.0.1:{port} (waited 0.5 s)"
    assert "Traceback" not in r.output
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("args, message", [
    (["--connect", "127.0.0.1:1"], "needs both --connect HOST:PORT and --client-id K"),
    (["--connect", "nowhere", "--client-id", "0"], "expected HOST:PORT"),
    (["--connect", "127.0.0.1:1", "--client-id", "5"], "client 5 of 2: ids go from 0 to 1"),
])
def test_bad_client_flags(args, message):
    r = run("federate", DIGITS, "--clients", "2", "--rounds", "1", *args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_clients_tiled_by_their_own_budget_exchange_whole_weights(tmp_path):
    """Weights travel whole: a client whose budget tiles its layers (15% of the digits
    MLP's plan) trains with a server and a client that tile nothing, and the rounds end
    where the local engine's end, within float rounding."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    common = ["--clients", "2", "--rounds", "2", "-q"]
    server = subprocess.Popen([*COMMAND, *common, "--engine", "flower", "--listen", address,
                               "--save", str(tmp_path / "flower.bin")],
                              stderr=subprocess.PIPE, text=True)
    plain = subprocess.Popen([*COMMAND, *common, "--connect", address, "--client-id", "0"],
                             stderr=subprocess.PIPE, text=True)
    tiled = subprocess.run([*COMMAND, *common, "--connect", address, "--client-id", "1",
                            "--memory-budget", "15%"],
                           capture_output=True, text=True, timeout=120)
    try:
        assert tiled.returncode == 0, tiled.stderr
        assert server.wait(120) == 0 and plain.wait(60) == 0
    finally:
        server.kill()
        plain.kill()
    r = run("federate", DIGITS, *common, "--save", str(tmp_path / "local.bin"))
    assert r.exit_code == 0, r.output
    a, b = (np.fromfile(tmp_path / f, "<f4") for f in ("flower.bin", "local.bin"))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
