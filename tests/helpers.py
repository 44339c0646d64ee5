"""Test helpers: run one layer on plain float64 arrays, outside any arena."""

from __future__ import annotations

import os

import numpy as np

from nntrainer_cli.layers import REGISTRY, FinalizeContext, RunContext
from nntrainer_cli.layers.base import NODE_SCHEMA, WEIGHT_SCHEMA

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
CORPUS = os.path.join(SHARED, "nntrainer-ini")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_layer(kind: str, **props):
    cls = REGISTRY[kind]
    schema = {**NODE_SCHEMA, **(WEIGHT_SCHEMA if cls.weighted else {}), **cls.schema}
    values = {k: p.default for k, p in schema.items()}
    values.update(props)
    return cls(kind, values)


class Harness:
    """Holds every tensor a layer requests as its own float64 array."""

    def __init__(self, layer, input_shapes, rng, requested_outputs=1):
        self.layer = layer
        fc = FinalizeContext([tuple(s) for s in input_shapes],
                             requested_outputs=requested_outputs)
        layer.finalize(fc)
        self.fc = fc
        f = lambda s: np.zeros(s, dtype=np.float64)  # noqa: E731
        self.ctx = RunContext(
            inputs=[rng.standard_normal(s) for s in fc.input_shapes],
            outputs=[f(s) for s in fc.output_shapes],
            weights={w.name: rng.standard_normal(w.shape) * 0.5 for w in fc.weights},
            grads={w.name: f(w.shape) for w in fc.weights},
            in_grads=[f(s) for s in fc.input_shapes],
            out_grads=[f(s) for s in fc.output_shapes],
            temps={t.name: np.zeros(t.shape, dtype=np.float64 if t.dtype == np.float32 else t.dtype)
                   for t in fc.temps},
            rows=fc.input_shapes[0][0])
        if layer.is_loss:
            label = np.zeros(fc.input_shapes[0])
            flat = label.reshape(-1, label.shape[-1])
            flat[np.arange(len(flat)), rng.integers(0, label.shape[-1], len(flat))] = 1
            self.ctx.label = label
        self.probe = [rng.standard_normal(s) for s in fc.output_shapes]

    def objective(self) -> float:
        """Loss layers: their loss; other layers: Σ output·probe (so dL/dout = probe)."""
        self.layer.forward(self.ctx, True)
        if self.layer.is_loss:
            return self.ctx.loss
        return float(sum(np.vdot(o, p) for o, p in zip(self.ctx.outputs, self.probe)))

    def backward(self) -> None:
        self.objective()
        for g, p in zip(self.ctx.out_grads, self.probe):
            g[...] = p
        self.layer.calc_gradient(self.ctx)
        self.layer.calc_derivative(self.ctx)
