"""Checkpoints: all a run needs to continue exactly where it stopped, in one file
written atomically (a temp file renamed over the target), so a run killed at any moment
leaves the last good one intact. It is a zip archive (stored, not compressed):

    weights.bin      the weights in NNTrainer's .bin layout (an init file NNTrainer reads)
    state/NAME       each weight's optimizer state, whole (momentum, Adam's m and v),
                     raw float32
    order.npy        the current epoch's record order
    meta.json        where the run stands: epoch, next batch, iteration, the epochs done,
                     the running sums of this epoch, both random generators' states

Tensors stream between the arena and the archive (no copy of the model is made)."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np

from nntrainer_cli.errors import ZIP_READ_ERRORS, DataError
from nntrainer_cli.files import atomic_open

from . import weights as weights_io
from .executor import Executor
from .tensor_files import check_finite

FORMAT = 1


def model_digest(ex: Executor) -> str:
    """What a checkpoint must match: every weight's and optimizer state's name and shape,
    whole (however a budget tiles or splits them), and the batch size (the order and the
    iteration count depend on it)."""
    whole = ex.weight_tensors() + (ex.state_tensors() if ex.optimizer else [])
    text = ";".join(f"{name}{shape}" for name, shape, _ in whole)
    return hashlib.sha256(f"{ex.graph.step_batch};{text}".encode()).hexdigest()[:16]


def save(path: str, ex: Executor, meta: dict, order: np.ndarray) -> None:
    meta = {"format": FORMAT, "model": model_digest(ex), **meta}
    try:
        with atomic_open(path, "wb") as f, \
                zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            with z.open("weights.bin", "w", force_zip64=True) as out:
                weights_io.write_bin(ex, out, meta["epoch"], meta["iteration"], with_adam=False)
            for name, _, parts in ex.state_tensors() if ex.optimizer else []:
                with z.open(f"state/{name}", "w", force_zip64=True) as out:
                    ex.write_tensors(out, parts)   # row parts back to back: the state whole
            with z.open("order.npy", "w", force_zip64=True) as out:
                np.save(out, order)
            z.writestr("meta.json", json.dumps(meta))
    except OSError as e:
        raise DataError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def load(path: str, ex: Executor) -> tuple[dict, np.ndarray]:
    """Weights and optimizer state into the arena; returns the position and the order."""
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"no checkpoint at {path}") from None
    except ZIP_READ_ERRORS as e:
        raise DataError(f"{path} is not a readable checkpoint ({e})") from None
    with z:
        try:
            meta = json.loads(z.read("meta.json"))
            if meta.get("format") != FORMAT:
                raise DataError(f"{path}: checkpoint format {meta.get('format')}, this version "
                                f"reads {FORMAT}")
            if meta.get("model") != model_digest(ex):
                raise DataError(f"{path} was written for another model or batch size; resume "
                                "with the model file and --batch-size it was trained with")
            with z.open("weights.bin") as f:
                for name in ex.weight_names():
                    _read_into(f, ex, name, path)
            for name, _, parts in ex.state_tensors() if ex.optimizer else []:
                with z.open(f"state/{name}") as f:
                    for part in parts:
                        _read_into(f, ex, part, path)
            with z.open("order.npy") as f:
                order = np.load(f)
        except (KeyError, *ZIP_READ_ERRORS) as e:
            raise DataError(f"{path} is not a readable checkpoint ({e})") from None
    return meta, order


def _read_into(f, ex: Executor, name: str, path: str) -> None:
    with ex.persistent(name, write=True) as arr:
        view = arr.data.cast("B")
        if f.readinto(view) != len(view):
            raise DataError(f"{path}: tensor {name} is cut short")
        check_finite(arr, name, path)
