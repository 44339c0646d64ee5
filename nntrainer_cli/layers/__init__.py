"""Layers, registered by NNTrainer type name when their modules are imported here."""

from . import activation, augment, conv, core, fewshot, loss, merge, norm, pooling, sequence
from .base import REGISTRY, FinalizeContext, Layer, LayerError, RunContext

__all__ = ["REGISTRY", "FinalizeContext", "Layer", "LayerError", "RunContext",
           "activation", "augment", "conv", "core", "fewshot", "loss", "merge", "norm", "pooling",
           "sequence"]
