"""Tabular data as CSV: feature columns and a label column (the last, or the one
`label_column` names or numbers, counting from 1), commas or else semicolons or tabs
between cells, a header row detected when a cell of the first row is not a number but
the one below it is. Labels are class numbers 0..C-1, or class names (numbered in
sorted order, or as the training set numbers them); with a one-value label (an mse
model) the label cell is the target itself. Tables are small: held in memory as float32
once parsed, and every bad row is refused, by line, when the file is opened."""

from __future__ import annotations

import csv

import numpy as np

from .dataset import LARGE, ArrayDataset


def _delimiter(first: str) -> str:
    """Commas, else semicolons, else tabs: whichever the first row holds."""
    return "," if "," in first else ";" if ";" in first else "\t" if "\t" in first else ","


def _rows(path: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every row that is not blank."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    first = next((line for line in lines if line.strip()), "")
    return [(n, r) for n, r in enumerate(csv.reader(lines, delimiter=_delimiter(first)), 1)
            if any(c.strip() for c in r)]


def has_column(path: str, name: str) -> bool:
    """Whether a table's first row names this column (False when it cannot be read);
    reads that row only."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = next((line for line in f if line.strip()), "")
        cells = next(csv.reader([first], delimiter=_delimiter(first)), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return name in [c.strip() for c in cells]


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


class CsvDataset(ArrayDataset):
    def __init__(self, path: str, input_sizes: list[int], label_sizes: list[int], where,
                 need_labels: bool = True, label_column: str | None = None,
                 classes: list[str] | None = None):
        if len(input_sizes) != 1 or len(label_sizes) != 1:
            raise where(f"{path}: a CSV file serves models with one input and one loss")
        try:
            rows = _rows(path)
        except FileNotFoundError:
            raise where(f"data file not found: {path}") from None
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise where(f"cannot read CSV file {path}: {e}") from None
        if not rows:
            raise where(f"{path} holds no rows")
        header, first = None, rows[0][1]
        second = rows[1][1] if len(rows) > 1 else [""] * len(first)
        # a header: a cell that is not a number above one that is (or a lone row of
        # names); a column of class names is not one
        if any(_number(c) is None and (len(rows) == 1 or j < len(second) and
                                       _number(second[j]) is not None)
               for j, c in enumerate(first)):
            header, rows = [c.strip() for c in first], rows[1:]
        width = len(header) if header else len(rows[0][1]) if rows else 0
        if not need_labels and width == input_sizes[0]:
            label = None   # predicting from a table without its labels
        else:
            label = self._label_index(path, header, width, label_column, where)
        features = width - (1 if label is not None else 0)
        if not rows:
            raise where(f"{path} has a header but no rows")
        if features != input_sizes[0]:
            raise where(f"{path} has {features} feature columns but the model's input takes "
                        f"{input_sizes[0]}")
        x = np.empty((len(rows), features), dtype=np.float32)
        cells: list[str] = []
        for i, (line, row) in enumerate(rows):
            if len(row) != width:
                raise where(f"{path} line {line}: {len(row)} cells, expected {width}")
            values = [c for j, c in enumerate(row) if j != label]
            for j, c in enumerate(values):
                v = _number(c)
                if v is None or not np.isfinite(np.float32(v)):   # in float32 range too
                    name = f" ({header[j if label is None or j < label else j + 1]})" \
                        if header else ""
                    raise where(f"{path} line {line} column {j + 1}{name}: {c.strip()!r} is "
                                "not a finite number")
                x[i, j] = v
            if label is not None:
                cells.append(row[label].strip())
        self.x, self.classes = x, None
        self.y = self._labels(path, rows, cells, label_sizes[0], where, classes) \
            if label is not None else np.zeros(len(rows), dtype=np.int64)
        self.onehot = label_sizes[0] > 1
        self.notes = [f"{path}: values beyond {LARGE:g} (largest {np.abs(x).max():g}); "
                      "consider scaling the features"] if np.abs(x).max() > LARGE else []
        self.count = len(x)
        self.order = np.arange(self.count, dtype=np.int64)

    @staticmethod
    def _label_index(path, header, width, label_column, where) -> int | None:
        if label_column is None:
            return width - 1
        if header and label_column in header:
            return header.index(label_column)
        if label_column.isdigit() and 1 <= int(label_column) <= width:
            return int(label_column) - 1
        raise where(f"label_column = {label_column}: {path} has no such column"
                    + (f" (columns: {', '.join(header)})" if header else
                       f" (no header row: give a column number 1..{width})"))

    def _labels(self, path, rows, cells, size, where, classes) -> np.ndarray:
        if size == 1:   # a regression target
            bad = next((i for i, c in enumerate(cells) if _number(c) is None), None)
            if bad is not None:
                raise where(f"{path} line {rows[bad][0]}: label {cells[bad]!r} is not a number")
            return np.array([float(c) for c in cells], dtype=np.float32).reshape(-1, 1)
        numbers = [_number(c) for c in cells]
        if all(v is not None for v in numbers):   # class numbers
            bad = next((i for i, v in enumerate(numbers)
                        if not (np.isfinite(v) and v == int(v) and 0 <= v < size)), None)
            if bad is not None:
                raise where(f"{path} line {rows[bad][0]}: label {cells[bad]} is not a class "
                            f"number 0..{size - 1}")
            return np.array(numbers, dtype=np.int64)
        if classes is None:   # class names, numbered in sorted order
            classes = sorted(set(cells))
            if len(classes) > size:
                raise where(f"{path} has {len(classes)} class names in its label column but "
                            f"the model tells {size} classes apart")
        unknown = next((i for i, c in enumerate(cells) if c not in classes), None)
        if unknown is not None:
            raise where(f"{path} line {rows[unknown][0]}: class {cells[unknown]!r} is not one of "
                        f"the training set's classes ({', '.join(classes[:5])})")
        self.classes = classes
        index = {name: k for k, name in enumerate(classes)}
        return np.array([index[c] for c in cells], dtype=np.int64)
