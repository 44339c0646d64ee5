"""Forward passes with trained weights over a data set, in a forward-only plan (no
gradients, derivatives or optimizer state): evaluation gives loss and accuracy,
prediction the model's output for every record, in input order."""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass

import numpy as np

from nntrainer_cli.errors import DataError
from nntrainer_cli.files import atomic_open
from nntrainer_cli.graph import LayerGraph
from nntrainer_cli.plan import MemoryPlan
from nntrainer_cli.plan.swap_plan import SwapOptions

from . import weights as weights_io
from .dataset import Dataset
from .executor import Executor, allocate_arena, kernel_settings
from .measure import RssDelta, TracedPeak, rss_peak_bytes
from .results import MemoryFigures, swap_figures
from .swap_io import open_swap


@dataclass
class InferenceReport:
    model: str
    weights: str
    data: str
    records: int
    loss: float | None       # None: the model has no loss
    accuracy: float | None
    memory: MemoryFigures
    seconds: float
    classes: list[str] | None = None   # class names by index, when the data names them

    def to_json(self) -> dict:
        return asdict(self)


def infer(model: str, graph: LayerGraph, plan: MemoryPlan, weights: str, ds: Dataset,
          data: str, on_output=None, names: dict | None = None,
          swap: SwapOptions | None = None) -> InferenceReport:
    """Run the data once through the model; `on_output(rows × values)` gets each batch's
    outputs (the last, partial batch only its real rows). A plan that swaps (the model's
    memory_swap) needs `swap`, where its file goes."""
    t0 = time.perf_counter()
    batch, loss, correct = graph.batch_size, 0.0, 0
    with kernel_settings(), RssDelta() as rss, TracedPeak() as traced:
        arena = allocate_arena(plan, swap)
        traced.exclude_since_here()
        io = open_swap(plan, swap)
        try:
            ex = Executor(graph, plan, None, lambda iteration: 0.0, arena, swap_io=io)
            traced.resume()
            weights_io.load(ex, weights, names)   # a training file's optimizer state: unused
            for start, rows in ds.batches(batch, drop_last=False):
                def feed(part, views, start=start):   # one part: not split for inference
                    with traced.apart("loader"):
                        ds.read(start, batch, views)
                step_loss, step_correct = ex.eval_step(rows, feed, on_output)
                loss, correct = loss + step_loss * rows, correct + step_correct
        finally:
            if io is not None:
                io.close()
    memory = MemoryFigures(plan.peak_bytes, plan.lower_bound_bytes, plan.naive_bytes,
                           traced.peak, rss_peak_bytes(), rss.delta, rss.reset,
                           swap_figures(plan, io, arena.nbytes),
                           ds.held_bytes, traced.peaks_apart["loader"])
    has_loss = bool(graph.losses)
    return InferenceReport(model, weights, data, ds.count,
                           loss / ds.count if has_loss else None,
                           correct / ds.count if has_loss else None, memory,
                           time.perf_counter() - t0, ds.classes)


class OutputFile:
    """Predictions written as they come, one row per record: .npy (float32, rows ×
    values) or .csv with a header: the record (its file for images, else its number),
    one column per value (named by class where the values are classes) and the
    predicted class; atomically, like every output file."""

    def __init__(self, path: str, records: int, values: int, names: list[str] | None = None,
                 classes: list[str] | None = None):
        if not path.lower().endswith((".npy", ".csv")):
            raise DataError(f"cannot write predictions to {path}: use .npy or .csv")
        self.path, self.records, self.values = path, records, values
        self.csv = path.lower().endswith(".csv")
        self.names = names   # None: records go by their number
        self.columns = classes if classes and len(classes) == values else \
            [str(k) for k in range(values)]
        self.done = 0

    def __enter__(self):
        self._ctx = atomic_open(self.path, "w" if self.csv else "wb")
        self.f = self._ctx.__enter__()
        if self.csv:
            self.rows = csv.writer(self.f, lineterminator="\n")
            self.rows.writerow(["record", *self.columns, "predicted"])
        else:
            np.lib.format.write_array_header_1_0(self.f, {
                "descr": "<f4", "fortran_order": False, "shape": (self.records, self.values)})
        return self

    def write(self, rows: np.ndarray) -> None:
        if self.csv:
            for row in rows:
                name = self.names[self.done] if self.names else self.done
                self.rows.writerow([name, *(f"{v:.7g}" for v in row),
                                    self.columns[int(row.argmax())]])
                self.done += 1
        else:
            self.f.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
