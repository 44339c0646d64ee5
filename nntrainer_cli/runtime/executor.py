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
    context holds the views resident at that slot, so a layer never sees stale bytes."""

    def __init__(self, graph: LayerGraph, plan: MemoryPlan, optimizer, schedule,
                 arena: np.ndarray | None = None, rng: np.random.Generator | None = None,
                 swap_io=None):
        self.graph, self.plan = graph, plan
        self.rng = rng or np.random.default_rng(0)
        self.optimizer, self.schedule = optimizer, schedule
        self.part = 0         # the micro-batch of the step running (graph.micro_batches)
        self.state_from = 0   # the iteration the optimizer's state (and step count) began
        self.slot_seconds: np.ndarray | None = None   # per slot, summed (train --profile)
        self.arena = allocate_arena(plan) if arena is None else arena
        self.io = swap_io
        self.places = self._placements()
        ns = plan.tensors.node_slots
        self.slot_ctx = [self._context(s.node, s.index) if s.node in graph.by_name else None
                         for s in plan.slots]
        self.fwd_ctx = {n.name: self.slot_ctx[ns[n.name].forward] for n in graph.nodes}
        self.input_views = [self.view(f"{n.name}:input", 0) for n in graph.inputs]
        self.label_views = [self.view(f"{n.name}:label", 0) for n in graph.losses]
        self.data_views = self.input_views + self.label_views   # what a batch is read into
        self.loss_ctx = [c for n in graph.losses for c in self.slot_ctx
                         if c is not None and c.node == n.name]
        # the model's output: the loss layer's (probabilities for cross-entropy), else the
        # last layer's; read right after its forward slot
        self.metric_node = graph.losses[0].name if graph.losses else graph.nodes[-1].name
        self.metric_slot = ns[self.metric_node].forward
        self.forward_slots = sum(1 for s in plan.slots if s.phase == Phase.FORWARD)
        self.weights = [(n, w) for n in graph.nodes for w in n.ctx.weights]
        # l2norm's loss term: per forward slot, (which l2norm weight, its view there: a
        # tile's when tiled), and each weight's constant
        self.l2: dict[int, list] = {}
        self.l2_constants: list[float] = []
        for n, w in self.weights:
            if w.regularizer == "l2norm" and w.trainable:
                for s in ns[n.name].all(Phase.FORWARD):
                    self.l2.setdefault(s, []).append((len(self.l2_constants),
                                                      self.slot_ctx[s].weights[w.name]))
                self.l2_constants.append(w.regularizer_constant)
        self.train_steps = self._train_steps()
        self.coupled_ctx = [c for c in self.slot_ctx if c is not None and
                            graph.by_name[c.node].layer.batch_coupled]
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

    def _context(self, node: str, slot: int) -> RunContext:
        io, part = self.plan.tensors.io[node], self.plan.slots[slot].part
        tiles = self.plan.tensors.node_slots[node].tiles
        at = lambda n: self.view(n, slot) if n else None  # noqa: E731
        resident = lambda names: {k: v for k, n in names.items()  # noqa: E731
                                  if (v := at(n)) is not None}
        tile = lambda parts: parts[part] if len(parts) > 1 else parts[0]  # noqa: E731
        return RunContext(
            inputs=[at(n) for n in io.inputs], outputs=[at(n) for n in io.outputs],
            weights=resident({k: tile(v) for k, v in io.weights.items()}),
            grads=resident({k: tile(v) for k, v in io.grads.items()}),
            in_grads=[at(n) for n in io.in_grads], out_grads=[at(n) for n in io.out_grads],
            temps=resident(io.temps), label=at(io.label), rng=self.rng, node=node,
            tile=tiles[part] if tiles else None)

    # --- the steps of one iteration ----------------------------------------------------
    def _train_steps(self):
        steps, ns = [], self.plan.tensors.node_slots
        split = self.graph.micro_batches > 1
        for slot in self.plan.slots:
            node, ctx = self.graph.by_name.get(slot.node), self.slot_ctx[slot.index]
            if slot.phase == Phase.FORWARD:
                steps.append((node.layer.forward, (ctx, True)))
            elif slot.phase == Phase.CALC_GRADIENT:
                step = (node.layer.calc_gradient, (ctx,))
                steps.append((self._summed, (step, self._sums(node, slot.index))) if split
                             else step)
            elif slot.phase == Phase.CALC_DERIVATIVE:
                steps.append((node.layer.calc_derivative, (ctx,)))
            else:
                if slot.phase == Phase.APPLY_GRADIENT:
                    step = (self._apply, (self._updates(node, slot.index, slot.part),))
                else:
                    clipped = [n for n in self.graph.nodes
                               if slot.index in ns[n.name].apply_parts]
                    step = (self._clip_and_apply,
                            ([(n.clip, u) for n in clipped
                              for u in self._updates(n, slot.index, None)],))
                steps.append((self._in_last_part, step) if split else step)
        return steps

    # --- micro-batches: a step's batch in parts, their gradients summed -----------------
    def _sums(self, node, slot: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(gradient, its running sum) for each gradient tensor complete at this slot."""
        io = self.plan.tensors.io[node.name]
        return [(self.view(g, slot), self.view(total, slot))
                for w, sums in io.sums.items() for g, total in zip(io.grads[w], sums)
                if slot in self.plan.specs[total].uses]

    def _summed(self, step, pairs) -> None:
        """calc_gradient of one micro-batch: the first part's gradient starts the sum,
        the middle ones add to it, the last adds the sum to its own and divides by the
        parts (each is a mean over its rows), so the update sees the mean over the
        whole batch."""
        fn, args = step
        fn(*args)
        last = self.graph.micro_batches - 1
        for g, total in pairs:
            if self.part == 0:
                np.copyto(total, g)
            elif self.part < last:
                total += g
            else:
                g += total
                g /= last + 1

    def _in_last_part(self, fn, args) -> None:
        """Updates wait for the step's last micro-batch: the weights stay as they are
        for all its parts."""
        if self.part == self.graph.micro_batches - 1:
            fn(*args)

    def _updates(self, node, slot: int, part: int | None) -> list:
        """(weight request, weight rows, gradient rows, optimizer state) for one part of
        a node's apply_gradient (one tile of a tiled weight, the whole of an untiled one
        unless the budget split it), or for every part (None: the clip slot)."""
        io, out = self.plan.tensors.io[node.name], []
        for w in node.ctx.weights:
            if not w.trainable:
                continue
            tensors, grads = io.weights[w.name], io.grads[w.name]
            for k, (lo, hi) in enumerate(io.rows[w.name]):
                if part is not None and k != part:
                    continue
                if len(tensors) > 1:   # a tile: its own tensors
                    weight, grad = self.view(tensors[k], slot), self.view(grads[k], slot)
                else:
                    weight = self.view(tensors[0], slot)[lo:hi]
                    grad = self.view(grads[0], slot)[lo:hi]
                out.append((w, weight, grad, [self.view(s, slot) for s in io.state[w.name][k]]))
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

    def _run(self, count: int, training: bool, rows: int, on_output=None,
             timed: np.ndarray | None = None, runs=None) -> tuple[float, int]:
        """The first `count` slots with their swap jobs; `timed` (per slot) adds each
        step's seconds; `runs` (a gathering pass's) leaves out the steps it marks False,
        and sums no gradient."""
        for ctx in self.loss_ctx:
            ctx.rows = rows
        correct, squares = 0, np.zeros(len(self.l2_constants), np.float32)
        io, swap, base = self.io, self.swap_steps, 0
        if io is not None:
            base = io.submitted
        for i in range(count):
            if swap is not None:
                loads, need, stores = swap[i]
                for job in loads:
                    io.submit(job)
                if need:
                    io.wait(base + need)
            if training and (runs is None or runs[i]):
                fn, args = self.train_steps[i]
                if runs is not None and fn == self._summed:
                    fn, args = args[0]
                if timed is None:
                    fn(*args)
                else:
                    t0 = time.perf_counter()
                    fn(*args)
                    timed[i] += time.perf_counter() - t0
            elif not training:
                node = self.graph.by_name[self.plan.slots[i].node]
                node.layer.forward(self.slot_ctx[i], False)
            for k, x in self.l2.get(i, ()):   # summed over a tiled weight's tiles
                flat = x.reshape(-1)
                squares[k] += np.dot(flat, flat)
            if i == self.metric_slot:
                if self.graph.losses:
                    correct = self._correct(rows)
                if on_output is not None:
                    out = self.fwd_ctx[self.metric_node].outputs[0]
                    on_output(out[:rows].reshape(rows, -1))
            if swap is not None:
                for job in swap[i][2]:
                    io.submit(job)
        if io is not None:
            io.drain()
        reg = sum(c * 0.5 * float(np.sqrt(q)) for c, q in zip(self.l2_constants, squares))
        return sum(self.fwd_ctx[n.name].loss for n in self.graph.losses) + reg, correct

    def _correct(self, rows: int) -> int:
        """Rows whose argmax matches the label's, read right after the metric node's
        forward slot (its output may be reused later in the iteration)."""
        ctx = self.fwd_ctx[self.metric_node]
        out = ctx.outputs[0][:rows].reshape(rows, -1)
        label = ctx.label[:rows].reshape(rows, -1)
        return int(np.count_nonzero(out.argmax(axis=1) == label.argmax(axis=1)))

    def train_step(self, iteration: int, rows: int | None = None, part: int = 0,
                   stage: int = 0) -> tuple[float, int]:
        """One iteration over the batch already in the input/label views (in
        micro-batches: its `part`; the update comes with the last); `rows` fewer than the
        batch only where nothing learns by gradient (an enrollment). With batch norm in
        micro-batches, stages below len(self.plan.passes) are the gathering passes (their
        loss means nothing), the last the full step."""
        self.iteration, self.lr, self.part = iteration, self.schedule(iteration), part
        passes = self.plan.passes
        gather = passes[stage] if stage < len(passes) else None
        if passes:
            self._part_rng(part, stage)
            gathers = self.slot_ctx[gather.gather] if gather else None
            for ctx in self.coupled_ctx:
                ctx.part, ctx.gather = part, ctx is gathers
        return self._run(len(self.plan.slots), True, rows or self.graph.batch_size,
                         timed=self.slot_seconds, runs=gather and gather.runs)

    def _part_rng(self, part: int, stage: int) -> None:
        """Each part draws the same random numbers (dropout masks) in every pass: a
        stream of its own, seeded once a step from the run's generator."""
        if stage == 0 and part == 0:
            self.part_seed = int(self.rng.integers(2**62))
        kind = type(self.rng.bit_generator)
        self.rng.bit_generator.state = kind([self.part_seed, part]).state

    def run_first(self, count: int) -> None:
        """The first `count` training slots, with their swap loads and stores (a feature
        cache computing the records no full batch held), untimed."""
        self._run(count, True, self.graph.batch_size)

    def eval_step(self, rows: int, on_output=None) -> tuple[float, int]:
        """Forward only (dropout off, moving statistics); metrics over the first rows,
        whose outputs (rows × values) go to `on_output` when given."""
        return self._run(self.forward_slots, False, rows, on_output)
