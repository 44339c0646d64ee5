"""NNTrainer raw data files: per record, float32 features of every model input, then
float32 labels of every loss layer; little-endian, no header. Batches are read
record by record with os.preadv straight into the arena's input and label views, so
the file is never loaded whole and no batch-sized copy is made."""

from __future__ import annotations

import os

import numpy as np

from nntrainer_cli.errors import DataError


class RawDataset:
    def __init__(self, path: str, input_sizes: list[int], label_sizes: list[int], where):
        """`where` builds a DataError pointing at the config key that named the file."""
        self.path = path
        self.record_bytes = 4 * (sum(input_sizes) + sum(label_sizes))
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

    def read(self, start: int, batch: int, views: list[np.ndarray]) -> None:
        """Fill row r of every view (inputs then labels) with record order[start + r]."""
        for r in range(batch):
            idx = int(self.order[(start + r) % self.count])
            buffers = [v[r] for v in views]
            got = os.preadv(self.fd, buffers, idx * self.record_bytes)
            if got != self.record_bytes:
                raise DataError(f"short read from {self.path} at record {idx}")

    def close(self) -> None:
        os.close(self.fd)
