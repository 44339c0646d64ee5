"""Soak: many short trainings in a row in one process, then one long run under a memory
budget. Resident memory (RSS) and open file descriptors are sampled after each run;
they must stay flat, and nothing may be left in the swap directory.

Runs go through click's in-process runner, as `nntrainer train` would be called from a
script. That runner itself keeps some memory per call, so the same number of calls of
`train --help` (which trains nothing) is measured beside them, and so are as many runs
through the Python API (prepare and Trainer, as an app embedding it would train), as
they are and each followed by release_free_memory() (glibc keeps freed memory otherwise).

    python benchmarks/soak.py [--runs 200] [--long-epochs 30]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile

from click.testing import CliRunner

from nntrainer_cli.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def train(*args: str) -> None:
    res = CliRunner().invoke(main, ["train", *args, "-q"])
    if res.exit_code != 0:
        sys.exit(f"run failed: {res.output}")


def api_run(model: str) -> None:
    """One epoch through the Python API, as an app would train without the CLI."""
    from nntrainer_cli.optim.schedulers import make_schedule
    from nntrainer_cli.pipeline import prepare
    from nntrainer_cli.runtime.data import open_datasets
    from nntrainer_cli.runtime.trainer import Trainer, TrainOptions

    p = prepare(model)
    data = open_datasets(p.cfg, p.graph)
    try:
        Trainer(p.cfg, p.graph, p.plan, p.optimizer, make_schedule(p.cfg), data,
                TrainOptions(epochs=1, quiet=True)).run()
    finally:
        for ds in data.values():
            ds.close()


def api_run_released(model: str) -> None:
    """api_run, then the allocator's free memory handed back, as an app should."""
    from nntrainer_cli.runtime.measure import release_free_memory

    api_run(model)
    release_free_memory()


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--long-epochs", type=int, default=30)
    args = ap.parse_args()
    models = [os.path.join(REPO, "configs", m) for m in
              ("digits_mlp.ini", "digits_cnn.ini", "personal_knn.ini", "personal_head.ini")]
    with tempfile.TemporaryDirectory() as tmp:
        samples = []
        for k in range(args.runs):
            model = models[k % len(models)]
            train(model, "--epochs", "1", "--save", os.path.join(tmp, "w.bin"),
                  "--checkpoint", os.path.join(tmp, "c.ckpt"), "--report",
                  os.path.join(tmp, "r.json"))
            samples.append((rss_kib(), fds()))
        tenth = max(1, args.runs // 5)   # after the warm-up of every config
        first, last = samples[tenth - 1], samples[-1]
        print(f"{args.runs} short runs (4 configs in turn, 1 epoch each): RSS after run "
              f"{tenth} {first[0] / 1024:.1f} MiB, after run {args.runs} "
              f"{last[0] / 1024:.1f} MiB (max {max(s[0] for s in samples) / 1024:.1f}); open "
              f"descriptors {first[1]} -> {last[1]} (max {max(s[1] for s in samples)})")
        before = rss_kib()
        for _ in range(args.runs):
            res = CliRunner().invoke(main, ["train", "--help"])
            assert res.exit_code == 0
        print(f"for comparison, {args.runs} calls of 'train --help' through the same runner: "
              f"RSS {before / 1024:.1f} -> {rss_kib() / 1024:.1f} MiB")
        for run, how in ((api_run, "as they are"),
                         (api_run_released, "each followed by release_free_memory()")):
            before = rss_kib()
            for k in range(args.runs):
                run(models[k % len(models)])
            print(f"{args.runs} runs through the Python API, {how}: RSS {before / 1024:.1f} "
                  f"-> {rss_kib() / 1024:.1f} MiB, open descriptors {fds()}")
        swap = os.path.join(tmp, "swap")
        os.mkdir(swap)
        before = rss_kib()
        train(models[1], "--epochs", str(args.long_epochs), "--memory-budget", "50%",
              "--swap-dir", swap)
        print(f"one run of {args.long_epochs} epochs of digits_cnn.ini at 50% of its plan: "
              f"RSS {before / 1024:.1f} -> {rss_kib() / 1024:.1f} MiB, open descriptors "
              f"{fds()}, files left in the swap directory: {len(os.listdir(swap))}")
        print(f"peak RSS of the process: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")


if __name__ == "__main__":
    main_()
