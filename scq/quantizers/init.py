"""Codebook initializations by name: the common ones and those of the released SVQ code."""

from __future__ import annotations

import math

import torch
from torch import nn


def _kaiming(codebook: torch.Tensor) -> None:
    # U(±√(6/D)): kaiming_uniform_ with a = 0, as the released SVQ code calls it.
    nn.init.kaiming_uniform_(codebook, a=0.0)


def _kaiming_linear(codebook: torch.Tensor) -> None:
    # U(±1/√D): a = √5, nn.Linear's default for its weight (scq's "kaiming" before 0.2).
    nn.init.kaiming_uniform_(codebook, a=math.sqrt(5))


def _uniform(codebook: torch.Tensor) -> None:
    K = codebook.shape[0]
    nn.init.uniform_(codebook, -1.0 / K, 1.0 / K)


INITIALIZERS = {
    "normal": nn.init.normal_,  # N(0, 1): codes on the scale of unit-variance features
    "uniform": _uniform,  # U(−1/K, 1/K), as in the original VQ-VAE
    "kaiming": _kaiming,
    "kaiming_linear": _kaiming_linear,
    "xavier": lambda c: nn.init.xavier_uniform_(c, gain=nn.init.calculate_gain("relu")),
    "trunc_normal": nn.init.trunc_normal_,  # N(0, 1) cut at ±2
    "orthogonal": nn.init.orthogonal_,
    "sparse": lambda c: nn.init.sparse_(c, sparsity=0.9),
}
ALIASES = {"trunc": "trunc_normal", "random": "normal"}  # the released SVQ code's names
INITS = tuple(INITIALIZERS)


def check_init(init: object) -> str:
    if not isinstance(init, str) or ALIASES.get(init, init) not in INITIALIZERS:
        raise ValueError(f"init must be one of {INITS + tuple(ALIASES)}, got {init!r}")
    return ALIASES.get(init, init)


@torch.no_grad()
def init_codebook_(codebook: torch.Tensor, init: str) -> None:
    """Initialize a ``(K, D)`` codebook, or each of a ``(heads, K, D)`` stack, in place.

    ``"normal"`` N(0, 1); ``"uniform"`` U(−1/K, 1/K); ``"kaiming"`` U(±√(6/D)) (kaiming-uniform,
    a = 0, the released SVQ code's); ``"kaiming_linear"`` U(±1/√D) (a = √5, ``nn.Linear``'s);
    ``"xavier"`` xavier-uniform with ReLU gain; ``"trunc_normal"`` (``"trunc"``); ``"orthogonal"``;
    ``"sparse"`` (90% zeros per column).
    """
    fill = INITIALIZERS[check_init(init)]
    for book in codebook.reshape(-1, *codebook.shape[-2:]):
        fill(book)
