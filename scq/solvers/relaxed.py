r"""``method="relaxed"``: the SCQ paper's scalable relaxation ("Algorithm 2").

    p_u   = H⁻¹ b          (the unconstrained minimizer; one factorization for the whole batch)
    p_rel = Π_Δ(p_u)       (Euclidean projection onto the simplex)

**Approximate by design.** The exact solution is the projection of p_u in the *H-metric*,
argmin_{p∈Δ} (p − p_u)ᵀH(p − p_u); the Euclidean projection equals it only when H ∝ I, i.e. λ
large against EEᵀ. On random Gaussian codebooks (D=K=64) the mean ‖p_rel − p*‖₁ is about 1.25 at
λ=0.1 and 0.014 at λ=10 (MATH.md §2); use ``method="pgd"`` for the exact solution.

The factorization: the paper factors the K×K matrix H = EEᵀ + λI. When D < K this module uses the
Woodbury identity instead, which gives the same p_u from a D×D factorization,
H⁻¹b = (b − E(λI_D + EᵀE)⁻¹Eᵀb)/λ, so no K×K matrix is formed. Gradients are plain autograd
through the factorization and the sparsemax Jacobian.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..simplex import project_simplex
from .problem import code_scores, linear_term, one_hot_target
from .registry import SolverInfo, register_method


def unconstrained_minimizer(b: torch.Tensor, codebook: torch.Tensor, lam: float) -> torch.Tensor:
    """p_u = H⁻¹b for each row of ``b`` (N, K), H = EEᵀ + λI."""
    K, D = codebook.shape
    if D < K:
        gram = codebook.transpose(0, 1) @ codebook  # EᵀE, D×D
        gram = gram + lam * torch.eye(D, dtype=gram.dtype, device=gram.device)
        chol = torch.linalg.cholesky(gram)
        rhs = b @ codebook  # (N, D): rows Eᵀb
        correction = torch.cholesky_solve(rhs.transpose(0, 1), chol).transpose(0, 1) @ codebook.transpose(0, 1)
        return (b - correction) / lam
    H = codebook @ codebook.transpose(0, 1)
    H = H + lam * torch.eye(K, dtype=H.dtype, device=H.device)
    chol = torch.linalg.cholesky(H)
    return torch.cholesky_solve(b.transpose(0, 1), chol).transpose(0, 1)


@register_method("relaxed", "the paper's one-shot relaxation Π_Δ(H⁻¹b): fast, approximate by design")
def solve_relaxed(
    z: torch.Tensor,
    codebook: torch.Tensor,
    lam: float,
    target: Optional[torch.Tensor],
    *,
    projection: str = "sort",
) -> "tuple[torch.Tensor, SolverInfo]":
    """Options: ``projection`` — ``"sort"`` or ``"bisect"`` (see :func:`scq.project_simplex`)."""
    scores = code_scores(z, codebook)
    if target is None:
        target = one_hot_target(scores, codebook)
    b = linear_term(scores, lam, target)
    weights = project_simplex(unconstrained_minimizer(b, codebook, lam), method=projection)
    return weights, SolverInfo("relaxed")
