r"""``solve_lasso(method="exact")``: the lasso as a cone program, solved and differentiated by cvxpylayers.

    w* = argmin_w ½‖z − Eᵀw‖² + α‖w‖₁      (``nonneg``: subject to w ≥ 0)

The reference (CPU, float64; settings in :mod:`scq.solvers.cvxpy_layers`). Each vector's
problem is brought to unit scale first, which leaves its solution unchanged: z and E divided by
s = max(‖e‖max, ‖z‖) and α by s².
"""

from __future__ import annotations

from typing import Optional

import torch

from .cvxpy_layers import EXACT_TOL, check_cone_options, check_cpu, lasso_layer, run_chunked
from .registry import register_method


@register_method("exact", "cvxpylayers (diffcp + SCS, eps=1e-9, float64): the reference, one cone program per "
                          "vector, CPU only", tol=EXACT_TOL, problem="lasso",
                 validate=check_cone_options)
def solve_lasso_exact(
    z: torch.Tensor,
    codebook: torch.Tensor,
    alpha: float,
    nonneg: bool,
    *,
    tol: Optional[float] = None,
    chunk_size: int = 32,
    solver_args: Optional[dict] = None,
) -> torch.Tensor:
    """Options: ``tol`` (the certificate's tolerance; default 1e-7, SCS's reach at eps=1e-9), ``chunk_size``, ``solver_args``."""
    check_cpu(z, "solve_lasso(method='exact')", codebook)
    f64 = torch.float64
    E, Z = codebook.to(f64), z.to(f64)
    with torch.no_grad():
        scale = torch.maximum(E.norm(dim=-1).max(), Z.norm(dim=-1)).clamp_min(1e-300)
    C = E.transpose(0, 1)
    weights = run_chunked(
        lasso_layer(*codebook.shape, bool(nonneg)),
        lambda rows: (C / scale[rows, None, None], Z[rows] / scale[rows, None], alpha / scale[rows] ** 2),
        z.shape[0], chunk_size, solver_args, needs_grad=z.requires_grad or codebook.requires_grad,
        what="solve_lasso(method='exact')",
    )
    return weights.to(z.dtype)
