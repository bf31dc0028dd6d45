r"""``method="exact"``: the SCQ problem as a cone program, solved and differentiated by cvxpylayers.

The reference solver: one cone program per vector, on the CPU, in float64, through diffcp's
implicit differentiation of the homogeneous self-dual embedding. DPP form (λ enters through
√λ-scaled parameters, so one compiled problem per (K, D) serves every λ):

    minimize ‖Cp − z‖² + ‖√λ·p − √λ·p̃‖²   s.t.  p ≥ 0, 1ᵀp = 1,    C = Eᵀ.

Tolerance: SCS with ``eps=1e-9`` and diffcp's ``mode="dense"`` derivative. The default tolerance
leaves weights off by ~3e-4 (some slightly negative) and gradients off by ~1e-4 relative; the
default ``lsqr`` derivative adds ~5e-7. With these settings weights and gradients agree with the
KKT solution of MATH.md §4 to ~5e-9 (``eps=1e-12`` reaches ~1e-13, for gradcheck). diffcp's memory grows by tens of MB per vector at K≈512, so the
batch is solved in chunks of ``chunk_size``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch

from .problem import resolve_target
from .registry import SolverInfo, register_method

DEFAULT_SOLVER_ARGS = {"solve_method": "SCS", "eps": 1e-9, "max_iters": 100_000, "mode": "dense"}


@functools.lru_cache(maxsize=16)
def _layer(K: int, D: int):
    # Imported here: cvxpy's import and each compile cost seconds that the fast methods never pay.
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    p = cp.Variable(K)
    C = cp.Parameter((D, K))
    z = cp.Parameter(D)
    sqrt_lam = cp.Parameter(nonneg=True)
    scaled_target = cp.Parameter(K)
    objective = cp.sum_squares(C @ p - z) + cp.sum_squares(sqrt_lam * p - scaled_target)
    problem = cp.Problem(cp.Minimize(objective), [p >= 0, cp.sum(p) == 1])
    assert problem.is_dpp()
    return CvxpyLayer(problem, parameters=[C, z, sqrt_lam, scaled_target], variables=[p])


def check_cpu(z: torch.Tensor) -> None:
    if z.device.type != "cpu":
        raise ValueError(f"method='exact' runs on the CPU only (cvxpylayers/diffcp); z is on {z.device}")


def run_chunked(layer, args_for, n: int, chunk_size: int, solver_args: Optional[dict], needs_grad: bool, what: str):
    """Run a CvxpyLayer over rows ``0..n`` in chunks (diffcp's memory grows per vector);
    ``args_for(slice)`` gives the layer's parameters for those rows. Float64 output, checked."""
    args = {**DEFAULT_SOLVER_ARGS, **(solver_args or {})}
    if not (torch.is_grad_enabled() and needs_grad):
        args.pop("mode", None)  # a derivative option: diffcp hands it to SCS when only solving
    chunks = []
    for start in range(0, n, chunk_size):
        try:
            (out,) = layer(*args_for(slice(start, start + chunk_size)), solver_args=args)
        except Exception as err:  # diffcp raises SolverError and plain exceptions alike
            raise RuntimeError(f"{what}: the cone solver failed ({err})") from err
        chunks.append(out)
    weights = torch.cat(chunks)
    if not bool(torch.isfinite(weights).all()):
        raise RuntimeError(f"{what}: the cone solver returned non-finite weights")
    return weights


@register_method("exact", "cvxpylayers (diffcp + SCS, eps=1e-9, float64): the reference, one cone program per vector")
def solve_exact(
    z: torch.Tensor,
    codebook: torch.Tensor,
    lam: float,
    target: Optional[torch.Tensor],
    *,
    chunk_size: int = 32,
    solver_args: Optional[dict] = None,
) -> "tuple[torch.Tensor, SolverInfo]":
    """Solve with cvxpylayers. Options: ``chunk_size`` (vectors per cone-solver batch) and
    ``solver_args`` (merged over ``DEFAULT_SOLVER_ARGS`` and passed to diffcp)."""
    check_cpu(z)
    K = codebook.shape[0]
    target = resolve_target(z, codebook, target)
    f64 = torch.float64
    C = codebook.to(f64).transpose(0, 1)
    sqrt_lam = torch.tensor(math.sqrt(lam), dtype=f64)
    weights = run_chunked(
        _layer(K, z.shape[1]),
        lambda rows: (C, z[rows].to(f64), sqrt_lam, target[rows].to(f64) * sqrt_lam),
        z.shape[0], chunk_size, solver_args, needs_grad=any(t.requires_grad for t in (z, codebook, target)),
        what="method='exact'",
    )
    # The cone solver stops at eps: its residual is the simplex-feasibility error it left.
    with torch.no_grad():
        residual = float(torch.maximum((weights.sum(-1) - 1).abs().max(), (-weights).clamp_min(0).max()))
    return weights.to(z.dtype), SolverInfo("exact", residual=residual, converged=True)
