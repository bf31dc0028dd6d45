r"""The rate of a quantizer's codes: weights rounded to b bits, and the bits per vector they cost.

A hard quantizer (VQ) sends one index per vector: log₂K bits. A soft one (SCQ, SVQ) sends, for
every code whose weight is not zero *after rounding*, its index and its weight:

    bits per vector = (number of nonzero rounded weights) · (log₂K + b)

(a fixed-length count; an entropy coder would lower every contender's rate, VQ's as well, and a
variable support also needs its length, ≤ log₂(K+1) bits more, which this count leaves out).

Rounding (what the receiver can rebuild from b bits per weight):

- ``"simplex"`` weights (SCQ: w ≥ 0, Σw = 1) are rounded to the grid {0, 1/L, …, 1},
  L = 2^b − 1, and renormalized to sum to 1 (a row whose every weight rounds to 0 keeps its
  largest weight, as 1);
- ``"real"`` weights (SVQ's regression weights) are rounded to 2^(b−1) − 1 levels on each side
  of 0 over [−c, c], c a fixed scale of the codec (here: the largest |w| of a training batch).

Residual stacks are encoded closed-loop: stage i quantizes what the *rounded* stages before it
left, as a real encoder would.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

import scq

KINDS = ("simplex", "real")


def round_weights(weights: torch.Tensor, bits: int, kind: str, scale: Optional[float] = None) -> torch.Tensor:
    """``weights`` (..., K) rounded to ``bits`` bits each (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if kind == "simplex":
        levels = 2**bits - 1
        q = torch.round(weights.clamp(0, 1) * levels) / levels
        total = q.sum(-1, keepdim=True)
        fallback = torch.nn.functional.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
        return torch.where(total > 0, q / total.clamp_min(1e-30), fallback)
    if scale is None or not scale > 0:
        raise ValueError(f"real weights need a positive scale, got {scale!r}")
    levels = 2 ** (bits - 1) - 1
    if levels == 0:  # one bit: the sign only
        return torch.sign(weights) * scale
    return torch.round(weights.clamp(-scale, scale) / scale * levels) / levels * scale


def soft_bits(weights: torch.Tensor, bits_per_weight: int) -> torch.Tensor:
    """Bits each row of rounded ``weights`` (..., K) costs: nonzeros · (log₂K + b), shape (...)."""
    return (weights != 0).sum(-1).to(torch.float64) * (math.log2(weights.shape[-1]) + bits_per_weight)


def _stages(quantizer) -> list:
    return list(quantizer.layers) if isinstance(quantizer, scq.ResidualQuantizer) else [quantizer]


def weight_kind(stage) -> Optional[str]:
    """How a stage's weights are rounded: None for hard codes (VQ), else a ``KINDS`` entry."""
    if isinstance(stage, scq.VQ):
        return None
    return "simplex" if isinstance(stage, scq.SCQ) else "real"


def is_hard(quantizer) -> bool:
    """True when every stage sends indices only (no weights to round)."""
    return all(weight_kind(s) is None for s in _stages(quantizer)) if isinstance(quantizer, (scq.Quantizer, scq.ResidualQuantizer)) else True


@torch.no_grad()
def weight_scales(quantizer, z: torch.Tensor) -> list:
    """Per stage, the codec's fixed scale for ``"real"`` weights: the largest |w| over ``z``
    (training vectors), closed-loop through the stack; None for the other stages."""
    scales, residual = [], z
    for stage in _stages(quantizer):
        out = stage(residual)
        if weight_kind(stage) == "real":
            largest = float(out.weights.abs().max())
            scales.append(largest if largest > 0 else 1.0)  # all weights 0: any scale rounds them to 0
        else:
            scales.append(None)
        residual = residual - out.quantized
    return scales


@torch.no_grad()
def encode_at(quantizer, z: torch.Tensor, bits: Optional[int], scales: Optional[list] = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """(the vectors a receiver rebuilds, bits per vector (...)) for latent vectors ``z`` (..., D),
    with weights rounded to ``bits`` bits (``None``: weights sent as float32, 32 bits each).

    ``quantizer``: an :class:`scq.Quantizer` or :class:`scq.ResidualQuantizer` (last-axis layout);
    for hard codes the rate is log₂K per stage and the vectors are the forward's.
    """
    stages = _stages(quantizer)
    scales = scales or [None] * len(stages)
    residual, total = z, torch.zeros_like(z)
    rate = torch.zeros(z.shape[:-1], dtype=torch.float64, device=z.device)
    for stage, scale in zip(stages, scales):
        out = stage(residual)
        kind = weight_kind(stage)
        if kind is None:
            vectors = out.quantized
            rate = rate + math.log2(stage.codebook_size)
        else:
            w = out.weights
            if bits is not None:
                w = round_weights(w, bits, kind, scale)
            vectors = stage.decode(w)
            rate = rate + soft_bits(w, 32 if bits is None else bits)
        total = total + vectors
        residual = residual - vectors  # closed loop: the next stage sees what the receiver will
    return total, rate
