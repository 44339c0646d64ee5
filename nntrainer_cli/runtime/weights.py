"""NNTrainer's weight file: for each layer in graph order, its weights in declaration
order as raw little-endian float32; then, for Adam, the tag `adam` and each trainable
weight's m and v; then the epoch and iteration as uint32. A file holding only the
weights is a valid init file. Writes are atomic: a temp file renamed over the target.

A path ending in .safetensors reads and writes that format instead: one float32 tensor
per weight, named as in the plan (`fc1:weight`, `bn:moving_mean`), so PyTorch users can
read what was trained here and bring their own weights in. Both ways stream between the
file and the arena (no copy of the model), with no dependency."""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from nntrainer_cli.errors import DataError
from nntrainer_cli.files import atomic_open

from .executor import Executor


def _adam_names(ex: Executor) -> list[str]:
    adam = ex.optimizer is not None and ex.optimizer.state == ("adam_m", "adam_v")
    return ex.state_names() if adam else []


def _is_safetensors(path: str) -> bool:
    return path.lower().endswith(".safetensors")


def _save_safetensors(ex: Executor, path: str, epoch: int, iteration: int) -> None:
    """The safetensors layout written straight from the arena, with no copy: an 8-byte
    header length, a JSON header (dtype, shape, byte range per tensor), the raw data."""
    names, header, at = ex.weight_names(), {}, 0
    for name in names:
        spec = ex.plan.specs[name]
        header[name] = {"dtype": "F32", "shape": list(spec.shape),
                        "data_offsets": [at, at + spec.nbytes]}
        at += spec.nbytes
    header["__metadata__"] = {"epoch": str(epoch), "iteration": str(iteration)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)   # the format aligns the data to 8 bytes
    try:
        with atomic_open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for name in names:
                with ex.persistent(name, write=False) as arr:
                    f.write(arr.data)
    except OSError as e:
        raise DataError(f"cannot save weights to {path}: {e.strerror}") from None


def save(ex: Executor, path: str, epoch: int, iteration: int, with_adam: bool) -> None:
    if _is_safetensors(path):
        _save_safetensors(ex, path, epoch, iteration)
        return
    try:
        with atomic_open(path, "wb") as f:
            for name in ex.weight_names():
                with ex.persistent(name, write=False) as arr:
                    f.write(arr.data)
            if with_adam:
                f.write(b"adam")
                for name in _adam_names(ex):
                    with ex.persistent(name, write=False) as arr:
                        f.write(arr.data)
            f.write(struct.pack("<II", epoch, iteration))
    except OSError as e:
        raise DataError(f"cannot save weights to {path}: {e.strerror}") from None


def save_arrays(path: str, graph, arrays: dict) -> None:
    """Weights given by plan name (e.g. imported from another format) as an init file:
    NNTrainer's order and layout, weights only. Every weight must be there, in shape."""
    expected = {f"{n.name}:{w.name}": w.shape for n in graph.nodes for w in n.ctx.weights}
    for name, shape in expected.items():
        got = arrays.get(name)
        if got is None or tuple(got.shape) != tuple(shape):
            raise DataError(f"weight {name}: the model needs shape {shape}, the source gives "
                            f"{None if got is None else tuple(got.shape)}")
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise DataError(f"the source has weights the model does not: {', '.join(extra[:5])}")
    try:
        with atomic_open(path, "wb") as f:
            for name in expected:
                f.write(np.ascontiguousarray(arrays[name], dtype="<f4").tobytes())
    except OSError as e:
        raise DataError(f"cannot save weights to {path}: {e.strerror}") from None


def load(ex: Executor, path: str) -> str | None:
    """Read weights (and Adam state when it fits this model) into the arena. Returns a
    note when the file's Adam state was left out: a file saved from the same layers
    with other layers frozen (transfer learning) has state for other weights."""
    weights = ex.weight_names()
    if _is_safetensors(path):
        _load_safetensors(ex, path, weights)
        return None
    need = sum(ex.plan.specs[n].nbytes for n in weights)
    try:
        if not os.path.isfile(path) and os.path.exists(path):
            raise DataError(f"weights file {path} is not a regular file")
        size = os.path.getsize(path)
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read weights file {path}: {e.strerror}") from None
    with f:
        if size < need:
            raise DataError(f"weights file {path} has {size} bytes but the model's weights need "
                            f"{need} ({len(weights)} tensors)")
        for name in weights:
            with ex.persistent(name, write=True) as arr:
                f.readinto(arr.data.cast("B"))
        rest = size - need
        state = _adam_names(ex)
        state_bytes = 4 + sum(ex.plan.specs[n].nbytes for n in state)
        if rest in (0, 8):
            return None
        tag = f.read(4)
        if state and rest in (state_bytes, state_bytes + 8) and tag == b"adam":
            for name in state:
                with ex.persistent(name, write=True) as arr:
                    f.readinto(arr.data.cast("B"))
            return None
        other = rest - len(b"adam") - 8   # Adam state of another set of trainable weights:
        if tag == b"adam" and 0 < other <= 2 * need and other % 8 == 0:  # m and v floats
            return (f"{path}: weights loaded; its Adam state is for other trainable weights "
                    "than this model's, so Adam starts afresh")
        raise DataError(f"weights file {path} has {size} bytes, which does not fit this model: "
                        f"weights take {need}, optional Adam state {state_bytes}, counters 8")


def _load_safetensors(ex: Executor, path: str, weights: list[str]) -> None:
    """Every weight by its plan name, read straight into the arena; a missing, extra,
    mis-shaped or non-float32 tensor is an error naming it."""
    try:
        if not os.path.isfile(path):
            raise DataError(f"cannot read weights file {path}: no such regular file")
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read weights file {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(length))
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is not a safetensors file ({e})") from None
        header.pop("__metadata__", None)
        missing = [n for n in weights if n not in header]
        extra = sorted(set(header) - set(weights))
        if missing or extra:
            raise DataError(f"{path} does not hold this model's weights: "
                            + "; ".join(part for part in (
                                f"missing {', '.join(missing[:4])}" if missing else "",
                                f"unknown {', '.join(extra[:4])}" if extra else "") if part))
        base = 8 + length
        for name in weights:
            spec, entry = ex.plan.specs[name], header[name]
            lo, hi = entry.get("data_offsets", [0, -1])
            if entry.get("dtype") != "F32" or tuple(entry.get("shape", ())) != spec.shape \
                    or hi - lo != spec.nbytes or base + hi > size:
                raise DataError(f"{path}: {name} is {entry.get('dtype')} of shape "
                                f"{tuple(entry.get('shape', ()))}; the model needs F32 of "
                                f"shape {spec.shape}")
            with ex.persistent(name, write=True) as arr:
                f.seek(base + lo)
                f.readinto(arr.data.cast("B"))
