"""Quantizer modules: :class:`VQ` (baseline), :class:`SCQ` (soft convex quantization), :class:`SVQ`."""

from .base import QuantizerOutput
from .scq_layer import SCQ
from .svq import SVQ
from .vq import VQ

__all__ = ["QuantizerOutput", "VQ", "SCQ", "SVQ"]
