r"""The two problems scq solves, as formulas every method, certificate and reference shares.

SCQ (docs/math.md §2):

    p* = argmin_{p ∈ Δ_K} ‖z − Eᵀp‖² + λ‖p − p̃‖²  =  argmin_{p ∈ Δ_K} pᵀHp − 2bᵀp,
    H = EEᵀ + λI,   b = Ez + λp̃.

Lasso, SVQ's sparse regression (docs/math.md §5):

    w* = argmin_w ½‖z − Eᵀw‖² + α‖w‖₁   (optionally w ≥ 0)
"""

from __future__ import annotations

from typing import Optional

import torch


def max_code_norm(codebook: torch.Tensor) -> torch.Tensor:
    """max_k ‖e_k‖ (a 0-dim tensor: no host sync)."""
    return codebook.norm(dim=-1).max()


def row_scale(z: torch.Tensor, e_max: torch.Tensor, constant, z_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The size of the terms a row's multipliers are made of, ‖e‖max(‖e‖max + ‖z‖) + ``constant``
    (N,): relative KKT tolerances are relative to this. The engine's stopping rule and the
    certificate both use it, so that what the engine accepts the certificate can pass. ``z_norm``:
    ‖z‖ per row, where the caller has it."""
    return e_max * (e_max + (z.norm(dim=-1) if z_norm is None else z_norm)) + constant


def code_scores(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``Z Eᵀ`` (N, K): the one GEMM both the nearest-code search and ``b`` need."""
    return z @ codebook.transpose(0, 1)


def nearest_code(scores: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ‖z − e_k‖² from the scores ``Z Eᵀ`` (‖z‖² is the same for every k)."""
    sq_norms = (codebook * codebook).sum(-1)
    return (sq_norms - 2 * scores).argmin(dim=-1)


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ‖z − e_k‖² for rows of ``z`` (N, D) when the scores are not needed otherwise:
    ‖e‖² − 2ZEᵀ in one fused GEMM (docs/math.md §1)."""
    sq_norms = (codebook * codebook).sum(-1)
    return torch.addmm(sq_norms, z, codebook.transpose(0, 1), alpha=-2).argmin(-1)


def one_hot_target(scores: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """p̃ = one_hot(nearest code), with no gradient (docs/math.md §2)."""
    with torch.no_grad():
        idx = nearest_code(scores, codebook)
        target = torch.zeros_like(scores)
        target.scatter_(-1, idx.unsqueeze(-1), 1.0)
    return target


def linear_term(scores: torch.Tensor, lam: float, target: torch.Tensor) -> torch.Tensor:
    """b = Ez + λp̃ for the batch: ``Z Eᵀ + λ P̃`` (N, K)."""
    return scores + lam * target


def resolve_target(z: torch.Tensor, codebook: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    return one_hot_target(code_scores(z.detach(), codebook.detach()), codebook.detach()) if target is None else target


def objective(weights: torch.Tensor, z: torch.Tensor, codebook: torch.Tensor, lam: float, target: torch.Tensor) -> torch.Tensor:
    """‖z − Eᵀp‖² + λ‖p − p̃‖² per vector (N,)."""
    residual = z - weights @ codebook
    return (residual * residual).sum(-1) + lam * ((weights - target) ** 2).sum(-1)

