"""The training loop: epochs of shuffled batches read into the arena, validation after
each epoch, the test set at the end, weights saved atomically after every epoch."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from nntrainer_cli.errors import ConfigError, DataError, TrainingError
from nntrainer_cli.graph.frozen import frozen_prefix
from nntrainer_cli.plan import MemoryPlan, SwapOptions
from .measure import NoTrace, RssDelta, TracedPeak, rss_now_bytes, rss_peak_bytes
from .results import (BestEpoch, EpochResult, EpochState, MemoryFigures, TestResult,
                      TrainReport, best_epoch, swap_figures)

from . import checkpoint
from . import weights as weights_io
from .dataset import Dataset
from .feature_cache import FeatureCache
from .head_run import HeadRun
from .executor import Executor, allocate_arena, kernel_settings
from .profile import profile
from .stopping import StopRequests
from .swap_io import open_swap


WARMUP_STEPS = 3  # left out of the median step time


@dataclass
class TrainOptions:
    epochs: int
    seed: int = 0
    shuffle: bool = True
    quiet: bool = False
    save: str | None = None
    save_best: str | None = None      # the best validation epoch's weights (save_best_path)
    init_weights: str | None = None
    weights_map: dict | None = None   # their tensor names → ours, for a safetensors init
    swap: SwapOptions | None = None   # where the swap file goes, and O_DIRECT or not
    trace_memory: bool = True    # tracemalloc: exact numpy peak, but slower small kernels
    cache_features: bool = True  # reuse a frozen prefix's output after the first epoch
    checkpoint: str | None = None   # written after every epoch, every save_every, and on a stop
    save_every: int | None = None   # iterations between checkpoints
    resume: str | None = None       # a checkpoint to continue from
    on_epoch: object = None   # called with each finished EpochResult and an EpochState
    profile: bool = False     # time every slot of the training steps


class Trainer:
    def __init__(self, cfg, graph, plan: MemoryPlan, optimizer, schedule, data, opts: TrainOptions,
                 head=None):
        self.cfg, self.graph, self.plan = cfg, graph, plan
        self.head = head   # the feature cache's epochs' own plan (Planning.head_plan)
        self.switch: HeadRun | None = None
        self.optimizer, self.schedule = optimizer, schedule
        self.data, self.opts = data, opts
        self.cache: FeatureCache | None = None
        self.stops = StopRequests()   # entered while training: a signal waits for the step
        self.interactive = sys.stderr.isatty()
        tqdm.get_lock()  # its first call imports multiprocessing: keep that out of the measurement

    @property
    def train_sets(self) -> list[Dataset]:
        """What the epochs read: the training set (a federation's clients have more)."""
        return [self.data["train"]]

    def _log(self, text: str) -> None:
        if not self.opts.quiet:
            tqdm.write(text, file=sys.stderr)

    def _evaluate(self, ex: Executor, ds: Dataset) -> tuple[float, float]:
        """The head's plan evaluates the validation set from the feature cache."""
        batch, loss, correct, batches = self.graph.step_batch, 0.0, 0, 0
        size, cache = ex.graph.batch_size, self.cache
        for start, rows in ds.batches(batch, drop_last=False):
            read = (lambda part, views, start=start: cache.feed(  # noqa: E731
                cache.valid_at + ds.indices(start + part * size, size), views)) \
                if self.switch and ex is self.switch.head else self._reader(ds, start)
            l, c = ex.eval_step(rows, read)
            loss, correct, batches = loss + l * rows, correct + c, batches + rows
        return loss / batches, correct / batches

    def _reader(self, ds: Dataset, start: int):
        """What reads a part of the batch at `start` into its views, its memory counted
        apart from training's."""
        size = self.graph.batch_size

        def feed(part: int, views) -> None:
            with self.traced.apart("loader"):
                ds.read(start + part * size, size, views)
        return feed

    def _epoch(self, ex: Executor, epoch: int, rng, iteration: int, first: int = 0,
               sums: tuple = (0.0, 0, 0), ds: Dataset | None = None,
               desc: str | None = None) -> tuple[float, float, int]:
        """One epoch of `ds` (the training set unless given) from batch `first` (a
        resumed one carries the running `sums` of loss, correct rows and rows seen); a
        requested stop ends it after a step."""
        ds, batch = ds or self.data["train"], self.graph.step_batch
        if self.opts.shuffle and first == 0:
            ds.shuffle(rng)
        # gradient steps take whole batches; an enrollment (centroid_knn) takes every record
        whole = self.graph.learns_by_gradient
        steps = ds.count // batch if whole else -(-ds.count // batch)
        bar = tqdm(total=steps, desc=desc or f"epoch {epoch}/{self.opts.epochs}", unit="batch",
                   leave=False, disable=self.opts.quiet or not self.interactive, file=sys.stderr)
        loss_sum, correct, seen = sums
        bar.update(first)
        with bar:
            for k, (start, rows) in enumerate(ds.batches(batch, drop_last=whole)):
                if k < first:
                    continue
                loss, c = self._step(ex, ds, start, rows, iteration)
                self.steps_done += 1
                if not math.isfinite(loss):
                    raise TrainingError(f"the loss became {loss} at epoch {epoch}, iteration "
                                        f"{iteration}; try a smaller learning rate. "
                                        "Weights of this epoch were not saved.")
                iteration += 1
                loss_sum, correct, seen = loss_sum + loss * rows, correct + c, seen + rows
                bar.update(1)
                if k % 10 == 0 or k == steps - 1:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
                every = self.opts.save_every
                if self.stops.signum is not None or every and iteration % every == 0:
                    self._checkpoint(ex, rng, (epoch, k + 1, iteration, (loss_sum, correct, seen)))
                self.stops.check()
        cache = self.cache
        if cache is not None and not cache.ready:
            cache.complete(ds, self.data.get("valid") if self.head else None)
        return loss_sum / seen, correct / seen, iteration

    def _step(self, ex: Executor, ds: Dataset, start: int, rows: int,
              iteration: int) -> tuple[float, int]:
        """One optimizer step from the batch at `start`, read part by part as the step
        reaches it (or from the feature cache); its mean loss and correct rows. Timed
        without the reading."""
        cache, size, reading = self.cache, ex.graph.batch_size, 0.0
        read = self._reader(ds, start)
        head = self.switch is not None and ex is self.switch.head

        def feed(part: int, views) -> None:
            nonlocal reading
            r0, at = time.perf_counter(), start + part * size
            if cache is None:
                read(part, views)
            elif not cache.ready:
                read(part, views)
                cache.took(part, ds.indices(at, size))
            elif head:   # the head's plan reads the features as its input
                cache.feed(ds.indices(at, size), views)
            else:
                cache.read(part, ds.indices(at, size))
            reading += time.perf_counter() - r0
        s0 = time.perf_counter()
        loss, correct = ex.train_step(iteration, feed, rows)
        self.step_seconds[self.steps_done] = time.perf_counter() - s0 - reading
        return loss, correct

    def run(self) -> TrainReport:
        opts, plan = self.opts, self.plan
        small = min(ds.count for ds in self.train_sets)
        batch = self.graph.step_batch
        if small < batch and self.graph.learns_by_gradient:
            message = f"the training set has {small} records, fewer than one batch of {batch}"
            if self.cfg.model.get("batch_size") == batch:
                raise self.cfg.model_section.error(message, "batch_size")
            raise ConfigError(message, key="--batch-size")
        rng = np.random.default_rng(opts.seed)
        report = TrainReport(self.cfg.path, self.graph.step_batch, plan.planner, opts.save)
        stopped = None
        init_rng = np.random.default_rng(opts.seed)
        t0 = time.perf_counter()
        # made before measuring starts: bookkeeping, not training memory
        self.step_seconds = np.zeros(opts.epochs * sum(-(-ds.count // self.graph.step_batch)
                                                       for ds in self.train_sets))
        self.steps_done = 0
        with kernel_settings(), RssDelta() as rss, \
                (TracedPeak() if opts.trace_memory else NoTrace()) as traced:
            self.traced = traced
            plans = [plan] + ([self.head.plan] if self.head else [])
            arena = allocate_arena(max(plans, key=lambda q: q.arena_bytes), opts.swap)
            traced.exclude_since_here()
            io = open_swap(plan, opts.swap, max(q.swap.file_bytes if q.swap else 0 for q in plans))
            try:
                ex = Executor(self.graph, plan, self.optimizer, self.schedule, arena,
                              np.random.default_rng([opts.seed, 1]), io)
                if opts.profile:   # made before measuring resumes: bookkeeping
                    ex.slot_seconds = np.zeros(len(plan.slots))
                self.cache = self._feature_cache(ex)   # outside the arena: reported apart
                if self.head and self.cache:
                    self.switch = HeadRun(ex, Executor(
                        self.head.graph, self.head.plan, self.optimizer, self.schedule,
                        arena, ex.rng, io), opts.swap.directory)
                traced.resume()
                with self.stops:
                    self._train(ex, report, rng, init_rng)
            except KeyboardInterrupt as e:  # the report of the finished epochs goes with it
                stopped = e
            finally:
                if io is not None:
                    io.close()
                if self.switch is not None:
                    self.switch.close()
        swap = swap_figures(plan, io, arena.nbytes)
        report.memory = MemoryFigures(plan.peak_bytes, plan.lower_bound_bytes,
                                      plan.naive_bytes, traced.peak, rss_peak_bytes(),
                                      rss.delta, rss.reset, swap,
                                      sum(ds.held_bytes for ds in
                                          {*self.data.values(), *self.train_sets}),
                                      traced.peaks_apart["loader"],
                                      traced.peaks_apart["writer"] if opts.checkpoint else None)
        report.classes = self.train_sets[0].classes
        report.feature_cache = self.cache.figures(self.switch) if self.cache else None
        done = self.step_seconds[:self.steps_done]
        timed = done[WARMUP_STEPS:] if len(done) > WARMUP_STEPS else done
        report.step_seconds_median = float(np.median(timed)) if len(timed) else None
        if opts.profile and len(done):
            report.profile = profile(self.graph, plan, ex.slot_seconds, len(done),
                                     float(done.sum()))
        report.seconds = time.perf_counter() - t0
        if stopped is not None:
            report.interrupted = True
            stopped.report = report
            raise stopped
        return report

    def _feature_cache(self, ex: Executor) -> FeatureCache | None:
        """A cache of the frozen prefix's output, when there is one worth it (a second
        epoch to use it)."""
        if not self.opts.cache_features or self.opts.epochs < 2:
            return None
        prefix, valid = frozen_prefix(self.graph), self.data.get("valid")
        return FeatureCache(ex, prefix, self.plan, self.data["train"].count,
                            valid.count if valid and self.head else 0) if prefix else None

    def _train(self, ex: Executor, report: TrainReport, rng, init_rng) -> None:
        """Initialize (or load, or resume) the weights, run the epochs, evaluate; fills
        `report`."""
        opts = self.opts
        ex.initialize(init_rng)
        weights_io.load_arrays(ex, self.cfg.backbone_weights)
        self.report = report
        epoch, first, iteration, sums = 1, 0, 0, (0.0, 0, 0)
        if opts.resume:
            epoch, first, iteration, sums = self._resume(ex, rng)
            if 1 < epoch <= opts.epochs and self.switch:   # the head's plan, as uninterrupted
                self.cache.complete(self.data["train"], self.data.get("valid"))
        elif opts.init_weights:
            note = weights_io.load(ex, opts.init_weights, opts.weights_map)
            if note:
                self._log(note)
        for epoch in range(epoch, opts.epochs + 1):
            e0 = time.perf_counter()
            run = self.switch if self.switch and self.cache.ready else None
            now = run.to_head() if run else ex
            loss, acc, iteration = self._epoch(now, epoch, rng, iteration, first, sums)
            first, sums = 0, (0.0, 0, 0)
            row = EpochResult(epoch, loss, acc)
            if "valid" in self.data:
                if run is None and self.switch and self.cache.ready:   # epoch 1 cached it
                    run, now = self.switch, self.switch.to_head()
                row.val_loss, row.val_accuracy = self._evaluate(now, self.data["valid"])
            if run:
                run.to_full()
            row.seconds = time.perf_counter() - e0
            report.epochs.append(row)
            self._tell(ex, row, iteration)
            if opts.save:
                weights_io.save(ex, opts.save, epoch, iteration)
            if opts.save_best and best_epoch(report.epochs) is row:
                weights_io.save(ex, opts.save_best, epoch, iteration)
                report.best = BestEpoch(epoch, row.val_accuracy, row.val_loss, opts.save_best)
            self._checkpoint(ex, rng, (epoch + 1, 0, iteration, sums))
            self._log(_epoch_line(row, opts.epochs))
            self.stops.check()
        if "test" in self.data:
            report.test = TestResult(*self._evaluate(ex, self.data["test"]))

    def _tell(self, ex: Executor, row: EpochResult, iteration: int) -> None:
        """A finished epoch (or round), with where the run stands, to `on_epoch`."""
        if self.opts.on_epoch:
            self.opts.on_epoch(row, EpochState(
                self.schedule(max(iteration - 1, 0)), rss_now_bytes(),
                ex.io.moved_in if ex.io else 0, ex.io.moved_out if ex.io else 0))

    def _checkpoint(self, ex: Executor, rng, position: tuple) -> None:
        """Where the run stands (epoch, next batch, iteration, this epoch's sums), with
        the weights, optimizer state, record order and both random generators."""
        if not self.opts.checkpoint:
            return
        if self.switch is not None and ex is self.switch.head:   # written by the full model
            with self.switch.full_model() as full:
                return self._checkpoint(full, rng, position)
        epoch, batch, iteration, sums = position
        meta = {"epoch": epoch, "batch": batch, "iteration": iteration, "sums": list(sums),
                # vars, not asdict: asdict makes tuples per call that the interpreter
                # keeps on its free list, which tracemalloc counts as a growing peak
                "epochs_done": [dict(vars(r)) for r in self.report.epochs],
                "best": dict(vars(self.report.best)) if self.report.best else None,
                "shuffle_rng": rng.bit_generator.state, "layer_rng": ex.rng.bit_generator.state}
        with self.traced.apart("writer"):
            checkpoint.save(self.opts.checkpoint, ex, meta, self.data["train"].order)
        self.report.checkpoint = self.opts.checkpoint

    def _resume(self, ex: Executor, rng) -> tuple:
        meta, order = checkpoint.load(self.opts.resume, ex)
        ds = self.data["train"]
        if len(order) != ds.count:
            raise DataError(f"{self.opts.resume} was written for {len(order)} training records; "
                            f"the training set has {ds.count}")
        ds.order[...] = order
        rng.bit_generator.state = meta["shuffle_rng"]
        ex.rng.bit_generator.state = meta["layer_rng"]
        self.report.epochs = [EpochResult(**r) for r in meta["epochs_done"]]
        best = meta.get("best")
        if best and best["weights"] == self.opts.save_best:   # the file holds that epoch
            self.report.best = BestEpoch(**best)
        self._log(f"resumed from {self.opts.resume} at epoch {meta['epoch']}, batch "
                  f"{meta['batch']} (iteration {meta['iteration']})")
        return meta["epoch"], meta["batch"], meta["iteration"], tuple(meta["sums"])


def _epoch_line(row: EpochResult, epochs: int) -> str:
    text = (f"epoch {row.epoch}/{epochs}  loss {row.train_loss:.4f}  "
            f"acc {row.train_accuracy:.4f}")
    if row.val_loss is not None:
        text += f"  val_loss {row.val_loss:.4f}  val_acc {row.val_accuracy:.4f}"
    return text + f"  ({row.seconds:.2f}s)"
