"""Weights and optimizer state between iterations: where each lives (in the arena, or
in the swap file when swapped), and reading, writing and initializing them whole, for
weight files, checkpoints and federated rounds."""

from __future__ import annotations

import contextlib

import numpy as np

from nntrainer_cli.optim.initializers import initialize

from .swap_io import Job


class PersistentTensors:
    """The Executor's persistent tensors by name, through `places` (its views per
    stay), `plan`, `io` (the swap file), `weights` and `optimizer`."""

    @contextlib.contextmanager
    def persistent(self, name: str, write: bool):
        """A weight or optimizer-state tensor between iterations. A swapped one lives in
        the swap file then; it is staged through its first stay's bytes (free between
        iterations) and written back when `write`."""
        stays = self.places[name]
        swapped = self.plan.swap is not None and name in self.plan.swap.swapped \
            and not (len(stays) == 1 and stays[0][:2] == (0, len(self.plan.slots) - 1))
        if swapped:
            first, at = self.plan.swap.of(name)[0], self.plan.swap.file_offsets[name]
            block = self.arena[first.offset:first.offset + first.bytes]
            self.io.file.move(Job.of("in", at, [block]))
        yield stays[0][2]
        if swapped and write:
            self.io.file.move(Job.of("out", at, [block]))

    def write_tensors(self, f, names) -> None:
        """Weights or optimizer state, back to back into an open binary file, each
        through a fresh view: exporting an arena view's own buffer (`arr.data`) leaves
        numpy's buffer description on it for the run (measured: about 60 B a tensor)."""
        for name in names:
            with self.persistent(name, write=False) as arr:
                f.write(arr.view(np.uint8))

    def weight_tensors(self) -> list[tuple[str, tuple[int, ...], list[str]]]:
        """Per weight in NNTrainer's order: its name (`fc1:weight`), its shape, and its
        tensors in the plan: itself, or its row tiles in order."""
        io = self.plan.tensors.io
        return [(f"{n.name}:{w.name}", w.shape, io[n.name].weights[w.name])
                for n, w in self.weights]

    def weight_names(self) -> list[str]:
        """Every weight's tensors; written back to back (a tiled weight's tiles in row
        order), they are NNTrainer's weight file."""
        return [t for _, _, tensors in self.weight_tensors() for t in tensors]

    def weight_parts(self):
        """(which weight, its first row, tensor) for every weight tensor in order: a
        tiled weight's tiles with the rows they hold, for reading weights whole."""
        for i, (_, _, tensors) in enumerate(self.weight_tensors()):
            row = 0
            for name in tensors:
                yield i, row, name
                row += self.plan.specs[name].shape[0]

    def state_tensors(self) -> list[tuple[str, tuple[int, ...], list[str]]]:
        """Per trainable weight and optimizer state (`fc1:weight:adam_m`): its shape and
        its tensors in row order (several for a tiled weight or split apply slots)."""
        io = self.plan.tensors.io
        return [(f"{n.name}:{w.name}:{kind}", w.shape,
                 [part[k] for part in io[n.name].state[w.name]])
                for n, w in self.weights if w.trainable
                for k, kind in enumerate(self.optimizer.state)]

    def state_names(self) -> list[str]:
        return [t for _, _, tensors in self.state_tensors() for t in tensors]

    def reset_state(self, iteration: int) -> None:
        """The optimizer's state back to zero and its step count starting over at
        `iteration`: a federated client starts each round afresh from the global weights."""
        for name in self.state_names() if self.optimizer else ():
            with self.persistent(name, write=True) as v:
                v.fill(0)
        self.state_from = iteration

    def initialize(self, rng: np.random.Generator) -> None:
        for (_, w), (_, shape, tensors) in zip(self.weights, self.weight_tensors()):
            for name in tensors:   # a tiled weight's tiles in order
                with self.persistent(name, write=True) as v:
                    initialize(v, w.initializer, rng, shape)
