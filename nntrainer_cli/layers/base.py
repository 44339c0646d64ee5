"""The layer contract, after NNTrainer's: a layer declares its tensors in `finalize`
and computes in `forward` / `calc_gradient` / `calc_derivative`, always writing into
the arena views its run context hands it. It never allocates full-size arrays itself.

What each step reads and overwrites beyond its inputs and outputs is declared in an
`Access` (the class's, or a variant the layer picks in finalize), so the planner can
end each tensor's lifespan at its true last reader, share bytes in place only where
that is safe, and check that what backward overwrites is read by no one later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from nntrainer_cli.config import props as P

Shape = tuple[int, ...]


class Phase(str, Enum):
    """The steps of one iteration, each run in its own slot (NNTrainer's names)."""
    FORWARD = "forward"
    CALC_GRADIENT = "calc_gradient"
    CALC_DERIVATIVE = "calc_derivative"
    APPLY_GRADIENT = "apply_gradient"
    CLIP_AND_APPLY = "clip_and_apply"   # one last slot for layers with clip_grad_by_norm

    def __str__(self) -> str:
        return self.value


# When a temporary must hold: the phases of the layer it lives across.
BACKWARD = frozenset({Phase.CALC_GRADIENT, Phase.CALC_DERIVATIVE})
ITERATION = frozenset({Phase.FORWARD}) | BACKWARD


class InPlace(str, Enum):
    """How an output may share its input's bytes: as a VIEW (a reshape: both values stay
    valid) or by OVERWRITE (the input's value is gone once the output is written)."""
    VIEW = "view"
    OVERWRITE = "overwrite"


@dataclass(frozen=True)
class Access:
    """What a layer's steps touch besides reading inputs and writing outputs.
    `*_reads` and `derivative_writes` name the layer's own "input" or "output"."""
    in_place: InPlace | None = None             # the output over the input
    derivative_in_place: InPlace | None = None  # the input derivative over the output's
    gradient_reads: frozenset = frozenset()     # read by calc_gradient
    derivative_reads: frozenset = frozenset()   # read by calc_derivative
    derivative_writes: frozenset = frozenset()  # overwritten by calc_derivative (as scratch)

# Keys every layer section accepts (NNTrainer's node-level properties).
NODE_SCHEMA: P.Schema = {
    "name": P.Prop(P.text),
    "input_layers": P.Prop(P.connections),
    "input_shape": P.Prop(P.dims),
    "trainable": P.Prop(P.boolean, True),
    "flatten": P.Prop(P.boolean, False),
    "activation": P.Prop(P.text),  # validated against the activation registry
    "clip_grad_by_norm": P.Prop(P.positive_float),
    "print": P.Prop(P.boolean, False),
}

INITIALIZERS = ("zeros", "ones", "lecun_normal", "lecun_uniform", "xavier_normal",
                "xavier_uniform", "he_normal", "he_uniform", "none")

# Keys of layers that own weights (NNTrainer's LayerImpl).
WEIGHT_SCHEMA: P.Schema = {
    "weight_initializer": P.Prop(P.enum(*INITIALIZERS), "xavier_uniform"),
    "bias_initializer": P.Prop(P.enum(*INITIALIZERS), "zeros"),
    "weight_regularizer": P.Prop(P.enum("l2norm", "none"), "none"),
    "weight_regularizer_constant": P.Prop(P.nonneg_float, 1.0),
    "weight_decay": P.Prop(P.nonneg_float, 0.0),
    "bias_decay": P.Prop(P.nonneg_float, 0.0),
    "disable_bias": P.Prop(P.boolean, False),
}


@dataclass
class WeightRequest:
    name: str
    shape: Shape
    initializer: str
    trainable: bool = True
    state: bool = False    # the layer changes it itself (moving statistics, centroids)
    regularizer: str = "none"
    regularizer_constant: float = 0.0
    decay: float = 0.0
    tiled: bool = False    # cut into row tiles when the graph tiles its layer


@dataclass
class TempRequest:
    name: str
    shape: Shape
    phases: frozenset   # of Phase: the layer's steps that use it; it lives across them
    dtype: Any = np.float32
    persistent: bool = False   # kept through the step, one for all micro-batches


@dataclass
class FinalizeContext:
    """What a layer sees while it declares its tensors: input shapes (with batch)."""
    input_shapes: list[Shape]
    trainable: bool = True
    requested_outputs: int = 1   # how many outputs the graph reads: name(0), name(1), …
    frugal: int = 0              # memory over speed: 0 off, else shrink work buffers by it
    tiles: int = 1               # row tiles of the tiled weights (a tileable layer, a budget)
    parts: int = 1               # micro-batches a step's batch runs in (the shapes are one's)
    access: Access | None = None  # a variant of the layer's Access, when it picks one
    output_shapes: list[Shape] = field(default_factory=list)
    weights: list[WeightRequest] = field(default_factory=list)
    temps: list[TempRequest] = field(default_factory=list)

    def weight(self, name, shape, initializer, trainable=True, **kw) -> None:
        """Request a weight; `trainable=False` for state the layer changes itself, such
        as moving statistics."""
        self.weights.append(WeightRequest(name, tuple(shape), initializer,
                                          trainable=self.trainable and trainable,
                                          state=not trainable, **kw))

    def temp(self, name, shape, phases, dtype=np.float32, persistent=False) -> None:
        """A temporary used in `phases` (one Phase, or a set such as BACKWARD);
        `persistent` keeps it through the whole step, one shared by all micro-batches
        (statistics gathered over them) where others get a copy per part."""
        phases = frozenset({phases}) if isinstance(phases, Phase) else frozenset(phases)
        if not phases or not all(isinstance(p, Phase) for p in phases):
            raise TypeError(f"temporary {name}: phases must be Phase values, got {phases}")
        self.temps.append(TempRequest(name, tuple(shape), phases, dtype, persistent))


@dataclass
class RunContext:
    """Arena views for one layer: the only memory a layer touches."""
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    weights: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    in_grads: list[np.ndarray | None]
    out_grads: list[np.ndarray | None]
    temps: dict[str, np.ndarray]
    label: np.ndarray | None = None
    rows: int = 0       # valid rows of the batch (evaluation may pad the last batch)
    loss: float = 0.0   # set by loss layers in forward
    rng: np.random.Generator | None = None  # for dropout and other random layers
    node: str = ""      # the layer's name, for the runtime's bookkeeping
    # a tiled layer's slot works on these rows of its tiled weights, whose views hold
    # only them (the slots of the layer's untiled_tile also on its untiled weights)
    tile: tuple[int, int] | None = None
    # in micro-batches (plan/interleave.py): the part of the batch this slot runs, and
    # for a batch-coupled layer whether it gathers the whole batch's statistics (else
    # it uses them)
    part: int = 0
    gather: bool = False

    @property
    def first_tile(self) -> bool:
        """Whether this slot is its layer's first tile, or the layer is not tiled: the
        slot that starts what later tiles add to."""
        return self.tile is None or self.tile[0] == 0


class LayerError(ValueError):
    """A layer cannot accept its inputs or properties; the graph adds the location."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class Layer:
    type: str = ""
    schema: P.Schema = {}
    weighted = False          # accepts WEIGHT_SCHEMA keys
    inputs = (1, 1)           # (min, max) number of inputs; max None = any
    access = Access()         # finalize may pick a variant: ctx.access = ...
    is_loss = False
    differentiable = True     # False: passes no gradient back (nothing before it may train)
    tileable = False          # its steps follow ctx.tile, so a budget may tile its weight
    untiled_tile = 0          # tiled, the slots of this tile (-1: the last) hold its
                              # untiled weights: they read them, make their gradients
                              # and apply them
    derivative_needs_gradient = False   # True: calc_derivative reads what calc_gradient
                              # made (lstm's backpropagation through time), so a tile's
                              # gradient always comes first
    batch_coupled = False     # True: a record's training output depends on its batch's
                              # other records: in micro-batches, its forward and
                              # calc_derivative slots run over every part first to
                              # gather the whole batch's statistics (ctx.gather)
    in_pieces = False         # True: frugal levels above 1 shrink its work buffers
    draws = False             # True: its training forward draws from the run's random
                              # stream (dropout, augmentation)

    def __init__(self, name: str, props: dict[str, Any]):
        self.name = name
        self.p = props

    def finalize(self, ctx: FinalizeContext) -> None:
        raise NotImplementedError

    def request_weight(self, ctx: FinalizeContext, name: str, shape: Shape,
                       tiled: bool = False) -> None:
        """A main weight, with the WEIGHT_SCHEMA initializer, regularizer and decay;
        `tiled`: cut into ctx.tiles row tiles (a tileable layer's weight)."""
        p = self.p
        ctx.weight(name, shape, p["weight_initializer"], regularizer=p["weight_regularizer"],
                   regularizer_constant=p["weight_regularizer_constant"], decay=p["weight_decay"],
                   tiled=tiled)

    def request_bias(self, ctx: FinalizeContext, name: str, shape: Shape) -> None:
        if not self.p["disable_bias"]:
            ctx.weight(name, shape, self.p["bias_initializer"], decay=self.p["bias_decay"])

    def per_record(self) -> bool:
        """Whether, in training, each record's output depends on that record alone and
        not on chance (a frozen prefix of such layers can have its output cached)."""
        return True

    def splits(self) -> bool:
        """Whether a step's batch may run through this layer in micro-batches: it treats
        records apart, or (batch_coupled) gathers what it needs over the parts."""
        return True

    def label_shape(self, ctx: FinalizeContext) -> Shape:
        """A loss layer's label (with batch): by default one value per input value."""
        return ctx.input_shapes[0]

    def forward(self, ctx: RunContext, training: bool) -> None:
        raise NotImplementedError

    def calc_gradient(self, ctx: RunContext) -> None:
        pass

    def calc_derivative(self, ctx: RunContext) -> None:
        raise NotImplementedError


REGISTRY: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    REGISTRY[cls.type] = cls
    return cls
