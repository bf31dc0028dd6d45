"""Quantizer modules: :class:`VQ` (baseline), :class:`SCQ` (soft convex quantization)."""

from .base import QuantizerOutput
from .scq_layer import SCQ
from .vq import VQ

__all__ = ["QuantizerOutput", "VQ", "SCQ"]
