"""The epochs the feature cache serves, under the head's own plan (`Planning.head_plan`):
from epoch 2 only the layers after the frozen prefix run, and under a budget the plan
made for epoch 1, whose split and tiles the prefix's activations set, is larger work
than the head needs (the transfer model at 25%: 2 parts and 5 tiled layers, 1.6 MB
read a step; planned alone, its head runs whole, reading 0.5 MB).

Both executors use the same arena bytes and swap file, one at a time. Switching moves
the weights and optimizer state through a file of their own, by name: leaving the full
model, all of its tensors go out (the head's epochs overwrite the bytes of the
prefix's too), and the head reads its own; coming back, the head's go out and the
full model reads them all. The head also evaluates the validation set, whose features
the cache computes at the end of epoch 1; the test set, weight files and checkpoints
use the full model, as without the head's plan."""

from __future__ import annotations

import contextlib

from nntrainer_cli.errors import DataError

from .executor import Executor
from .swap_io import Job, SwapFile


def pieces(ex: Executor) -> list[tuple[str, int, str]]:
    """Each weight and optimizer state (`f5:weight`, `f5:weight:adam_m`) as its plan
    holds it: (its name, the byte its tensor starts at within it, the tensor), the
    tensors of a tile or of a part of the update in row order; the two plans cut
    them differently."""
    whole = ex.weight_tensors() + (ex.state_tensors() if ex.optimizer else [])
    out = []
    for name, _, tensors in whole:
        at = 0
        for tensor in tensors:
            out.append((name, at, tensor))
            at += ex.plan.specs[tensor].nbytes
    return out


class HeadRun:
    def __init__(self, full: Executor, head: Executor, directory: str):
        self.full, self.head = full, head
        self.parts = {ex: pieces(ex) for ex in (full, head)}
        self.at, end = {}, 0
        for name, start, tensor in self.parts[full]:   # each whole tensor's place in the file
            if not start:
                self.at[name] = end
            end += full.plan.specs[tensor].nbytes
        if not {name for name, _, _ in self.parts[head]} <= set(self.at):
            raise AssertionError("the head's plan has tensors the model lacks")   # a bug
        self.file = SwapFile(directory, end)   # buffered, unlinked at once, like the swap file
        self.moved = 0   # bytes written and read at the switches

    def _move(self, ex: Executor, out: bool) -> None:
        for name, start, tensor in self.parts[ex]:
            with ex.persistent(tensor, write=not out) as arr:
                view = arr.reshape(-1).view("B")   # a fresh view: see write_tensors
                try:
                    self.file.move(Job.of("out" if out else "in", self.at[name] + start, [view]))
                except OSError as e:
                    raise DataError(f"switching to the head's plan: {e.strerror or e}") \
                        from None
                self.moved += len(view)

    def to_head(self) -> Executor:
        self._move(self.full, out=True)
        self._move(self.head, out=False)
        return self.head

    def to_full(self) -> Executor:
        self._move(self.head, out=True)
        self._move(self.full, out=False)
        return self.full

    @contextlib.contextmanager
    def full_model(self):
        """The full model for a while (a checkpoint in the middle of a head's epoch)."""
        yield self.to_full()
        self.to_head()

    def close(self) -> None:
        self.file.close()
