"""`--memory-budget auto`: the budget is what this process may still use (its memory
cgroup's limit, else the available RAM) less what it holds and a margin; a plan that
fits it runs without swap, one that does not is planned within it. `plan` says whether
the model fits this machine as it is."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nntrainer_cli import pipeline
from nntrainer_cli.errors import ConfigError
from nntrainer_cli.runtime import measure, swap_io

from helpers import REPO, run

MLP = os.path.join(REPO, "configs", "digits_mlp.ini")
MIB = 2**20


@pytest.fixture
def machine(monkeypatch):
    """Pretend this process may use `limit` bytes and holds `held` of them."""
    def set_to(limit, held):
        monkeypatch.setattr(measure, "memory_limit", lambda: (limit, "cgroup v1 memory limit"))
        monkeypatch.setattr(measure, "held_bytes", lambda: held)
        monkeypatch.setattr(swap_io, "direct_io_works", lambda folder: False)
    return set_to


def test_a_plan_that_fits_runs_without_swap(machine):
    machine(200 * MIB, 40 * MIB)
    p = pipeline.prepare(MLP, budget="auto")
    assert p.plan.swap is None and p.swap is None
    room = 200 * MIB - 40 * MIB - pipeline.AUTO_MARGIN
    assert p.auto == (f"--memory-budget auto: {room / MIB:.1f} MiB (cgroup v1 memory limit "
                      f"200.0 MiB, less this process's 40.0 MiB and an "
                      f"{pipeline.AUTO_MARGIN / MIB:.1f} MiB margin); the plan's "
                      f"{p.plan.peak_bytes / MIB:.1f} MiB fits it: no swap")


def test_a_plan_that_does_not_fit_is_planned_within_what_is_left(machine):
    peak = pipeline.prepare(MLP).plan.peak_bytes
    room = peak // 2
    machine(40 * MIB + pipeline.AUTO_MARGIN + room, 40 * MIB)
    p = pipeline.prepare(MLP, budget="auto")
    assert p.plan.swap.budget == room and p.plan.swap.peak <= room
    assert p.auto.startswith(f"--memory-budget auto: {room / MIB:.1f} MiB (cgroup v1")
    # and it trains to the same weights as without a budget
    res = run("train", MLP, "--epochs", "1", "--memory-budget", "auto", "--no-run-dir")
    assert res.exit_code == 0 and "--memory-budget auto:" in res.output, res.output


def searches_hold(monkeypatch, room: int, growth: list[int]) -> None:
    """Pretend the process holds 40 MiB and may use `room` more beside the margin, and
    that its k-th budget search leaves growth[k] bytes more with it."""
    done = [0]
    search = pipeline.Planning._within

    def counted(self, budget):
        found = search(self, budget)
        done[0] += 1
        return found
    monkeypatch.setattr(pipeline.Planning, "_within", counted)
    monkeypatch.setattr(measure, "memory_limit",
                        lambda: (40 * MIB + pipeline.AUTO_MARGIN + room, "cgroup v1 memory limit"))
    monkeypatch.setattr(measure, "held_bytes", lambda: 40 * MIB + sum(growth[:done[0]]))
    monkeypatch.setattr(swap_io, "direct_io_works", lambda folder: False)
    # a margin to scale: an eighth of it may go to a plan over what is left
    monkeypatch.setattr(pipeline, "AUTO_MARGIN", 16 * 1024)


def test_what_planning_holds_is_left_out_of_the_budget(monkeypatch):
    """A large model's plan holds MiBs of objects: auto measures again once the plan
    exists, and plans again within what is left when the first plan does not fit."""
    room = pipeline.prepare(MLP).plan.peak_bytes * 3 // 4
    searches_hold(monkeypatch, room, [room // 8, 0])
    p = pipeline.prepare(MLP, budget="auto")
    left = room - room // 8
    assert p.plan.swap.budget == left and p.plan.swap.peak <= left
    assert p.auto.startswith(f"--memory-budget auto: {left / MIB:.1f} MiB (cgroup v1")


def test_planned_again_until_what_planning_holds_leaves_room(monkeypatch):
    """Each search leaves some of its objects with the process (less each time): auto
    plans again within what is left until the plan fits."""
    room = pipeline.prepare(MLP).plan.peak_bytes * 3 // 4
    searches_hold(monkeypatch, room, [room // 8, room // 8, 0])
    p = pipeline.prepare(MLP, budget="auto")
    assert p.plan.swap.budget == room - room // 4 and p.plan.swap.peak <= room - room // 4


def test_a_plan_a_little_over_what_is_left_runs(monkeypatch):
    """A search fills its budget, and measuring again finds a little less left: a plan
    over by less than an eighth of the margin runs rather than be searched for again."""
    room = pipeline.prepare(MLP).plan.peak_bytes * 3 // 4
    searches_hold(monkeypatch, room, [0])
    arena = pipeline.prepare(MLP, budget="auto").plan.swap.peak
    over = room - arena + 1024   # leaves the arena 1 KiB short: under an eighth of the margin
    searches_hold(monkeypatch, room, [over, room])   # (a second search would find no room)
    p = pipeline.prepare(MLP, budget="auto")
    assert p.plan.swap.budget == room and p.plan.swap.peak == arena


def test_a_plan_that_never_fits_what_planning_leaves_is_one_line(monkeypatch):
    """When every search leaves more than its plan can spare, auto stops after its
    last search with one line rather than train a plan that does not fit."""
    room = pipeline.prepare(MLP).plan.peak_bytes * 3 // 4
    searches_hold(monkeypatch, room, [0])
    arena = pipeline.prepare(MLP, budget="auto").plan.swap.peak
    monkeypatch.setattr(pipeline, "AUTO_PASSES", 1)
    searches_hold(monkeypatch, room, [room - arena + 8 * 1024 + 1])   # one byte too few
    with pytest.raises(ConfigError, match=r"auto: after 1 searches the plan still does not "
                       r"fit what planning leaves \(cgroup v1 memory limit"):
        pipeline.prepare(MLP, budget="auto")


def test_a_search_that_takes_the_margin_is_one_line(monkeypatch):
    """Planning near a swap floor can hold more than the margin: auto stops with one
    line once it has, rather than go on until the kernel kills the process."""
    room = pipeline.prepare(MLP).plan.peak_bytes // 2
    searches_hold(monkeypatch, room, [])
    searching, search = [], pipeline.Planning._within

    def first_search(self, budget):
        searching.append(budget)
        return search(self, budget)
    monkeypatch.setattr(pipeline.Planning, "_within", first_search)
    monkeypatch.setattr(measure, "held_bytes", lambda: 40 * MIB + (room + 1 if searching else 0))
    with pytest.raises(ConfigError, match=r"auto: planning within this process's memory "
                       r"limit \(cgroup v1 memory limit [\d.]+ MiB\) holds [\d.]+ MiB, leaving "
                       r"less than the [\d.]+ MiB margin for training; give it more memory"):
        pipeline.prepare(MLP, budget="auto")


def test_auto_outside_a_cgroup_neither_checks_planning_nor_bypasses_the_cache(monkeypatch):
    """Without a memory cgroup the limit is the RAM available, not a wall the kernel
    kills at: no ceiling on planning, and the swap file goes through the page cache."""
    room = pipeline.prepare(MLP).plan.peak_bytes // 2
    monkeypatch.setattr(measure, "memory_limit", lambda: (
        40 * MIB + pipeline.AUTO_MARGIN + room, "RAM available to this process"))
    held = iter([40 * MIB, 40 * MIB])   # before and after the one search; no more reads
    monkeypatch.setattr(measure, "held_bytes", lambda: next(held))
    planning = pipeline.Planning(MLP, budget="auto")
    p = planning.prepared()
    assert p.plan.swap is not None and not p.swap.direct
    assert planning._limit is None and not planning.swap.direct


@pytest.mark.parametrize("limited_by,folder_allows,direct", [
    ("cgroup v1 memory limit", True, True), ("cgroup v2 memory.max", True, True),
    ("cgroup v1 memory limit", False, False), ("RAM available to this process", True,
                                               False)])
def test_under_a_memory_cgroup_the_swap_file_bypasses_the_page_cache(
        monkeypatch, limited_by, folder_allows, direct):
    """A cgroup's limit counts the swap file's page cache, and auto's budget has taken
    that room: the swap file is opened with O_DIRECT, where its folder allows it. The
    choice is the plan's: the Planning is as given afterwards."""
    room = pipeline.prepare(MLP).plan.peak_bytes // 2
    monkeypatch.setattr(measure, "memory_limit",
                        lambda: (40 * MIB + pipeline.AUTO_MARGIN + room, limited_by))
    monkeypatch.setattr(measure, "held_bytes", lambda: 40 * MIB)
    monkeypatch.setattr(swap_io, "direct_io_works", lambda folder: folder_allows)
    planning = pipeline.Planning(MLP, budget="auto")
    p = planning.prepared()
    assert planning._limit is None and not planning.swap.direct
    assert p.swap.direct == direct
    assert p.auto.endswith("; the swap file bypasses the page cache, which the limit "
                           "counts") == direct


def test_direct_io_is_probed_in_the_swap_folder(tmp_path, monkeypatch):
    """The probe writes and reads a block of a file of its own there with O_DIRECT,
    and removes it."""
    assert not swap_io.direct_io_works(str(tmp_path / "missing"))
    real = os.open
    opened = []

    def refusing(path, flags, *rest):
        opened.append(flags & os.O_DIRECT)
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *rest)
    monkeypatch.setattr(os, "open", refusing)
    assert not swap_io.direct_io_works(str(tmp_path))
    assert opened[-1] and os.listdir(tmp_path) == []
    monkeypatch.setattr(os, "open", real)
    swap_io.direct_io_works(str(tmp_path))
    assert os.listdir(tmp_path) == []

    def failing(fd, buffers, at):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(os, "pwritev", failing)   # the flag taken, the I/O refused
    assert not swap_io.direct_io_works(str(tmp_path)) and os.listdir(tmp_path) == []


def test_nothing_left_is_one_line(machine):
    machine(30 * MIB, 40 * MIB)
    with pytest.raises(ConfigError, match="auto: no memory is left for training"):
        pipeline.prepare(MLP, budget="auto")


def test_plan_says_whether_the_model_fits_this_machine(machine):
    machine(200 * MIB, 40 * MIB)
    res = run("plan", MLP)
    assert res.exit_code == 0 and "; the arena fits" in res.output, res.output
    machine(40 * MIB + pipeline.AUTO_MARGIN + 1000, 40 * MIB)
    res = run("plan", MLP)
    assert "does not fit: train with --memory-budget auto" in res.output, res.output


def in_cgroup(mib: int, cmd: list[str]) -> subprocess.CompletedProcess:
    """`cmd` in a new memory cgroup (v1) limiting the whole process to `mib` MiB."""
    group = f"/sys/fs/cgroup/memory/nntrainer-test-{os.getpid()}"
    try:
        os.mkdir(group)
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here ({e.strerror}): needs root and "
                    "cgroup v1")
    try:
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as f:
            f.write(str(mib * MIB))
        join = lambda: open(os.path.join(group, "cgroup.procs"), "w").write(str(os.getpid()))  # noqa: E731
        return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=join)
    finally:
        os.rmdir(group)


def test_the_limit_comes_from_the_memory_cgroup():
    out = in_cgroup(300, [sys.executable, "-m", "nntrainer_cli", "train", MLP, "--epochs", "1",
                          "--memory-budget", "auto", "--no-run-dir"])
    assert out.returncode == 0, out.stderr
    assert "(cgroup v1 memory limit 300.0 MiB, less this process's" in out.stderr


def test_a_model_larger_than_its_memory_limit_trains_to_the_same_weights(tmp_path):
    """An MLP whose plan (weights, gradients, Adam state) is larger than the limit of
    its whole process, interpreter included, trains inside that limit with `auto` (whose
    swap file bypasses the page cache, which the limit counts) to the weights of a run
    without any limit."""
    records = np.fromfile(os.path.join(REPO, "datasets", "digits", "train.dat"), "<f4")
    records[:320 * 74].tofile(tmp_path / "train.dat")
    layers = "".join(f"[fc{k}]\ntype = fully_connected\nunit = 1024\nactivation = relu\n"
                     for k in range(8))
    model = tmp_path / "deep.ini"
    model.write_text(f"[Model]\nloss = cross\nbatch_size = 32\nepochs = 1\n"
                     f"[Optimizer]\ntype = adam\nlearning_rate = 0.0001\n"
                     f"[train_set]\npath = {tmp_path / 'train.dat'}\n"
                     f"[in]\ntype = input\ninput_shape = 1:1:64\n{layers}"
                     f"[out]\ntype = fully_connected\nunit = 10\nactivation = softmax\n")
    limit = 80
    assert pipeline.prepare(str(model)).plan.peak_bytes > limit * MIB
    base = [sys.executable, "-m", "nntrainer_cli", "train", str(model), "-q", "--no-shuffle",
            "--no-run-dir"]
    free = subprocess.run(base + ["--save", str(tmp_path / "free.bin")], capture_output=True,
                          text=True)
    assert free.returncode == 0, free.stderr
    held = in_cgroup(limit, base + ["--save", str(tmp_path / "held.bin"), "--memory-budget",
                                    "auto", "--swap-dir", str(tmp_path),
                                    "--report", str(tmp_path / "held.json")])
    assert held.returncode == 0, held.stderr or "killed by the kernel"
    swap = json.loads((tmp_path / "held.json").read_text())["memory"]["swap"]
    assert swap["direct"] and swap["bytes_in"] > 0
    assert (tmp_path / "held.bin").read_bytes() == (tmp_path / "free.bin").read_bytes()
    assert in_cgroup(limit, base).returncode == -9   # without a budget the kernel kills it


def test_a_large_file_is_synced_and_dropped_from_the_page_cache_as_it_is_written(
        tmp_path, monkeypatch):
    """Dirty pages count against the writer's memory cgroup: a weight file written
    whole before one sync filled the 80 MiB limit of the test above (the kernel killed
    it when the disk was slow). atomic_open's binary files sync and drop every
    SYNC_BYTES, and the result is the same bytes."""
    from nntrainer_cli import files

    synced, dropped, real = [], [], os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
    monkeypatch.setattr(os, "posix_fadvise",
                        lambda fd, at, n, advice: dropped.append(advice))
    data = np.arange(10 * files.SYNC_BYTES // 16, dtype=np.float32)   # 2.5 x SYNC_BYTES
    with files.atomic_open(str(tmp_path / "w.bin"), "wb") as f:
        for part in np.split(data, 10):   # quarters of SYNC_BYTES: synced after 4 and 8
            f.write(part.view(np.uint8))
        assert len(synced) == 2 and dropped == [os.POSIX_FADV_DONTNEED] * 2
    assert (tmp_path / "w.bin").read_bytes() == data.tobytes()


def test_the_peak_rss_is_this_programs_not_its_parents():
    """A run started by a large process (a benchmark holding weights) reports its own
    peak: getrusage's maxrss would carry the parent's image across exec."""
    held = bytearray(256 * MIB)   # touched: resident in this process
    held[::4096] = b"x" * len(held[::4096])
    code = "from nntrainer_cli.runtime.measure import rss_peak_bytes; print(rss_peak_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert int(out) < 128 * MIB, f"{int(out) / MIB:.0f} MiB"
    del held
