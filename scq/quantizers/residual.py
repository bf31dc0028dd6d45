r"""Residual quantization: a stack of quantizers, each quantizing what the previous ones left
(docs/math.md §8).

    r₀ = x,   q_i = Q_i(r_i),   r_{i+1} = r_i − q_i,   quantized = Σ_i q_i = x − r_Q

With VQ stages (straight-through) this is residual VQ (SoundStream); with SCQ stages each stage is
a convex combination of its codes, and gradients flow through every solve, so the whole stack is
differentiable in x and every codebook.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from .. import _validation as v
from ..solvers.solution import densify, stack_weights
from .base import Quantizer, QuantizerOutput
from .scq_layer import SCQ
from .svq import SVQ
from .vq import VQ

KINDS = {"vq": VQ, "scq": SCQ, "svq": SVQ}


class ResidualQuantizer(nn.Module):
    """``num_quantizers`` quantizers of one kind, stacked on residuals.

    Args:
        dim: input dimension D (inputs ``(..., dim)``, or the ``channel_dim`` layout).
        num_quantizers: Q, the number of stages.
        codebook_size: K of every stage.
        quantizer: ``"vq"``, ``"scq"`` or ``"svq"``: the kind of every stage.
        channel_dim: the axis of ``x`` holding the features (e.g. 1 for ``(B, C, H, W)``).
        **kwargs: passed to every stage (``lam``, ``method``, ``kmeans_init``,
            ``dead_code_threshold``, ``ema_update``, ...).

    Or build it from stages you made: ``ResidualQuantizer.from_stages([scq.SCQ(...), scq.VQ(...)])``.

    ``forward(x)`` returns :class:`QuantizerOutput`: ``quantized`` the sum of the stages'
    outputs; ``weights`` ``(..., Q, K)`` (sparse ``(..., Q, m)`` or ``None`` with the stages'
    ``return_weights``) and ``indices`` ``(..., Q)``, stage by stage; ``loss`` the
    sum of the stages' losses. ``quantize_first(x, n)`` uses only the first n stages (coarser
    codes at fewer bits).
    """

    def __init__(self, dim: int, num_quantizers: int, codebook_size: int, *, quantizer: str = "vq",
                 channel_dim: Optional[int] = None, **kwargs):
        super().__init__()
        if quantizer not in KINDS:
            raise ValueError(f"quantizer must be one of {tuple(KINDS)}, got {quantizer!r}")
        num_quantizers = v.check_positive_int("num_quantizers", num_quantizers)
        if "channel_dim" in kwargs:
            raise TypeError("pass channel_dim to ResidualQuantizer, not to its stages")
        stages = [KINDS[quantizer](dim, codebook_size, **kwargs) for _ in range(num_quantizers)]
        self._setup(stages, channel_dim)

    @classmethod
    def from_stages(cls, stages: Iterable[Quantizer], *, channel_dim: Optional[int] = None) -> "ResidualQuantizer":
        """A residual quantizer from quantizer modules of any kinds (same ``dim`` and
        ``codebook_size``, last-axis layout)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(list(stages), channel_dim)
        return self

    def _setup(self, stages: "list[Quantizer]", channel_dim: Optional[int]) -> None:
        if not stages:
            raise ValueError("a residual quantizer needs at least one stage")
        for i, stage in enumerate(stages):
            if not isinstance(stage, Quantizer):
                raise TypeError(f"stage {i} must be a scq quantizer module, got {type(stage).__name__}")
            if stage.dim != stages[0].dim:
                raise ValueError(f"every stage must have the same dim: stage 0 has {stages[0].dim}, stage {i} has {stage.dim}")
            if stage.codebook_size != stages[0].codebook_size:
                raise ValueError(f"every stage must have the same codebook_size (the weights are stacked): "
                                 f"stage 0 has {stages[0].codebook_size}, stage {i} has {stage.codebook_size}")
            if stage.channel_dim is not None:
                raise ValueError(f"stage {i} has channel_dim set: set it on the ResidualQuantizer instead")
        self.layers = nn.ModuleList(stages)
        self.dim = stages[0].dim
        self.channel_dim = channel_dim

    @property
    def num_quantizers(self) -> int:
        return len(self.layers)

    @property
    def codebooks(self) -> "list[torch.Tensor]":
        return [stage.codebook for stage in self.layers]

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        return self.quantize_first(x, self.num_quantizers)

    def quantize_first(self, x: torch.Tensor, n: int) -> QuantizerOutput:
        """The output of the first ``n`` stages only."""
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"n must be in [1, {self.num_quantizers}], got {n}")
        if self.channel_dim is not None:
            x = x.movedim(self.channel_dim, -1)
        residual = x
        total, weights, indices, loss = 0, [], [], 0
        for stage in self.layers[:n]:
            out = stage(residual)
            # Straight-through stages (VQ) pass the identity to their input: the residual they
            # leave is then a constant, and the stack's gradient is the identity, as for one VQ.
            residual = residual - out.quantized
            total = total + out.quantized
            weights.append(out.weights)
            indices.append(out.indices)
            loss = loss + out.loss
        quantized = total if self.channel_dim is None else total.movedim(-1, self.channel_dim)
        return QuantizerOutput(quantized, stack_weights(weights, -2), torch.stack(indices, -1), loss)

    def decode(self, weights) -> torch.Tensor:
        """Σ over stages of each stage's :meth:`Quantizer.decode` of its weights: ``weights``
        ``(..., Q', K)`` with Q' ≤ Q (the first Q' stages, as :meth:`quantize_first`) → ``(..., dim)``
        (the ``channel_dim`` layout when set)."""
        dense = densify(weights)
        if not torch.is_tensor(dense) or dense.dim() < 2 or not 1 <= dense.shape[-2] <= self.num_quantizers:
            raise ValueError(f"weights must have shape (..., Q, K) with 1 <= Q <= {self.num_quantizers}, got "
                             f"{tuple(dense.shape) if torch.is_tensor(dense) else type(weights).__name__}")
        total = sum(stage.decode(dense[..., i, :]) for i, stage in enumerate(self.layers[: dense.shape[-2]]))
        return total if self.channel_dim is None else total.movedim(-1, self.channel_dim)

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Σ over stages of the codes of ``indices`` ``(..., Q')`` (the first Q' ≤ Q stages)."""
        if not torch.is_tensor(indices) or indices.dim() < 1 or not 1 <= indices.shape[-1] <= self.num_quantizers:
            raise ValueError(f"indices must have shape (..., Q) with 1 <= Q <= {self.num_quantizers}")
        total = sum(stage.get_output_from_indices(indices[..., i]) for i, stage in enumerate(self.layers[: indices.shape[-1]]))
        return total if self.channel_dim is None else total.movedim(-1, self.channel_dim)

    def extra_repr(self) -> str:
        return f"num_quantizers={self.num_quantizers}" + (f", channel_dim={self.channel_dim}" if self.channel_dim is not None else "")
