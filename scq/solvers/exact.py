r"""``method="exact"``: the SCQ problem as a cone program, solved and differentiated by cvxpylayers.

    p* = argmin_{p ∈ Δ_K} ‖z − Eᵀp‖² + λ‖p − p̃‖²

The reference layer: one cone program per vector, CPU, float64 (settings in
:mod:`scq.solvers.cvxpy_layers`). Each vector's problem is first brought to unit scale, which
leaves its solution unchanged: centred at the codebook's mean c (z − Eᵀp = (z − c) − (E − c)ᵀp on
the simplex) and divided by s = max(‖e − c‖max, ‖z − c‖), with λ/s² for λ. Without this, inputs
far from the codebook's hull leave SCS "inaccurate" with negative weights. Its answer is then
certified like every other method's; one that fails says so (``converged=False`` and a
RuntimeWarning, or an error with ``strict=True``).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..problems import resolve_target
from .cvxpy_layers import EXACT_TOL, check_cone_options, check_cpu, run_chunked, scq_layer
from .registry import register_method


@register_method("exact", "cvxpylayers (diffcp + SCS, eps=1e-9, float64): the reference, one cone program per "
                          "vector, CPU only", tol=EXACT_TOL, validate=check_cone_options)
def solve_exact(
    z: torch.Tensor,
    codebook: torch.Tensor,
    lam: float,
    target: Optional[torch.Tensor],
    *,
    tol: Optional[float] = None,
    chunk_size: int = 32,
    solver_args: Optional[dict] = None,
) -> torch.Tensor:
    """Options: ``tol`` (the certificate's tolerance; default 1e-7, SCS's reach at eps=1e-9), ``chunk_size`` (vectors
    per cone-solver batch) and ``solver_args`` (merged over the defaults, passed to diffcp)."""
    check_cpu(z, "method='exact'", codebook, target)
    target = resolve_target(z, codebook, target)
    f64 = torch.float64
    E, Z, T = codebook.to(f64), z.to(f64), target.to(f64)
    with torch.no_grad():
        center = E.mean(0)
        scale = torch.maximum((E - center).norm(dim=-1).max(), (Z - center).norm(dim=-1)).clamp_min(1e-300)
    C = (E - center).transpose(0, 1)  # (D, K)
    sqrt_lam = lam ** 0.5 / scale  # (N,)
    weights = run_chunked(
        scq_layer(*codebook.shape),
        lambda rows: (C / scale[rows, None, None], (Z[rows] - center) / scale[rows, None], sqrt_lam[rows],
                      T[rows] * sqrt_lam[rows, None]),
        z.shape[0], chunk_size, solver_args, needs_grad=any(t.requires_grad for t in (z, codebook, target)),
        what="method='exact'",
    )
    return weights.to(z.dtype)
