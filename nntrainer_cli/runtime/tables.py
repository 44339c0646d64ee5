"""Tabular data as CSV: feature columns and a label column (the last, or the one named
by `label_column`), a header row detected when its cells are not numbers. Labels are
class numbers 0..C-1, or class names (numbered in sorted order); with a one-value label
(an mse model) the label cell is the target itself. Tables are small: held in memory as
float32 once parsed, and every bad row is refused, by line, when the file is opened."""

from __future__ import annotations

import csv

import numpy as np

from .dataset import LARGE, ArrayDataset


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


class CsvDataset(ArrayDataset):
    def __init__(self, path: str, input_sizes: list[int], label_sizes: list[int], where,
                 need_labels: bool = True, label_column: str | None = None):
        if len(input_sizes) != 1 or len(label_sizes) != 1:
            raise where(f"{path}: a CSV file serves models with one input and one loss")
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = [(n, r) for n, r in enumerate(csv.reader(f), 1) if any(c.strip() for c in r)]
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
        label = self._label_index(path, header, width, label_column, where)
        features = width - (1 if label is not None else 0)
        if not rows:
            raise where(f"{path} has a header but no rows")
        if not need_labels and label_column is None and width == input_sizes[0]:
            label, features = None, width   # predicting from a table without its labels
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
                if v is None or not np.isfinite(v):
                    name = f" ({header[j if label is None or j < label else j + 1]})" \
                        if header else ""
                    raise where(f"{path} line {line} column {j + 1}{name}: {c.strip()!r} is "
                                "not a finite number")
                x[i, j] = v
            if label is not None:
                cells.append(row[label].strip())
        self.x, self.classes = x, None
        self.y = self._labels(path, rows, cells, label_sizes[0], where) if label is not None \
            else np.zeros(len(rows), dtype=np.int64)
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
        if label_column.isdigit() and int(label_column) < width:
            return int(label_column)
        raise where(f"{path} has no column {label_column!r}"
                    + (f" (columns: {', '.join(header)})" if header else
                       f" (no header row: give a column number 0..{width - 1})"))

    def _labels(self, path, rows, cells, classes, where) -> np.ndarray:
        if classes == 1:   # a regression target
            bad = next((i for i, c in enumerate(cells) if _number(c) is None), None)
            if bad is not None:
                raise where(f"{path} line {rows[bad][0]}: label {cells[bad]!r} is not a number")
            return np.array([float(c) for c in cells], dtype=np.float32).reshape(-1, 1)
        numbers = [_number(c) for c in cells]
        if all(v is not None and v == int(v) for v in numbers):
            y = np.array(numbers, dtype=np.int64)
            bad = np.flatnonzero((y < 0) | (y >= classes))
            if len(bad):
                raise where(f"{path} line {rows[bad[0]][0]}: label {cells[bad[0]]} is not a "
                            f"class number 0..{classes - 1}")
            return y
        names = sorted(set(cells))   # class names, numbered in sorted order
        if len(names) > classes:
            raise where(f"{path} has {len(names)} class names in its label column but the "
                        f"model tells {classes} classes apart")
        self.classes = names
        return np.array([names.index(c) for c in cells], dtype=np.int64)
