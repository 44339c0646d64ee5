"""NNTrainer's weight file: for each layer in graph order, its weights in declaration
order as raw little-endian float32; then, for Adam, the tag `adam` and each trainable
weight's m and v; then the epoch and iteration as uint32. A file holding only the
weights is a valid init file. Writes are atomic: a temp file renamed over the target.

A path ending in .safetensors reads and writes that format instead: one float32 tensor
per weight, named as in the plan (`fc1:weight`, `bn:moving_mean`), so PyTorch users can
read what was trained here and bring their own weights in. Both ways stream between the
file and the arena (no copy of the model), with no dependency."""

from __future__ import annotations

import os
import struct

import numpy as np

from nntrainer_cli.errors import DataError
from nntrainer_cli.files import atomic_open

from .executor import Executor
from .tensor_files import check_finite, is_safetensors, load_safetensors, save_safetensors


def _adam_names(ex: Executor) -> list[str]:
    adam = ex.optimizer is not None and ex.optimizer.state == ("adam_m", "adam_v")
    return ex.state_names() if adam else []


def weight_floats(data: bytes) -> np.ndarray:
    """A .bin file's weights as one float array, to compare runs: the floats before
    the `adam` tag (at a float boundary), without the epoch and iteration."""
    body, at = data[:-8], data.find(b"adam")
    while at != -1 and at % 4:
        at = data.find(b"adam", at + 1)
    return np.frombuffer(body[:at] if at != -1 else body, "<f4")


def write_bin(ex: Executor, f, epoch: int, iteration: int, with_adam: bool = True) -> None:
    """NNTrainer's layout into an open binary file, tensor by tensor from the arena; with
    Adam's state when the optimizer is Adam and `with_adam`."""
    ex.write_tensors(f, ex.weight_names())
    adam = _adam_names(ex) if with_adam else []
    if adam:
        f.write(b"adam")
        ex.write_tensors(f, adam)
    f.write(struct.pack("<II", epoch, iteration))


def save(ex: Executor, path: str, epoch: int, iteration: int, with_adam: bool = True) -> None:
    """Atomically; Adam's state goes into a .bin when the optimizer is Adam and
    `with_adam` (federated weights have none of their own)."""
    if is_safetensors(path):
        save_safetensors(ex, path, epoch, iteration)
        return
    try:
        with atomic_open(path, "wb") as f:
            write_bin(ex, f, epoch, iteration, with_adam)
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


def read_whole(ex: Executor) -> list[np.ndarray]:
    """A copy of every weight, whole (a tiled one's tiles put together)."""
    out = [np.empty(shape, np.float32) for _, shape, _ in ex.weight_tensors()]
    for i, row, name in ex.weight_parts():
        with ex.persistent(name, write=False) as v:
            out[i][row:row + len(v)] = v
    return out


def write_whole(ex: Executor, arrays: list[np.ndarray]) -> None:
    """Every weight from a whole array each, into its tensors (tiles) in the arena."""
    for i, row, name in ex.weight_parts():
        with ex.persistent(name, write=True) as v:
            np.copyto(v, arrays[i][row:row + len(v)])


def load_arrays(ex: Executor, arrays: dict) -> None:
    """Weights given by plan name (those an ONNX backbone brought) into the arena."""
    names = [name for name, _, _ in ex.weight_tensors()]
    for i, row, part in ex.weight_parts():   # a tiled weight's row tiles in order
        if names[i] in arrays:
            with ex.persistent(part, write=True) as view:
                np.copyto(view, arrays[names[i]][row:row + len(view)], casting="same_kind")


def load(ex: Executor, path: str, names: dict | None = None) -> str | None:
    """Read weights (and Adam state when it fits this model) into the arena. Returns a
    note when the file's Adam state was left out: a file saved from the same layers
    with other layers frozen (transfer learning) has state for other weights. `names`
    (a --weights-map) renames a safetensors file's tensors to ours."""
    if is_safetensors(path):
        load_safetensors(ex, path, names or {})
        return None
    weights = ex.weight_names()
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
                check_finite(arr, name, path)
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
        adam = f", optional Adam state {state_bytes}" if state else ""
        raise DataError(f"weights file {path} has {size} bytes, which does not fit this model: "
                        f"weights take {need}{adam}, counters 8")
