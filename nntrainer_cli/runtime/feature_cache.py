"""Cached features: the frozen prefix's output for every training record (and, for the
head's own plan, every validation record), kept from the first epoch so that later
epochs run only the trainable part (NNTrainer's transfer learning apps do this by
hand). Epoch 1 stores each batch's boundary tensor right after the slot that computes
it, and computes the records its dropped last batch left out; from epoch 2 the prefix's forward slots do nothing, the boundary slot (one per
micro-batch) copies its rows from the cache, and the labels come from the cache too,
so the data set is not read again.

The cache lives outside the arena: in memory when it is no bigger than the plan
itself (under a budget: than what the budget leaves beside the arena), else in a file
(unlinked at once, like the swap file, and beside it). Under swap the schedule's loads and stores run
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
    """Per part of the batch (one unless the budget split it): its boundary slot, the
    view the prefix's output is complete in, its label views (one per loss), and the
    records in them."""

    def __init__(self, ex, prefix: FrozenPrefix, plan: MemoryPlan, count: int, valid: int = 0):
        node, index = prefix.boundary
        ns = plan.tensors.node_slots
        self.ex, self.prefix = ex, prefix
        self.slots = ex.fwd_slot[node]
        self.boundary = [c.outputs[index] for c in ex.fwd_ctx[node]]
        self.prefix_slots = sorted(s for n in prefix.nodes for s in ns[n].all(Phase.FORWARD))
        self.layers = sorted(prefix.nodes, key=lambda n: ns[n].forward)
        # the validation set's records after the training set's: `valid` of them, for
        # the head's own plan to evaluate (runtime/head_run.py)
        self.valid_at, count = count, count + valid
        feature_shape = (count,) + self.boundary[0].shape[1:]
        at = len(ex.graph.inputs)   # the labels (one per loss) come after the inputs
        label_shapes = [(count,) + v.shape[1:] for v in ex.data_views[0][at:]]
        sizes = [int(np.prod(s)) for s in [feature_shape, *label_shapes]]
        self.bytes = 4 * sum(sizes)
        # the arena may be the head's plan's, when larger (runtime/head_run.py)
        room = plan.swap.budget - ex.arena.nbytes if plan.swap else plan.peak_bytes
        self.where = "memory" if self.bytes <= room else "file"
        if self.where == "memory":
            whole = np.empty(self.bytes // 4, np.float32)
        else:
            with tempfile.TemporaryFile(prefix="nntrainer-features-",   # beside the swap file
                                        dir=ex.io.file.directory if ex.io else None) as f:
                f.truncate(self.bytes)
                whole = np.memmap(f, np.float32, "w+", shape=(self.bytes // 4,))
        ends = np.cumsum(sizes)
        self.features, *self.labels = [whole[end - size:end].reshape(shape) for end, size, shape
                                       in zip(ends, sizes, [feature_shape, *label_shapes])]
        self.filled = np.zeros(count, dtype=bool)
        self.rows: list[np.ndarray | None] = [None] * len(self.slots)   # records per part
        # as read (under swap a label may move out by the boundary slot)
        self.label = [views[at:] for views in ex.data_views]
        self.ready = False
        self.original = [ex.train_steps[s] for s in self.slots]
        for part, s in enumerate(self.slots):
            ex.train_steps[s] = (self._compute_and_store, (part,))

    # --- epoch 1: store what the prefix computes ------------------------------------
    def took(self, part: int, rows: np.ndarray) -> None:
        """A part of the batch of these records was just read: keep its labels."""
        self.rows[part] = rows
        for labels, view in zip(self.labels, self.label[part]):
            labels[rows] = view

    def _compute_and_store(self, part: int) -> None:
        fn, args = self.original[part]
        fn(*args)
        rows = self.rows[part]
        self.features[rows] = self.boundary[part]
        self.filled[rows] = True

    def complete(self, ds: Dataset, valid: Dataset | None = None) -> None:
        """After epoch 1: compute the records no full batch held (and with `valid`, the
        validation set's), then switch to the cache for every later epoch."""
        ex, missing = self.ex, np.flatnonzero(~self.filled[:self.valid_at])
        size, last = len(self.boundary[0]), self.slots[-1]
        steps = list(ex.train_steps)
        for slot in range(last):   # slots up to the boundary: only the prefix computes
            if slot not in self.prefix_slots:
                ex.train_steps[slot] = (_noop, ())
        batch = size * len(self.slots)
        for start in range(0, len(missing), batch):
            rows = np.resize(missing[start:start + batch], batch)  # tail repeats

            def feed(part, views, rows=rows):
                records = rows[part * size:(part + 1) * size]
                ds.read_records(records, views)
                self.took(part, records)
            ex.run_first(last + 1, feed)
        for start in range(0, valid.count if valid else 0, batch):

            def feed(part, views, start=start):   # (a partial batch repeats the first)
                records = valid.indices(start + part * size, size)
                valid.read_records(records, views)
                self.took(part, self.valid_at + records)
            ex.run_first(last + 1, feed)
        ex.train_steps[:] = steps
        for slot in self.prefix_slots:
            ex.train_steps[slot] = (_noop, ())
        for part, s in enumerate(self.slots):
            ex.train_steps[s] = (self._load, (part,))
        self.ready = True

    # --- epochs 2..N: read the cache instead of the data -----------------------------
    def read(self, part: int, rows: np.ndarray) -> None:
        """A part's labels into its label view; its features wait for their slot."""
        self.rows[part] = rows
        for labels, view in zip(self.labels, self.label[part]):
            np.take(labels, rows, axis=0, out=view, mode="clip")

    def feed(self, rows: np.ndarray, views) -> None:
        """These records' features and labels into the head's plan's input and label
        views (runtime/head_run.py)."""
        for cached, view in zip([self.features, *self.labels], views):
            np.take(cached, rows, axis=0, out=view, mode="clip")

    def _load(self, part: int) -> None:
        """(mode="clip": the rows are in range, and the default, "raise", makes the
        whole output in a temporary first)"""
        np.take(self.features, self.rows[part], axis=0, out=self.boundary[part], mode="clip")

    def figures(self, switch=None) -> dict:
        """`switch`: the HeadRun whose plan the cached epochs ran under, if any."""
        out = {"layers": self.layers, "boundary": self.prefix.boundary[0], "bytes": self.bytes,
               "where": self.where}
        if switch:
            head = switch.head.plan
            out["head_plan"] = {"resident_peak_bytes": head.arena_bytes, "tiles": head.tiles,
                                "micro_batches": head.micro_batches,
                                "bytes_in": head.swap.bytes_in, "bytes_out": head.swap.bytes_out,
                                "exchanged_bytes": switch.moved}
        return out
