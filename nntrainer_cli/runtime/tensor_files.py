"""safetensors files, read and written straight between the file and the arena (no copy
of the model, no dependency): an 8-byte header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw data. Tensors are named as in the
plan (`fc1:weight`, `bn:moving_mean`); a weights map renames another framework's names
(a PyTorch state_dict's `fc1.weight`) to ours, transposing where layouts differ."""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import yaml

from nntrainer_cli.errors import ConfigError, DataError
from nntrainer_cli.files import atomic_open


def check_finite(arr: np.ndarray, name: str, path: str) -> None:
    """Loaded weights must be numbers: a NaN would only show later, as a NaN loss. (min
    and max carry any NaN or infinity through, with no temporary the size of `arr`.)"""
    if arr.size and not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        raise DataError(f"weights file {path}: tensor {name} holds a value that is not a "
                        "finite number")


def is_safetensors(path: str) -> bool:
    return path.lower().endswith(".safetensors")


def read_weights_map(path: str) -> dict[str, tuple[str, bool] | None]:
    """YAML `their_name: our_name`, `their_name: {name: our_name, transpose: true}`, or
    `their_name: null` (a tensor to leave out, such as num_batches_tracked)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"malformed YAML: {getattr(e, 'problem', None) or e}", file=path,
                          line=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping of their tensor names to ours", file=path)
    out = {}
    for theirs, ours in raw.items():
        if isinstance(ours, dict) and set(ours) <= {"name", "transpose"} and "name" in ours:
            out[str(theirs)] = (str(ours["name"]), bool(ours.get("transpose", False)))
        elif isinstance(ours, str):
            out[str(theirs)] = (ours, False)
        elif ours is None:
            out[str(theirs)] = None
        else:
            raise ConfigError("expected a name, {name: ..., transpose: true} or null",
                              file=path, key=str(theirs))
    return out


def save_safetensors(ex, path: str, epoch: int, iteration: int) -> None:
    """The safetensors layout written straight from the arena, with no copy: an 8-byte
    header length, a JSON header (dtype, shape, byte range per tensor), the raw data."""
    header, at = {}, 0
    for name, shape, _ in ex.weight_tensors():
        nbytes = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [at, at + nbytes]}
        at += nbytes
    header["__metadata__"] = {"epoch": str(epoch), "iteration": str(iteration)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)   # the format aligns the data to 8 bytes
    try:
        with atomic_open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            ex.write_tensors(f, ex.weight_names())   # a tiled weight's tiles in order
    except OSError as e:
        raise DataError(f"cannot save weights to {path}: {e.strerror}") from None


def load_safetensors(ex, path: str, names: dict) -> None:
    """Every weight by its plan name (after `names`), read straight into the arena; a
    missing, extra, mis-shaped or non-float32 tensor is an error naming it."""
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
        ours = {}   # our name → (their name, their entry, transpose)
        for theirs, entry in header.items():
            target = names.get(theirs, (theirs, False))
            if target is not None:
                ours[target[0]] = (theirs, entry, target[1])
        weights = {name: (shape, parts) for name, shape, parts in ex.weight_tensors()}
        missing = [n for n in weights if n not in ours]
        extra = sorted(ours[n][0] for n in set(ours) - set(weights))
        if missing or extra:
            raise DataError(f"{path} does not hold this model's weights: "
                            + "; ".join(part for part in (
                                f"missing {', '.join(missing[:4])}" if missing else "",
                                f"unknown {', '.join(extra[:4])}" if extra else "") if part))
        base = 8 + length
        for name, (ours_shape, parts) in weights.items():
            theirs, entry, transpose = ours[name]
            shape = tuple(entry.get("shape", ()))
            want = ours_shape[::-1] if transpose else ours_shape
            lo, hi = entry.get("data_offsets", [0, -1])
            if entry.get("dtype") != "F32" or shape != want or \
                    hi - lo != 4 * math.prod(want) or base + hi > size:
                raise DataError(f"{path}: {theirs} is {entry.get('dtype')} of shape {shape}; "
                                f"{name} needs F32 of shape {want}"
                                + (" (before the transpose)" if transpose else ""))
            f.seek(base + lo)
            buf = None
            if transpose:   # one weight-sized buffer, only for a transposing map
                buf = np.empty(shape, dtype="<f4")
                f.readinto(buf.data.cast("B"))
            row = 0
            for part in parts:   # a tiled weight's row tiles follow one another
                with ex.persistent(part, write=True) as arr:
                    if buf is None:
                        f.readinto(arr.data.cast("B"))
                    else:
                        np.copyto(arr, buf.T[row:row + len(arr)])
                    row += len(arr)
                    check_finite(arr, name, path)
