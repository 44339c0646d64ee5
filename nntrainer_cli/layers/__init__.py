"""Layers, registered by NNTrainer type name."""

from . import activation, conv, core, loss, merge, norm, sequence  # noqa: F401  (registration)
from .base import REGISTRY, FinalizeContext, Layer, LayerError, RunContext

__all__ = ["REGISTRY", "FinalizeContext", "Layer", "LayerError", "RunContext"]
