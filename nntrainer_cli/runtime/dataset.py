"""What every data set gives the training loop: a record count, an order it shuffles,
batches of (start, rows), and `read` filling the arena's input and label views."""

from __future__ import annotations

import numpy as np

LARGE = 1e6   # a value beyond this in data is worth a warning


class Dataset:
    count: int
    order: np.ndarray
    notes: list[str]   # warnings about the data, for the user
    classes: list[str] | None = None   # class names by index, where the data names them

    @property
    def held_bytes(self) -> int:
        """Memory the loader keeps between batches (arrays held, file lists)."""
        return 0

    def class_of(self) -> np.ndarray | None:
        """Each record's class number, where labels are classes (to split by class)."""
        return None

    def record_names(self) -> list[str] | None:
        """What each record is called in predictions, where the data names it (image
        files); None: by its number."""
        return None

    def shuffle(self, rng: np.random.Generator) -> None:
        rng.shuffle(self.order)

    def batches(self, batch: int, drop_last: bool):
        """Yield (start, rows): rows < batch only for a final partial batch, which is
        padded with records from the start of the order."""
        full = self.count // batch
        for b in range(full):
            yield b * batch, batch
        rest = self.count - full * batch
        if rest and not drop_last:
            yield full * batch, rest

    def records(self, start: int, batch: int):
        for r in range(batch):
            yield r, int(self.order[(start + r) % self.count])

    def indices(self, start: int, batch: int) -> np.ndarray:
        """The records of the batch at `start`, as `read` fills it."""
        return self.order[np.arange(start, start + batch) % self.count]

    def read_records(self, rows: np.ndarray, views: list[np.ndarray]) -> None:
        """These records (one per view row), in this order."""
        order, self.order = self.order, rows
        try:
            self.read(0, len(rows), views)
        finally:
            self.order = order

    def close(self) -> None:
        pass


class ArrayDataset(Dataset):
    """Records held in memory: features `x` (one row per record, divided by `scale`)
    and labels `y`, class numbers when `onehot`, else rows of label values."""
    x: np.ndarray
    y: np.ndarray
    onehot: bool
    scale = np.float32(1)

    @property
    def held_bytes(self) -> int:
        return self.x.nbytes + self.y.nbytes

    def class_of(self) -> np.ndarray | None:
        return self.y if self.onehot else None

    def read(self, start: int, batch: int, views: list[np.ndarray]) -> None:
        features, labels = views
        for r, idx in self.records(start, batch):
            np.divide(self.x[idx], self.scale, out=features[r].reshape(-1))
            row = labels[r].reshape(-1)
            if self.onehot:
                row.fill(0)
                row[self.y[idx]] = 1
            else:
                np.copyto(row, self.y[idx], casting="unsafe")
