"""Runs one training or evaluation iteration over the planned arena.

The arena is one numpy buffer allocated once; every tensor is a view at its planned
offset (aliases share their root's bytes). Each layer gets a RunContext of views built
once, and the slots run in the planned order, so what executes is exactly what was
planned."""

from __future__ import annotations

import contextlib
import math

import numpy as np

from nntrainer_cli.graph import LayerGraph
from nntrainer_cli.layers import RunContext
from nntrainer_cli.optim.initializers import initialize
from nntrainer_cli.plan import MemoryPlan


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


def allocate_arena(plan: MemoryPlan) -> np.ndarray:
    """The one large allocation of a run: every tensor lives in it."""
    return np.zeros(plan.peak_bytes, dtype=np.uint8)


class Executor:
    def __init__(self, graph: LayerGraph, plan: MemoryPlan, optimizer, schedule,
                 arena: np.ndarray | None = None, rng: np.random.Generator | None = None):
        self.graph, self.plan = graph, plan
        self.rng = rng or np.random.default_rng(0)
        self.optimizer, self.schedule = optimizer, schedule
        self.arena = allocate_arena(plan) if arena is None else arena
        self.views = {name: self._view(spec) for name, spec in plan.specs.items()}
        self.ctx = {n.name: self._context(n.name) for n in graph.nodes}
        v = self.views
        self.input_views = [v[f"{n.name}:input"] for n in graph.inputs]
        self.label_views = [v[f"{n.name}:label"] for n in graph.losses]
        self.loss_nodes = [(n.name, self.ctx[n.name]) for n in graph.losses]
        self.metric_node = graph.losses[0].name
        self.metric_slot = plan.tensors.node_slots[self.metric_node].forward
        self.weights = [(n, w) for n in graph.nodes for w in n.ctx.weights]
        self.forward_steps = [(n.layer, self.ctx[n.name]) for n in graph.nodes]
        self.train_steps = self._train_steps()

    def _view(self, spec) -> np.ndarray:
        off = spec.offset
        return self.arena[off:off + spec.nbytes].view(spec.dtype).reshape(spec.shape)

    def _context(self, node: str) -> RunContext:
        io, v = self.plan.tensors.io[node], self.views
        pick = lambda names: [v[n] if n else None for n in names]  # noqa: E731
        return RunContext(
            inputs=pick(io["inputs"]), outputs=pick(io["outputs"]),
            weights={k: v[n] for k, n in io["weights"].items()},
            grads={k: v[n] for k, n in io["grads"].items()},
            in_grads=pick(io["in_grads"]), out_grads=pick(io["out_grads"]),
            temps={k: v[n] for k, n in io["temps"].items()},
            label=v[io["label"]] if io["label"] else None, rng=self.rng)

    def _train_steps(self):
        steps = []
        for slot in self.plan.slots:
            node, ctx = self.graph.by_name.get(slot.node), self.ctx.get(slot.node)
            if slot.phase == "forward":
                steps.append((node.layer.forward, (ctx, True)))
            elif slot.phase == "calc_gradient":
                steps.append((node.layer.calc_gradient, (ctx,)))
            elif slot.phase == "calc_derivative":
                steps.append((node.layer.calc_derivative, (ctx,)))
            elif slot.phase == "apply_gradient":
                steps.append((self._apply, (node, ctx)))
            else:
                clipped = [n for n in self.graph.nodes
                           if self.plan.tensors.node_slots[n.name].apply_gradient == slot.index]
                steps.append((self._clip_and_apply, (clipped,)))
        return steps

    def initialize(self, rng: np.random.Generator) -> None:
        for node, w in self.weights:
            initialize(self.ctx[node.name].weights[w.name], w.initializer, rng)

    def _apply(self, node, ctx: RunContext) -> None:
        io = self.plan.tensors.io[node.name]
        for w in node.ctx.weights:
            if not w.trainable:
                continue
            weight, grad = ctx.weights[w.name], ctx.grads[w.name]
            extra = (w.regularizer_constant if w.regularizer == "l2norm" else 0.0) + w.decay
            if extra:  # grad += extra·w without a weight-sized temporary
                grad /= extra
                grad += weight
                grad *= extra
            state = [self.views[s] for s in io["state"][w.name]]
            self.optimizer.apply(weight, grad, state, self.lr, self.iteration)

    def _clip_and_apply(self, nodes) -> None:
        """NNTrainer's clipping: one L2 norm over all clipped gradients; each is scaled
        by its layer's clip / (norm + 1e-6) when the norm exceeds it, then applied."""
        grads = [(n.clip, self.ctx[n.name].grads[w]) for n in nodes for w in self.ctx[n.name].grads]
        norm = math.sqrt(sum(float(np.dot(g.reshape(-1), g.reshape(-1))) for _, g in grads))
        for clip, g in grads:
            if norm + CLIP_EPSILON > clip:
                g *= clip / (norm + CLIP_EPSILON)
        for n in nodes:
            self._apply(n, self.ctx[n.name])

    def regularization_loss(self) -> float:
        """NNTrainer reports constant·½·‖W‖₂ (the norm, not its square) per l2norm weight."""
        total = 0.0
        for node, w in self.weights:
            if w.regularizer == "l2norm" and w.trainable:
                x = self.ctx[node.name].weights[w.name].reshape(-1)
                total += w.regularizer_constant * 0.5 * float(np.sqrt(np.dot(x, x)))
        return total

    def _correct(self, rows: int) -> int:
        """Rows whose argmax matches the label's, read right after the metric node's
        forward slot (its output may be reused later in the iteration)."""
        ctx = self.ctx[self.metric_node]
        out = ctx.outputs[0][:rows].reshape(rows, -1)
        label = ctx.label[:rows].reshape(rows, -1)
        return int(np.count_nonzero(out.argmax(axis=1) == label.argmax(axis=1)))

    def _loss(self) -> float:
        return sum(ctx.loss for _, ctx in self.loss_nodes) + self.regularization_loss()

    def train_step(self, iteration: int) -> tuple[float, int]:
        """One iteration over the batch already in the input/label views."""
        self.iteration, self.lr = iteration, self.schedule(iteration)
        batch = self.graph.batch_size
        for _, ctx in self.loss_nodes:
            ctx.rows = batch
        correct = 0
        for i, (fn, args) in enumerate(self.train_steps):
            fn(*args)
            if i == self.metric_slot:
                correct = self._correct(batch)
        return self._loss(), correct

    def eval_step(self, rows: int) -> tuple[float, int]:
        """Forward only (dropout off, moving statistics); metrics over the first rows."""
        for _, ctx in self.loss_nodes:
            ctx.rows = rows
        correct = 0
        for i, (layer, ctx) in enumerate(self.forward_steps):
            layer.forward(ctx, False)
            if i == self.metric_slot:
                correct = self._correct(rows)
        return self._loss(), correct
