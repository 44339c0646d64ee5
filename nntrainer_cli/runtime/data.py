"""Training data, read batch by batch straight into the arena's input and label views.

Two formats here: NNTrainer raw files (per record, float32 features of every model
input, then float32 labels of every loss layer; little-endian, no header), read record
by record with os.preadv so the file is never loaded whole; and compact .npz files
(`x`: one row of features per record, uint8 pixels scaled to [0, 1]; `y`: class
numbers, one-hot encoded on reading, or label rows), held in memory as stored. Image
folders (images.py) and CSV tables (tables.py) have modules of their own."""

from __future__ import annotations

import codecs
import os

import numpy as np

from nntrainer_cli.config import ModelConfig
from nntrainer_cli.errors import ZIP_READ_ERRORS, DataError
from nntrainer_cli.graph import LayerGraph

from .dataset import LARGE, ArrayDataset, Dataset
from .images import EXTENSIONS, ImageFolderDataset, class_folders, holds_clients
from .tables import CsvDataset


SCAN_BYTES = 1 << 20   # raw files are checked in chunks of about this size when opened
SNIFF_BYTES = 4096     # the head of a raw file that tells text from floats


def open_dataset(path: str, input_shapes: list[tuple], label_sizes: list[int], where,
                 need_labels: bool = True, kind: str = "auto",
                 label_column: str | None = None, classes: list[str] | None = None) -> Dataset:
    """`where` builds a DataError pointing at the config key that named the data. `kind`
    is the data section's type: file (raw, or .npz by extension), dir (image folders),
    csv; "auto" (for --data) goes by the path. An .npz or CSV file may leave out its
    labels when they are not needed (predict). `classes`: the training set's class
    names, which number the classes of a folder or table given by name."""
    input_sizes = [int(np.prod(s)) for s in input_shapes]
    if kind == "auto":
        kind = "dir" if os.path.isdir(path) or path.lower().endswith(EXTENSIONS) else \
            "csv" if path.lower().endswith(".csv") else "file"
    if kind == "dir":
        return ImageFolderDataset(path, input_shapes, label_sizes, where, need_labels, classes)
    if os.path.isdir(path):
        raise where(f"data path is a directory, not a file: {path} (a folder of images per "
                    "class is 'type = dir')")
    if os.path.exists(path) and not os.path.isfile(path):
        raise where(f"data path is not a regular file: {path}")
    if kind == "csv":
        return CsvDataset(path, input_sizes, label_sizes, where, need_labels, label_column,
                          classes)
    if path.lower().endswith(".npz"):
        return NpzDataset(path, input_sizes, label_sizes, where, need_labels)
    return RawDataset(path, input_sizes, label_sizes, where)


def class_names(path: str, kind: str, label_column: str | None, input_shapes: list[tuple],
                label_sizes: list[int]) -> list[str] | None:
    """The class names a training set gives its labels (class folders, CSV class names),
    by which other data of the model is numbered; None when it gives none or cannot be
    read. For a folder of federated clients' data (one entry per client), the names
    they give together, sorted."""
    try:
        if os.path.isdir(path) and (kind != "dir" or holds_clients(path)):
            named = [class_names(e, kind, label_column, input_shapes, label_sizes)
                     for e in client_entries(path)]
            return sorted({c for names in named if names for c in names}) or None
        if kind == "dir" and os.path.isdir(path):
            return class_folders(path) or None
        if kind == "csv":
            return CsvDataset(path, [int(np.prod(s)) for s in input_shapes], label_sizes,
                              DataError, True, label_column).classes
    except DataError:
        return None
    return None


def client_entries(folder: str) -> list[str]:
    """A federated training folder's entries, one per client, in client order."""
    return [os.path.join(folder, e) for e in sorted(os.listdir(folder))
            if not e.startswith(".")]


def _field(j: int, input_sizes: list[int], label_sizes: list[int]) -> str:
    """Which value of a record float j is, e.g. 'input 0 value 17'."""
    sizes, k = list(input_sizes) + list(label_sizes), 0
    while j >= sizes[k]:
        j, k = j - sizes[k], k + 1
    kind, i = ("input", k) if k < len(input_sizes) else ("label", k - len(input_sizes))
    return f"{kind} {i} value {j}"


def looks_like_text(head: bytes) -> bool:
    """Whether a file's head is text: UTF-8 (a byte-order mark, and a character cut at
    the end, allowed) of printable characters and line breaks. Float32 records are
    almost never that."""
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


class RawDataset(Dataset):
    def __init__(self, path: str, input_sizes: list[int], label_sizes: list[int], where):
        self.path = path
        self.record_bytes = 4 * (sum(input_sizes) + sum(label_sizes))
        self.label = (sum(input_sizes), label_sizes[0]) if len(label_sizes) == 1 else None
        try:
            self.fd = os.open(path, os.O_RDONLY)
            size = os.fstat(self.fd).st_size
        except FileNotFoundError:
            raise where(f"data file not found: {path}") from None
        except IsADirectoryError:
            raise where(f"data file is a directory: {path}") from None
        except OSError as e:
            raise where(f"cannot read data file {path}: {e.strerror}") from None
        floats = self.record_bytes // 4
        if size % self.record_bytes:
            os.close(self.fd)
            raise where(f"{path} has {size} bytes, not a whole number of {self.record_bytes}-byte "
                        f"records ({floats} floats: inputs {'+'.join(map(str, input_sizes))}, "
                        f"labels {'+'.join(map(str, label_sizes))})")
        self.count = size // self.record_bytes
        if self.count == 0:
            os.close(self.fd)
            raise where(f"data file is empty: {path}")
        self.order = np.arange(self.count, dtype=np.int64)
        try:
            self.notes = self._scan(where, input_sizes, label_sizes)
        except BaseException:
            os.close(self.fd)
            raise

    def _scan(self, where, input_sizes: list[int], label_sizes: list[int]) -> list[str]:
        """Read the file once, a chunk at a time, before training: refuse text and values
        that are not finite (naming the record), and warn of values so large that the
        file is likely not float32 data."""
        if looks_like_text(os.pread(self.fd, SNIFF_BYTES, 0)):
            raise where(f"{self.path} looks like a text file (CSV?); raw data files hold "
                        f"float32 records of {self.record_bytes} bytes, no text")
        floats, per = self.record_bytes // 4, max(1, SCAN_BYTES // self.record_bytes)
        column = lambda j: _field(j, input_sizes, label_sizes)  # noqa: E731
        largest, at = 0.0, (0, 0)
        for first in range(0, self.count, per):
            n = min(per, self.count - first)
            chunk = np.frombuffer(os.pread(self.fd, n * self.record_bytes,
                                           first * self.record_bytes), dtype="<f4")
            chunk = chunk.reshape(n, floats)
            bad = ~np.isfinite(chunk)
            if bad.any():
                r, j = np.argwhere(bad)[0]
                raise where(f"{self.path} record {first + r}: {column(j)} is "
                            f"{chunk[r, j]} (not a finite number)")
            big = np.abs(chunk)
            r, j = np.unravel_index(np.argmax(big), big.shape)
            if big[r, j] > largest:
                largest, at = float(big[r, j]), (first + r, j)
        if largest > LARGE:
            return [f"{self.path} record {at[0]}: {column(at[1])} is {largest:.3g}; values "
                    "this large suggest the file is not float32 data of this model's shape"]
        return []

    def class_of(self) -> np.ndarray | None:
        """The one label's argmax per record, when every label is one-hot."""
        if self.label is None:
            return None
        at, size = self.label
        out = np.empty(self.count, np.int64)
        per = max(1, SCAN_BYTES // self.record_bytes)
        for first in range(0, self.count, per):
            n = min(per, self.count - first)
            rows = np.frombuffer(os.pread(self.fd, n * self.record_bytes,
                                          first * self.record_bytes), dtype="<f4")
            labels = rows.reshape(n, -1)[:, at:at + size]
            if not ((labels == 0) | (labels == 1)).all() or (labels.sum(axis=1) != 1).any():
                return None
            out[first:first + n] = labels.argmax(axis=1)
        return out

    def read(self, start: int, batch: int, views: list[np.ndarray]) -> None:
        """Fill row r of every view (inputs then labels) with record order[start + r]."""
        for r, idx in self.records(start, batch):
            buffers = [v[r] for v in views]
            got = os.preadv(self.fd, buffers, idx * self.record_bytes)
            if got != self.record_bytes:
                raise DataError(f"short read from {self.path} at record {idx}")

    def close(self) -> None:
        os.close(self.fd)


class NpzDataset(ArrayDataset):
    def __init__(self, path: str, input_sizes: list[int], label_sizes: list[int], where,
                 need_labels: bool = True):
        if len(input_sizes) != 1 or len(label_sizes) != 1:
            raise where(f"{path}: .npz data serves models with one input and one loss; use "
                        "NNTrainer raw files for more")
        try:
            with np.load(path) as f:
                missing = [k for k in ("x", "y") if k not in f.files]
                if missing == ["y"] and not need_labels:   # predicting: no labels needed
                    x = f["x"]
                    y = np.zeros(len(x) if x.ndim else 0, dtype=np.int64)
                elif missing:
                    raise where(f"{path} has no array '{missing[0]}'; expected 'x' "
                                "(features) and 'y' (labels)")
                else:
                    x, y = f["x"], f["y"]
        except FileNotFoundError:
            raise where(f"data file not found: {path}") from None
        except ZIP_READ_ERRORS as e:
            raise where(f"cannot read data file {path}: {e or type(e).__name__}") from None
        for name, a in (("x", x), ("y", y)):
            if a.ndim == 0 or len(a) == 0:
                raise where(f"{path}: '{name}' must hold one row per record, got shape {a.shape}")
            if a.dtype.kind not in "biuf":   # bool, integers, floats: nothing else is data
                raise where(f"{path}: '{name}' holds {a.dtype} values; expected numbers")
        x = x.reshape(len(x), -1)
        if x.shape[1] != input_sizes[0]:
            raise where(f"{path} has {x.shape[1]} features per record but the model's input "
                        f"takes {input_sizes[0]}")
        self.onehot = y.ndim == 1
        if self.onehot and (not np.issubdtype(y.dtype, np.integer) or len(y) and
                            (y.min() < 0 or y.max() >= label_sizes[0])):
            raise where(f"{path}: labels must be class numbers 0..{label_sizes[0] - 1}")
        if not self.onehot and y.reshape(len(y), -1).shape[1] != label_sizes[0]:
            raise where(f"{path} has labels of {y.reshape(len(y), -1).shape[1]} values but the "
                        f"loss takes {label_sizes[0]}")
        if len(x) != len(y) or len(x) == 0:
            raise where(f"{path}: {len(x)} feature rows but {len(y)} labels")
        self.x, self.y = x, y.reshape(len(y), -1) if not self.onehot else y
        self.notes = []
        for name, a in (("x", self.x), ("y", self.y)):
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                r, j = np.argwhere(~np.isfinite(a.reshape(len(a), -1)))[0]
                raise where(f"{path} record {r}: {name} value {j} is not a finite number")
        self.scale = np.float32(255) if x.dtype == np.uint8 else np.float32(1)
        self.count = len(x)
        self.order = np.arange(self.count, dtype=np.int64)


def record_shapes(graph: LayerGraph) -> tuple[list[tuple], list[int]]:
    """The shape of a record of every model input, and the size of every loss's label."""
    return ([n.ctx.input_shapes[0][1:] for n in graph.inputs],
            [int(np.prod(n.layer.label_shape(n.ctx)[1:])) for n in graph.losses])


def open_datasets(cfg: ModelConfig, graph: LayerGraph, train: bool = True,
                  classes: list[str] | None = None) -> dict[str, Dataset]:
    """Every data section, the training set first: class names it gives (folders, CSV
    class names) number the classes of the others. Without `train` (its path holds
    federated clients' data), `classes` number them."""
    inputs, labels = record_shapes(graph)
    out: dict[str, Dataset] = {}
    try:
        for split in sorted(cfg.data, key=lambda s: s != "train"):
            if split == "train" and not train:
                continue
            loc = cfg.data[split]
            classes = out["train"].classes if "train" in out else classes
            out[split] = open_dataset(cfg.resolve(loc.section, loc.key), inputs, labels,
                                      loc.error, kind=loc.kind, label_column=loc.label_column,
                                      classes=classes)
    except BaseException:
        for ds in out.values():
            ds.close()
        raise
    return out
