"""Cached features: the frozen prefix's output for every training record, kept from the
first epoch so that later epochs run only the trainable part (NNTrainer's transfer
learning apps do this by hand). Epoch 1 stores each batch's boundary tensor right
after the slot that computes it, and computes the records its dropped last batch left
out; from epoch 2 the prefix's forward slots do nothing, the boundary slot copies the
batch's rows from the cache, and the labels come from the cache too, so the data set
is not read again.

The cache lives outside the arena: in memory when it is no bigger than the plan
itself (under a budget: than what the budget leaves beside the arena), else in a file
(unlinked at once, like the swap file). Under swap the schedule's loads and stores run
as planned around the slots that now do nothing, so it stays valid. Each cached value
is exactly what the prefix computed for that record, so results equal running the
prefix every epoch up to the summation order of a batch's matrix products."""

from __future__ import annotations

import tempfile

import numpy as np

from nntrainer_cli.graph.frozen import FrozenPrefix
from nntrainer_cli.layers.base import Phase
from nntrainer_cli.plan import MemoryPlan

from .dataset import Dataset


def _noop() -> None:
    pass


class FeatureCache:
    def __init__(self, ex, prefix: FrozenPrefix, plan: MemoryPlan, count: int):
        node, index = prefix.boundary
        ns = plan.tensors.node_slots
        self.ex, self.prefix = ex, prefix
        self.slot = ns[node].forward
        self.boundary = ex.fwd_ctx[node].outputs[index]
        self.prefix_slots = sorted(s for n in prefix.nodes for s in ns[n].all(Phase.FORWARD))
        self.layers = sorted(prefix.nodes, key=lambda n: ns[n].forward)
        feature_shape = (count,) + self.boundary.shape[1:]
        label_shape = (count,) + ex.label_views[0].shape[1:]
        self.bytes = 4 * (int(np.prod(feature_shape)) + int(np.prod(label_shape)))
        room = plan.swap.budget - plan.swap.peak if plan.swap else plan.peak_bytes
        self.where = "memory" if self.bytes <= room else "file"
        if self.where == "memory":
            self.features = np.empty(feature_shape, np.float32)
            self.labels = np.empty(label_shape, np.float32)
        else:
            with tempfile.TemporaryFile(prefix="nntrainer-features-") as f:
                f.truncate(self.bytes)
                whole = np.memmap(f, np.float32, "w+", shape=(self.bytes // 4,))
            split = int(np.prod(feature_shape))
            self.features = whole[:split].reshape(feature_shape)
            self.labels = whole[split:].reshape(label_shape)
        self.filled = np.zeros(count, dtype=bool)
        self.rows: np.ndarray | None = None   # the records of the batch in the views
        self.label = ex.label_views[0]   # as read (under swap it may move out by the slot)
        self.ready = False
        self.original = ex.train_steps[self.slot]
        ex.train_steps[self.slot] = (self._compute_and_store, ())

    # --- epoch 1: store what the prefix computes ------------------------------------
    def took(self, rows: np.ndarray) -> None:
        """The batch of these records was just read: keep its labels."""
        self.rows = rows
        self.labels[rows] = self.label

    def _compute_and_store(self) -> None:
        fn, args = self.original
        fn(*args)
        self.features[self.rows] = self.boundary
        self.filled[self.rows] = True

    def complete(self, ds: Dataset) -> None:
        """After epoch 1: compute the records no full batch held, then switch to the
        cache for every later epoch."""
        ex, missing = self.ex, np.flatnonzero(~self.filled)
        batch = len(self.boundary)
        steps = list(ex.train_steps)
        for slot in range(self.slot):   # slots up to the boundary: only the prefix computes
            if slot not in self.prefix_slots:
                ex.train_steps[slot] = (_noop, ())
        for start in range(0, len(missing), batch):
            rows = np.resize(missing[start:start + batch], batch)  # tail repeats
            ds.read_records(rows, ex.data_views)
            self.took(rows)
            ex.run_first(self.slot + 1)
        ex.train_steps[:] = steps
        for slot in self.prefix_slots:
            ex.train_steps[slot] = (_noop, ())
        ex.train_steps[self.slot] = (self._load, ())
        self.ready = True

    # --- epochs 2..N: read the cache instead of the data -----------------------------
    def read(self, rows: np.ndarray) -> None:
        """The batch's labels into the label view; its features wait for their slot."""
        self.rows = rows
        np.take(self.labels, rows, axis=0, out=self.label)

    def _load(self) -> None:
        np.take(self.features, self.rows, axis=0, out=self.boundary)

    def figures(self) -> dict:
        return {"layers": self.layers, "boundary": self.prefix.boundary[0], "bytes": self.bytes,
                "where": self.where}
