"""A seeded fuzzer over everything a user hands `nntrainer train`: model files (INI and
YAML), data (raw, .npz, CSV, image folders), weights and checkpoint files, and flags.
Each case mutates one input of a small working set-up and runs the command in this
process. What must hold, whatever the input: the exit code is 0, 1 or 2; no
traceback and no "internal error"; no temporary file left behind; every output file
either absent or whole (a report that parses, weights and checkpoints that load).

    python tests/fuzzing.py [--cases 10000] [--seed 0]    (tests/test_fuzz.py runs 500)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import run  # noqa: E402

MODEL = """[Model]
loss = cross
batch_size = 4
epochs = 2
[Optimizer]
type = adam
learning_rate = 0.01
[train_set]
type = {kind}
path = {data}
[in]
type = input
input_shape = 1:4:4
[conv]
type = conv2d
filters = 2
kernel_size = 3,3
padding = same
activation = relu
[drop]
type = dropout
dropout_rate = 0.2
[flat]
type = flatten
[fc]
type = fully_connected
unit = 3
activation = softmax
"""
FLAGS = ["--epochs", "--batch-size", "--seed", "--planner", "--memory-budget", "--lookahead",
         "--save-every", "--set", "--save-best", "--run-dir"]
PATH_FLAGS = {"--save-best", "--run-dir"}   # their values become names in the case's folder
VALUES = ["0", "1", "-1", "3", "2.5", "1e9", "", "x", "50%", "0%", "min", "auto", "best", "greedy",
          "model.epochs=1", "fc.unit=0", "conv.filters=-2", "model.batch_size=100",
          "train_set.type=csv", "nothing", "optimizer.learning_rate=nan", "in.input_shape=1:2"]


def setup(root: str) -> None:
    """The working set-up every case starts from: it trains."""
    rng = np.random.default_rng(0)
    x = rng.random((24, 16)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    np.concatenate([x, np.eye(3)[y]], axis=1).astype("<f4").tofile(os.path.join(root, "d.dat"))
    np.savez(os.path.join(root, "d.npz"), x=(x * 255).astype(np.uint8), y=y.astype(np.uint8))
    with open(os.path.join(root, "d.csv"), "w") as f:
        f.write(",".join(f"p{i}" for i in range(16)) + ",label\n")
        for r, k in zip(x, y):
            f.write(",".join(f"{v:.4f}" for v in r) + f",{k}\n")
    from PIL import Image
    for i, (r, k) in enumerate(zip(x, y)):
        os.makedirs(os.path.join(root, "imgs", str(k)), exist_ok=True)
        Image.fromarray((r.reshape(4, 4) * 255).astype(np.uint8)).save(
            os.path.join(root, "imgs", str(k), f"{i}.png"))
    for kind, data in (("file", "d.dat"), ("file", "d.npz"), ("csv", "d.csv"), ("dir", "imgs")):
        name = "m_" + data.split(".")[-1] if "." in data else "m_dir"
        with open(os.path.join(root, name + ".ini"), "w") as f:
            f.write(MODEL.format(kind=kind, data=data))
    res = run("convert", os.path.join(root, "m_dat.ini"), "--to", "yaml", "-o",
              os.path.join(root, "m_dat.yaml"))
    assert res.exit_code == 0, res.output
    res = run("train", os.path.join(root, "m_dat.ini"), "-q", "--save",
              os.path.join(root, "w.bin"), "--checkpoint", os.path.join(root, "c.ckpt"))
    assert res.exit_code == 0, res.output


def mutate_text(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    kind = rng.randrange(5)
    if kind == 0 and lines:   # lines deleted
        for _ in range(rng.randint(1, 3)):
            if lines:
                del lines[rng.randrange(len(lines))]
    elif kind == 1 and lines:   # a value replaced by something odd
        i = rng.randrange(len(lines))
        head = lines[i].split("=", 1)[0] if "=" in lines[i] else lines[i].split(":", 1)[0]
        lines[i] = head + ("= " if "=" in lines[i] else ": ") + rng.choice(VALUES)
    elif kind == 2 and lines:   # a line repeated elsewhere
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
    elif kind == 3 and lines:   # cells of a table changed
        i = rng.randrange(len(lines))
        cells = lines[i].split(",")
        cells[rng.randrange(len(cells))] = rng.choice(["", "nan", "x", "1e50", "-3", "7"])
        if rng.random() < 0.3:
            cells = cells[:-1]
        lines[i] = ",".join(cells)
    else:
        return mutate_bytes(text.encode(), rng).decode("latin-1")
    return "\n".join(lines) + "\n"


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0 and data:   # cut short
        return bytes(data[:rng.randrange(len(data))])
    if kind == 1:   # bytes appended
        return bytes(data) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    for _ in range(rng.randint(1, 16)):   # bytes changed
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def case(root: str, rng: random.Random) -> tuple[str, list[str]]:
    """Mutate one input in `root`; the command line to run."""
    p = lambda name: os.path.join(root, name)  # noqa: E731
    out = ["--save", p("out.bin"), "--report", p("out.json"), "--checkpoint", p("out.ckpt")]
    kind = rng.choice(["ini", "yaml", "raw", "npz", "csv", "image", "weights", "checkpoint",
                       "flags"])
    model = {"npz": "m_npz.ini", "csv": "m_csv.ini", "image": "m_dir.ini",
             "yaml": "m_dat.yaml"}.get(kind, "m_dat.ini")
    target = {"ini": model, "yaml": model, "raw": "d.dat", "npz": "d.npz", "csv": "d.csv",
              "weights": "w.bin", "checkpoint": "c.ckpt"}.get(kind)
    if kind == "image":
        folder = p(os.path.join("imgs", rng.choice(os.listdir(p("imgs")))))
        target = os.path.join(folder, rng.choice(os.listdir(folder)))
    elif target is not None:
        target = p(target)
    if target is not None:
        with open(target, "rb") as f:
            data = f.read()
        text = kind in ("ini", "yaml", "csv")
        changed = mutate_text(data.decode(), rng).encode("latin-1", "replace") if text \
            else mutate_bytes(data, rng)
        with open(target, "wb") as f:
            f.write(changed)
    args = ["train", p(model), "-q", *out]
    if kind == "weights":
        args += ["--init-weights", p("w.bin")]
    elif kind == "checkpoint":
        args += ["--resume", p("c.ckpt"), "--epochs", "3"]
    elif kind == "flags":
        for _ in range(rng.randint(1, 3)):
            flag, value = rng.choice(FLAGS), rng.choice(VALUES)
            args += [flag, p(value) if flag in PATH_FLAGS and value else value]
    return kind, args


def check(root: str, res) -> list[str]:
    """What went wrong in one case (nothing, for a clean one)."""
    problems = []
    if res.exit_code not in (0, 1, 2):
        problems.append(f"exit code {res.exit_code}")
    if "Traceback" in res.output or "internal error" in res.output:
        problems.append("traceback: " + res.output[-400:])
    left = [f for f in os.listdir(root) if f.startswith(".tmp-")]
    if left:
        problems.append(f"temporary files left: {left}")
    if os.path.exists(os.path.join(root, "out.json")):
        try:
            with open(os.path.join(root, "out.json")) as f:
                json.load(f)
        except ValueError:
            problems.append("a half-written report")
    if os.path.exists(os.path.join(root, "out.ckpt")):
        try:
            with zipfile.ZipFile(os.path.join(root, "out.ckpt")) as z:
                if z.testzip() is not None or "meta.json" not in z.namelist():
                    problems.append("a damaged checkpoint")
        except zipfile.BadZipFile:
            problems.append("a half-written checkpoint")
    return problems


def fuzz(cases: int, seed: int = 0, only: int | None = None
         ) -> tuple[collections.Counter, list[str]]:
    """Run `cases` cases; the outcomes (kind and exit code) and every problem found.
    `only`: run just that case (the ones before it are made, not run, to replay it)."""
    rng = random.Random(seed)
    outcomes, problems = collections.Counter(), []
    with tempfile.TemporaryDirectory() as base:
        clean = os.path.join(base, "clean")
        os.mkdir(clean)
        setup(clean)
        for k in range(cases):
            root = os.path.join(base, f"case{k}")
            shutil.copytree(clean, root)
            state = rng.getstate()
            kind, args = case(root, rng)
            if only is not None and k != only:
                shutil.rmtree(root)
                if k > only:
                    break
                continue
            res = run(*args)
            outcomes[(kind, res.exit_code)] += 1
            problems += [f"case {k} ({kind}, rng state {hash(state) & 0xffff:04x}): {p}\n"
                         f"  nntrainer {' '.join(args)}" for p in check(root, res)]
            shutil.rmtree(root)
    return outcomes, problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=int, help="Run only this case (to look at a problem).")
    args = ap.parse_args()
    outcomes, problems = fuzz(args.cases, args.seed, args.only)
    for (kind, code), n in sorted(outcomes.items()):
        print(f"{kind:10s} exit {code}: {n}")
    print(f"{args.cases} cases, {len(problems)} problems")
    for p in problems[:50]:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
