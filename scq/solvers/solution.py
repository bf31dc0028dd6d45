"""The one solution type of every solver: dense weights ``(N, K)`` or :class:`SparseWeights`.

Methods return either form; everything downstream (the certificate, the front doors, the modules)
goes through :func:`densify`, :func:`combine` and :func:`hard_codes`, which accept both, so the
sparse-or-dense question is answered here and nowhere else.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch

from .engine import fused
from .threads import one_thread


def gather_rows(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``codebook[indices]`` (..., D) by index_select: ~3× faster than advanced indexing on the CPU."""
    return codebook.index_select(0, indices.reshape(-1)).view(*indices.shape, codebook.shape[1])


class _Combine(torch.autograd.Function):
    """z_q[n] = Σ_j values[n, j] · codebook[indices[n, j]].

    Written out because autograd's backward of ``codebook[indices]`` (index_put with
    accumulation) costs several times this ``index_add_``. Twice differentiable: a backward that
    builds a graph (``create_graph=True``) takes the torch ops, which autograd differentiates again.
    """

    @staticmethod
    def forward(values, codebook, indices):
        out = fused.combine(values, codebook, indices)  # the CPU: compiled, no (N, m, D) gather
        if out is not None:
            return out
        return torch.bmm(values.unsqueeze(1), gather_rows(codebook, indices)).squeeze(1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        values, codebook, indices = inputs
        ctx.save_for_backward(values, codebook, indices)
        ctx.one_thread = codebook.device.type == "cpu" and torch.get_num_threads() == 1  # the backward runs alike

    @staticmethod
    def backward(ctx, grad):
        with one_thread(ctx.one_thread):
            return _Combine._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        values, codebook, indices = ctx.saved_tensors
        # Grad mode is on in a backward only under create_graph=True: then torch ops, not the kernel.
        compiled = None if torch.is_grad_enabled() else fused.combine_backward(
            values, codebook, indices, grad, need_values=ctx.needs_input_grad[0], need_codebook=ctx.needs_input_grad[1])
        if compiled is not None:
            return compiled[0], compiled[1], None
        grad_values = grad_codebook = None
        if ctx.needs_input_grad[0]:
            grad_values = torch.bmm(gather_rows(codebook, indices), grad.unsqueeze(-1)).squeeze(-1)
        if ctx.needs_input_grad[1]:
            contrib = values.unsqueeze(-1) * grad.unsqueeze(1)
            grad_codebook = torch.zeros_like(codebook).index_add_(
                0, indices.reshape(-1), contrib.reshape(-1, codebook.shape[1])
            )
        return grad_values, grad_codebook, None


class SparseWeights(NamedTuple):
    """Row n holds weight ``values[n, j]`` on code ``indices[n, j]`` and 0 on every other code.

    Solvers whose solutions have small supports return this so that ``z_q = Eᵀp`` and the
    backward cost O(N·m·D) instead of O(N·K·D). Slots with value 0 are padding.
    """

    indices: torch.Tensor
    values: torch.Tensor
    num_codes: int

    def to_dense(self) -> torch.Tensor:
        dense = self.values.new_zeros(self.values.shape[:-1] + (self.num_codes,))
        # scatter_add: padding slots may repeat a code with value 0. In place on the fresh zeros
        # (still differentiable in ``values``): the out-of-place form copies the (N, K) tensor.
        return dense.scatter_add_(-1, self.indices, self.values)

    def combine(self, codebook: torch.Tensor) -> torch.Tensor:
        """Σ_j values[n, j] · codebook[indices[n, j]], shape (N, D)."""
        return _Combine.apply(self.values, codebook, self.indices)

    def argmax(self) -> torch.Tensor:
        return hard_codes(self)


Weights = Union[torch.Tensor, SparseWeights]


def densify(weights: Weights) -> torch.Tensor:
    """The weights as a dense ``(N, K)`` tensor."""
    return weights.to_dense() if isinstance(weights, SparseWeights) else weights


def combine(weights: Weights, codebook: torch.Tensor) -> torch.Tensor:
    """z_q = Eᵀp for every row, ``(N, D)``: O(N·m·D) for sparse weights, one GEMM for dense."""
    return weights.combine(codebook) if isinstance(weights, SparseWeights) else weights @ codebook


def to_sparse(weights: Weights) -> SparseWeights:
    """The weights as :class:`SparseWeights` (sparse ones as they are). Dense rows keep their
    nonzero entries, padded to the widest row's count (one host sync to learn it). Where a row
    has every code (an MLP's weights), the form holds the weights themselves and the codes
    0..K−1 as a stride-0 view: no copy, where indices and gathered values took 3 (N, K) buffers."""
    if isinstance(weights, SparseWeights):
        return weights
    K = weights.shape[-1]
    width = int((weights != 0).sum(-1, dtype=torch.int32).max()) if weights.numel() else 0  # (int32: no int64 copy)
    if width == K:
        return SparseWeights(torch.arange(K, device=weights.device).expand(weights.shape), weights, K)
    indices = weights.detach().abs().topk(width, dim=-1).indices
    return SparseWeights(indices, weights.gather(-1, indices), K)


def stack_weights(parts: "list[Weights | None]", dim: int) -> "Weights | None":
    """Stack per-head or per-stage weights along a new axis ``dim`` (counted from the end for
    sparse ones, before their slot axis). ``None`` if any part is ``None``; sparse parts are
    padded to a common slot count (padding: code 0 with value 0)."""
    if any(p is None for p in parts):
        return None
    if not isinstance(parts[0], SparseWeights):
        return torch.stack(parts, dim)
    width = max(p.indices.shape[-1] for p in parts)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]))
    return SparseWeights(torch.stack([pad(p.indices) for p in parts], dim),
                         torch.stack([pad(p.values) for p in parts], dim), parts[0].num_codes)


def reshape_weights(weights: "Weights | None", batch_shape: "tuple[int, ...]") -> "Weights | None":
    """``(N, ..., K)`` dense or ``(N, ..., m)`` sparse weights with their rows as ``batch_shape``."""
    if weights is None:
        return None
    if isinstance(weights, SparseWeights):
        m = weights.indices.shape[-1]
        return SparseWeights(weights.indices.reshape(*batch_shape, m), weights.values.reshape(*batch_shape, m),
                             weights.num_codes)
    return weights.reshape(*batch_shape, weights.shape[-1])


def hard_codes(weights: Weights, by_magnitude: bool = False) -> torch.Tensor:
    """The code of largest weight (``by_magnitude``: largest |weight|) of every row, int64 ``(N,)``."""
    if isinstance(weights, SparseWeights):
        values = weights.values.abs() if by_magnitude else weights.values
        if weights.values.shape[-1] == 0:
            return weights.indices.new_zeros(weights.indices.shape[:-1])
        return weights.indices.gather(-1, values.argmax(-1, keepdim=True)).squeeze(-1)
    w = weights.detach()
    if w.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=w.device)
    return (w.abs() if by_magnitude else w).argmax(-1)

