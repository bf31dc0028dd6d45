r"""``method="relaxed"``: the SCQ paper's scalable relaxation ("Algorithm 2").

    p_u   = H⁻¹ b          (the unconstrained minimizer; one factorization for the whole batch)
    p_rel = Π_Δ(p_u)       (Euclidean projection onto the simplex)

**Approximate by design.** The exact solution is the projection of p_u in the *H-metric*,
argmin_{p∈Δ} (p − p_u)ᵀH(p − p_u); the Euclidean projection equals it only when H ∝ I, i.e. λ
large against EEᵀ. On random Gaussian codebooks (D=K=64) the mean ‖p_rel − p*‖₁ is about 1.25 at
λ=0.1 and 0.014 at λ=10 (docs/math.md §2); use ``method="pgd"`` for the exact solution.

The factorization: the paper factors the K×K matrix H = EEᵀ + λI. When D < K this module uses a
D×D factorization instead, in the form that stays accurate in float32:

    H⁻¹(Ez + λp̃) = p̃ + E(λI_D + EᵀE)⁻¹(z − Eᵀp̃)

(multiply out by H: E(EᵀE + λI)(·) = (EEᵀ + λI)E(·)). The textbook Woodbury form
(b − E(λI + EᵀE)⁻¹Eᵀb)/λ subtracts two nearly equal terms and divides by λ, which in float32 left
errors of 1.0 at λ = 1e-6 and 1e-2 at λ = 1e-3. No K×K matrix is formed. Gradients are plain
autograd through the factorization and the sparsemax Jacobian.

Its certificate is measured like every method's (``info.residual``, ``info.error_bound``) and is
usually far from the tolerance: ``converged`` is then False, without a warning, since the method
never claims the exact solution.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _validation as v
from ..simplex import PROJECTIONS, project_simplex
from ..problems import code_scores, linear_term, nearest_codes
from .registry import SolverInfo, register_method


def unconstrained_minimizer(z: torch.Tensor, codebook: torch.Tensor, lam: float, target: Optional[torch.Tensor],
                            target_point: Optional[torch.Tensor] = None,
                            nearest: Optional[torch.Tensor] = None) -> torch.Tensor:
    """p_u = H⁻¹(Ez + λp̃) for each row (N, K), H = EEᵀ + λI; ``target_point`` is Eᵀp̃ if known.
    With ``nearest`` (N,) instead of ``target``, p̃ is that one-hot, never formed as (N, K)."""
    K, D = codebook.shape
    if D < K:
        gram = codebook.transpose(0, 1) @ codebook  # EᵀE, D×D
        gram = gram + lam * torch.eye(D, dtype=gram.dtype, device=gram.device)
        chol = torch.linalg.cholesky(gram)
        rhs = z - (target @ codebook if target_point is None else target_point)  # (N, D): rows z − Eᵀp̃
        correction = torch.cholesky_solve(rhs.transpose(0, 1), chol).transpose(0, 1) @ codebook.transpose(0, 1)
        if nearest is not None:  # + p̃ in place: one (N, K) buffer, not three
            return correction.scatter_add_(1, nearest.unsqueeze(1), torch.ones_like(correction[:, :1]))
        return correction.add_(target)
    if target is None:
        target = torch.zeros(z.shape[0], K, dtype=z.dtype, device=z.device).scatter_(1, nearest.unsqueeze(1), 1.0)
    H = codebook @ codebook.transpose(0, 1)
    H = H + lam * torch.eye(K, dtype=H.dtype, device=H.device)
    chol = torch.linalg.cholesky(H)
    b = linear_term(code_scores(z, codebook), lam, target)
    return torch.cholesky_solve(b.transpose(0, 1), chol).transpose(0, 1)


def _check_relaxed_options(projection: str = "sort", **_) -> None:
    v.check_choice("projection", projection, PROJECTIONS)


@register_method("relaxed", "the SCQ paper's one-shot relaxation Π_Δ(H⁻¹b): fast, approximate by design",
                 exact=False, validate=_check_relaxed_options)
def solve_relaxed(
    z: torch.Tensor,
    codebook: torch.Tensor,
    lam: float,
    target: Optional[torch.Tensor],
    *,
    tol: Optional[float] = None,
    projection: str = "sort",
) -> torch.Tensor:
    """Options: ``projection`` — ``"sort"`` or ``"bisect"`` (see :func:`scq.project_simplex`);
    ``tol`` — the tolerance its certificate is judged by (it rarely meets it: it is approximate)."""
    target_point = nearest = None
    if target is None:
        with torch.no_grad():
            # In one fused GEMM (one (N, K) buffer, not three); handed on to the certificate, which
            # then judges the answer against this p̃ and saves a GEMM and an argmin of its own.
            nearest = nearest_codes(z, codebook)
        target_point = codebook[nearest]  # Eᵀp̃ without a one-hot GEMM
    weights = project_simplex(unconstrained_minimizer(z, codebook, lam, target, target_point, nearest),
                              method=projection)
    return weights, SolverInfo("relaxed", extra={} if nearest is None else {"nearest": nearest})
