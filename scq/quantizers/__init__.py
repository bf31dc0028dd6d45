"""Quantizer modules: :class:`VQ` (baseline), :class:`SCQ` (soft convex quantization), :class:`SVQ`,
and :class:`ResidualQuantizer` (a stack of any of them on residuals)."""

from .base import Quantizer, QuantizerOutput
from .residual import ResidualQuantizer
from .scq_layer import SCQ
from .svq import SVQ
from .vq import VQ

__all__ = ["Quantizer", "QuantizerOutput", "VQ", "SCQ", "SVQ", "ResidualQuantizer"]
