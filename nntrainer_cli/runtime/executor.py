"""Runs one training or evaluation iteration over the planned arena.

The arena is one numpy buffer allocated once; every tensor is a view at its planned
offset (aliases share their root's bytes). Contexts of views are built once, and the
slots run in the planned order, with the swap schedule's loads and stores around them,
so what executes is exactly what was planned."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from nntrainer_cli.errors import DataError
from nntrainer_cli.graph import LayerGraph
from nntrainer_cli.layers import RunContext
from nntrainer_cli.layers.base import Phase
from nntrainer_cli.plan import MemoryPlan
from nntrainer_cli.plan.specs import ALIGN
from nntrainer_cli.plan.swap_plan import SwapOptions

from .persistent import PersistentTensors
from .swap_io import Job


# numpy buffers broadcasting operations (a bias add, a row-wise softmax) in chunks of
# `bufsize` elements; its default (8192 elements) would be an unplanned 32 KiB temporary
# per kernel, larger than some whole models. 1024 elements costs no measurable speed.
KERNEL_BUFSIZE = 1024
CLIP_EPSILON = 1e-6


@contextlib.contextmanager
def kernel_settings():
    """Small iterator buffers, and no floating-point warnings: a diverging run is
    caught by the trainer's check of the loss, with one clear message."""
    old = np.setbufsize(KERNEL_BUFSIZE)
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        np.setbufsize(old)


def allocate_arena(plan: MemoryPlan, swap: SwapOptions | None = None) -> np.ndarray:
    """The one large allocation of a run: every tensor lives in it, from a cache line
    (a disk block for direct swap I/O)."""
    align = swap.unit if swap is not None else ALIGN
    try:
        raw = np.zeros(plan.arena_bytes + align, dtype=np.uint8)
    except (MemoryError, ValueError):
        raise DataError(f"the plan needs an arena of {plan.arena_bytes:,} bytes, more than "
                        "this machine can allocate; a --memory-budget makes it smaller") from None
    start = -raw.ctypes.data % align
    return raw[start:start + plan.arena_bytes]


class Executor(PersistentTensors):
    """Views and contexts are made once. Without swap each tensor has one view; under a
    budget it has one per residency (a stay in the arena between swaps), and each slot's
    context holds the views resident at that slot; its weights, gradients and temps only
    where the plan has the slot use them, with or without swap alike, so a layer never
    sees stale bytes nor finds a tensor only because nothing evicted it."""

    def __init__(self, graph: LayerGraph, plan: MemoryPlan, optimizer, schedule,
                 arena: np.ndarray | None = None, rng: np.random.Generator | None = None,
                 swap_io=None):
        self.graph, self.plan = graph, plan
        self.rng = rng or np.random.default_rng(0)
        self.optimizer, self.schedule = optimizer, schedule
        self.parts = graph.micro_batches   # the step's batch in parts (plan/interleave.py)
        self.state_from = 0   # the iteration the optimizer's state (and step count) began
        self.slot_seconds: np.ndarray | None = None   # per slot, summed (train --profile)
        self.arena = allocate_arena(plan) if arena is None else arena
        self.io = swap_io
        self.places = self._placements()
        ts = plan.tensors
        self.slot_ctx = [self._context(s) if s.node in graph.by_name else None
                         for s in plan.slots]
        # per node and part: the context of its forward slot (its last tile's), after
        # which its output is complete
        self.fwd_ctx: dict[str, list[RunContext]] = {n.name: [None] * self.parts
                                                     for n in graph.nodes}
        self.fwd_slot: dict[str, list[int]] = {n.name: [0] * self.parts for n in graph.nodes}
        first: dict[int, int] = {}   # per part, its first slot
        for s in plan.slots:
            first.setdefault(s.micro, s.index)
            if s.phase == Phase.FORWARD and not s.gather:
                self.fwd_ctx[s.node][s.micro] = self.slot_ctx[s.index]
                self.fwd_slot[s.node][s.micro] = s.index
        # the slot before which a part's records are read: its first
        self.feed_at = {slot: part for part, slot in first.items()}
        # per part: the views a batch's records are read into, inputs then labels
        self.data_views = [
            [self.view(ts.local(f"{n.name}:input", p), at) for n in graph.inputs] +
            [self.view(ts.local(f"{n.name}:label", p), at) for n in graph.losses]
            for at, p in self.feed_at.items()]
        self.loss_names = {n.name for n in graph.losses}
        self.loss_ctx = [[c for c in self.slot_ctx if c is not None and c.node in
                          self.loss_names and c.part == p] for p in range(self.parts)]
        # the model's output: the loss layer's (probabilities for cross-entropy), else the
        # last layer's; read right after its forward slot
        self.metric_node = graph.losses[0].name if graph.losses else graph.nodes[-1].name
        self.metric_at = {s: p for p, s in enumerate(self.fwd_slot[self.metric_node])}
        # evaluation: forward slots up to the last (the parts' backward slots between,
        # run one after another, are skipped), with every swap step on the way
        self.eval_slots = 1 + max(s.index for s in plan.slots if s.phase == Phase.FORWARD)
        self.weights = [(n, w) for n in graph.nodes for w in n.ctx.weights]
        # l2norm's loss term: per forward slot (of the first part), (which l2norm
        # weight, its view there: a tile's when tiled; an untiled weight of a tiled
        # layer in its untiled tile's slot only), and each weight's constant
        self.l2: dict[int, list] = {}
        self.l2_constants: list[float] = []
        for n, w in self.weights:
            if w.regularizer == "l2norm" and w.trainable:
                for s in ts.node_slots[n.name].all(Phase.FORWARD):
                    held = self.slot_ctx[s].weights
                    if plan.slots[s].micro == 0 and not plan.slots[s].gather and w.name in held:
                        self.l2.setdefault(s, []).append((len(self.l2_constants), held[w.name]))
                self.l2_constants.append(w.regularizer_constant)
        self.train_steps = self._train_steps()
        self.swap_steps = self._swap_steps() if plan.swap else None

    # --- where each tensor lives -------------------------------------------------------
    def _placements(self) -> dict[str, list[tuple[int, int, np.ndarray]]]:
        """Per tensor: (first slot, last slot, view) for each stay in the arena."""
        plan, out = self.plan, {}
        end = len(plan.slots) - 1
        for name, spec in plan.specs.items():
            root = spec.alias_of or name
            if plan.swap is None:
                stays = [(0, end, plan.specs[root].offset)]
            else:
                stays = [(r.first, r.last, r.offset) for r in plan.swap.of(root)] or \
                        [(0, end, 0)]  # an empty tensor
            out[name] = [(a, b, self._view_at(spec, off)) for a, b, off in stays]
        return out

    def _view_at(self, spec, offset: int) -> np.ndarray:
        return self.arena[offset:offset + spec.nbytes].view(spec.dtype).reshape(spec.shape)

    def view(self, name: str, slot: int) -> np.ndarray | None:
        for first, last, v in self.places[name]:
            if first <= slot <= last:
                return v
        return None

    def _context(self, slot) -> RunContext:
        ts = self.plan.tensors
        io, tiles = ts.io[slot.node], ts.node_slots[slot.node].tiles
        at = lambda n: self.view(ts.local(n, slot.micro), slot.index) if n else None  # noqa: E731
        tile = lambda parts: parts[slot.part] if len(parts) > 1 else parts[0]  # noqa: E731

        def used(names: dict) -> dict:
            """The weights (a tile's when tiled), gradients and temps the plan has this
            slot use: a tiled layer's bias only in its untiled tile's slots, so a layer
            tests whether it was handed one."""
            return {k: at(n) for k, n in names.items()
                    if slot.index in self.plan.specs[ts.local(n, slot.micro)].uses}
        return RunContext(
            inputs=[at(n) for n in io.inputs], outputs=[at(n) for n in io.outputs],
            weights=used({k: tile(v) for k, v in io.weights.items()}),
            grads=used({k: tile(v) for k, v in io.grads.items()}),
            in_grads=[at(n) for n in io.in_grads], out_grads=[at(n) for n in io.out_grads],
            temps=used(io.temps), label=at(io.label), rng=self.rng, node=slot.node,
            tile=tiles[slot.part] if tiles else None, part=slot.micro, gather=slot.gather)

    # --- the steps of one iteration ----------------------------------------------------
    def _train_steps(self):
        steps, ns = [], self.plan.tensors.node_slots
        split = self.parts > 1
        for slot in self.plan.slots:
            node, ctx = self.graph.by_name.get(slot.node), self.slot_ctx[slot.index]
            if slot.phase == Phase.FORWARD:
                steps.append((node.layer.forward, (ctx, True)))
            elif slot.phase == Phase.CALC_GRADIENT:
                step = (node.layer.calc_gradient, (ctx,))
                steps.append((self._summed, (step, self._sums(node, slot), slot.micro))
                             if split else step)
            elif slot.phase == Phase.CALC_DERIVATIVE:
                steps.append((node.layer.calc_derivative, (ctx,)))
            elif slot.phase == Phase.APPLY_GRADIENT:
                steps.append((self._apply, (self._updates(node, slot, slot.part),)))
            else:
                clipped = [n for n in self.graph.nodes if slot.index in ns[n.name].apply_parts]
                steps.append((self._clip_and_apply,
                              ([(n.clip, u) for n in clipped
                                for u in self._updates(n, slot, None)],)))
        return steps

    # --- micro-batches: a step's batch in parts, their gradients summed -----------------
    def _sums(self, node, slot) -> list[tuple[np.ndarray, np.ndarray]]:
        """(the part's gradient, its running sum) per gradient complete at this slot."""
        ts = self.plan.tensors
        io, at = ts.io[node.name], slot.index
        return [(self.view(ts.local(g, slot.micro), at), self.view(total, at))
                for w, sums in io.sums.items() for g, total in zip(io.grads[w], sums)
                if at in self.plan.specs[total].uses]

    def _summed(self, step, pairs, part: int) -> None:
        """calc_gradient of one part: the first part's gradient starts the sum, the
        middle ones add to it, the last adds the sum to its own and divides by the
        parts (each is a mean over its rows), so the update sees the mean over the
        whole batch."""
        fn, args = step
        fn(*args)
        last = self.parts - 1
        for g, total in pairs:
            if part == 0:
                np.copyto(total, g)
            elif part < last:
                total += g
            else:
                g += total
                g /= last + 1

    def _updates(self, node, slot, part: int | None) -> list:
        """(weight request, weight rows, gradient rows, optimizer state) for one part of
        a node's apply_gradient (one tile of a tiled weight, the whole of an untiled one
        unless the budget split it, in a tiled node in its untiled tile's slot), or for
        every part (None: the clip slot)."""
        ts, out = self.plan.tensors, []
        io, micro, at = ts.io[node.name], slot.micro, slot.index   # (the last part's)
        for w in node.ctx.weights:
            if not w.trainable:
                continue
            tensors = io.weights[w.name]
            grads = [ts.local(g, micro) for g in io.grads[w.name]]
            for k, (lo, hi) in enumerate(io.rows[w.name]):
                if part is not None and io.applied[w.name][k] != part:
                    continue
                if len(tensors) > 1:   # a tile: its own tensors
                    weight, grad = self.view(tensors[k], at), self.view(grads[k], at)
                else:
                    weight = self.view(tensors[0], at)[lo:hi]
                    grad = self.view(grads[0], at)[lo:hi]
                out.append((w, weight, grad, [self.view(s, at) for s in io.state[w.name][k]]))
        return out

    def _apply(self, updates) -> None:
        for w, weight, grad, state in updates:
            extra = (w.regularizer_constant if w.regularizer == "l2norm" else 0.0) + w.decay
            if extra:  # grad += extra·w without a weight-sized temporary
                grad /= extra
                grad += weight
                grad *= extra
            self.optimizer.apply(weight, grad, state, self.lr, self.iteration - self.state_from)

    def _clip_and_apply(self, updates) -> None:
        """NNTrainer's clipping: one L2 norm over all clipped gradients; each is scaled
        by its layer's clip / (norm + 1e-6) when the norm exceeds it, then applied."""
        norm = math.sqrt(sum(float(np.dot(g.reshape(-1), g.reshape(-1)))
                             for _, (_, _, g, _) in updates))
        for clip, (_, _, g, _) in updates:
            if norm + CLIP_EPSILON > clip:
                g *= clip / (norm + CLIP_EPSILON)
        self._apply([u for _, u in updates])

    def _swap_steps(self):
        """The plan's swap steps (per slot: loads to issue, the transfer to wait for,
        stores to issue after it) with each transfer's stays as arena views."""
        def jobs(transfers) -> list[Job]:
            return [Job.of(t.op, t.file_offset, [self.arena[o:o + n] for o, n in t.stays])
                    for t in transfers]
        return [(jobs(s.loads), s.wait, jobs(s.stores)) for s in self.plan.swap.steps]

    def _run(self, count: int, training: bool, rows: int, feed, on_output=None,
             timed: np.ndarray | None = None) -> tuple[float, int]:
        """The first `count` slots with their swap jobs, `feed(part, views)` reading
        each part's records right before its first slot; the first `rows` records
        count (the parts past them skip their loss layers); `timed` (per slot) adds
        each step's seconds."""
        size = self.graph.batch_size
        held = [min(max(rows - p * size, 0), size) for p in range(self.parts)]
        for p, contexts in enumerate(self.loss_ctx):
            for ctx in contexts:
                ctx.rows = held[p]
        correct, squares = 0, np.zeros(len(self.l2_constants), np.float32)
        io, swap, base, slots = self.io, self.swap_steps, 0, self.plan.slots
        if io is not None:
            base = io.submitted
        for i in range(count):
            if swap is not None:
                loads, need, stores = swap[i]
                for job in loads:
                    io.submit(job)
                if need:
                    io.wait(base + need)
            if i in self.feed_at:
                p = self.feed_at[i]
                feed(p, self.data_views[p])
            slot = slots[i]
            if not held[slot.micro] and slot.node in self.loss_names:
                pass   # a part wholly past the batch's records (padding)
            elif training:
                fn, args = self.train_steps[i]
                if timed is None:
                    fn(*args)
                else:
                    t0 = time.perf_counter()
                    fn(*args)
                    timed[i] += time.perf_counter() - t0
            elif slot.phase == Phase.FORWARD and not slot.gather:
                self.graph.by_name[slot.node].layer.forward(self.slot_ctx[i], False)
            for k, x in self.l2.get(i, ()):   # summed over a tiled weight's tiles
                flat = x.reshape(-1)
                squares[k] += np.dot(flat, flat)
            if i in self.metric_at and held[self.metric_at[i]]:
                p = self.metric_at[i]
                out = self.fwd_ctx[self.metric_node][p].outputs[0][:held[p]]
                out = out.reshape(held[p], -1)
                if self.graph.losses:
                    correct += self._correct(p, out)
                if on_output is not None:
                    on_output(out)
            if swap is not None:
                for job in swap[i][2]:
                    io.submit(job)
        if io is not None:
            io.drain()
        reg = sum(c * 0.5 * float(np.sqrt(q)) for c, q in zip(self.l2_constants, squares))
        loss = sum(self.fwd_ctx[n.name][p].loss * held[p] for n in self.graph.losses
                   for p in range(self.parts) if held[p])   # in the graph's order
        return loss / max(rows, 1) + reg, correct

    def _correct(self, part: int, out: np.ndarray) -> int:
        """Rows whose argmax matches the label's, read right after the metric node's
        forward slot (its output may be reused later in the iteration)."""
        label = self.fwd_ctx[self.metric_node][part].label[:len(out)].reshape(len(out), -1)
        return int(np.count_nonzero(out.argmax(axis=1) == label.argmax(axis=1)))

    def train_step(self, iteration: int, feed, rows: int | None = None) -> tuple[float, int]:
        """One iteration over a batch `feed` reads, part by part (the update comes
        after the last part); `rows` fewer than the batch only where nothing learns by
        gradient (an enrollment)."""
        self.iteration, self.lr = iteration, self.schedule(iteration)
        return self._run(len(self.plan.slots), True, rows or self.graph.step_batch, feed,
                         timed=self.slot_seconds)

    def run_first(self, count: int, feed) -> None:
        """The first `count` training slots, with their swap loads and stores (a feature
        cache computing the records no full batch held), untimed."""
        self._run(count, True, self.graph.step_batch, feed)

    def eval_step(self, rows: int, feed, on_output=None) -> tuple[float, int]:
        """Forward only (dropout off, moving statistics); metrics over the first rows,
        whose outputs (rows × values) go to `on_output` when given."""
        return self._run(self.eval_slots, False, rows, feed, on_output)
