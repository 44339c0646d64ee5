"""Layers, registered by NNTrainer type name when their modules are imported here."""

from . import activation, conv, core, loss, merge, norm, sequence
from .base import REGISTRY, FinalizeContext, Layer, LayerError, RunContext

__all__ = ["REGISTRY", "FinalizeContext", "Layer", "LayerError", "RunContext",
           "activation", "conv", "core", "loss", "merge", "norm", "sequence"]
