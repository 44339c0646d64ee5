"""Where a training step's time goes (`train --profile`): each slot's share of the step,
the share spent outside the layers' kernels (the step loop, swap waits, metrics), and
for the layers whose work is a matrix product (fully connected, convolution) their
GFLOP/s against the rate this machine's BLAS reaches on a plain large product."""

from __future__ import annotations

import math
import time

import numpy as np

from nntrainer_cli.layers.base import Phase

GEMM_SIZE = 512   # the plain product measured: 512 x 512 by 512 x 512, float32
MATMUL_TYPES = ("fully_connected", "conv2d")


def gemm_gflops(repeats: int = 5) -> float:
    """The best GFLOP/s of a plain float32 matrix product here (numpy's BLAS, its
    threads as set), the ceiling a product-bound layer can approach."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    np.matmul(a, b, out=out)   # warm up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * GEMM_SIZE ** 3 / best / 1e9


def slot_flops(node, phase: Phase) -> int | None:
    """Floating-point operations of a product-bound slot: 2 per multiply-add, one
    product per output position and weight element (forward, and each of the two
    backward products); None for other slots."""
    if node.type not in MATMUL_TYPES or not node.ctx.weights or phase not in (
            Phase.FORWARD, Phase.CALC_GRADIENT, Phase.CALC_DERIVATIVE):
        return None
    out = node.ctx.output_shapes[0]
    positions = math.prod(out[:-1]) if node.type == "fully_connected" else \
        out[0] * math.prod(out[2:])
    return 2 * positions * math.prod(node.ctx.weights[0].shape)


def profile(graph, plan, slot_seconds: np.ndarray, steps: int, step_total: float) -> dict:
    """Per slot: seconds per step, share of the step, GFLOP/s where it is a product;
    the share outside kernels; the machine's GEMM rate."""
    rate = gemm_gflops()
    rows = []
    for slot, seconds in zip(plan.slots, slot_seconds):
        node = graph.by_name.get(slot.node)
        flops = slot_flops(node, slot.phase) if node is not None else None
        tiles = plan.tensors.node_slots[slot.node].tiles if node is not None else []
        if flops and tiles:   # one tile's share of the product
            lo, hi = tiles[slot.part]
            flops = flops * (hi - lo) // tiles[-1][1]
        per_step = seconds / steps
        gflops = flops / per_step / 1e9 if flops and per_step > 0 else None
        rows.append({"slot": slot.index, "layer": slot.node, "phase": str(slot.phase),
                     "label": plan.slot_label(slot), "tile": slot.part if tiles else None,
                     "micro_batch": slot.micro, "gathers": slot.gather,
                     "seconds_per_step": per_step,
                     "share": seconds / step_total if step_total else 0.0,
                     "gflops": gflops})
    inside = float(slot_seconds.sum())
    return {"steps": steps, "step_seconds_mean": step_total / steps,
            "micro_batches": plan.micro_batches,
            "outside_kernels_share": max(0.0, 1 - inside / step_total) if step_total else 0.0,
            "gemm_gflops": rate, "slots": rows}
