r"""Everything that touches cvxpy and cvxpylayers: the two compiled layers and the chunked runner.

The ``exact`` methods of both problems solve one cone program per vector through cvxpylayers
(diffcp's implicit differentiation of SCS's homogeneous self-dual embedding), on the CPU, in
float64. SCS with ``eps=1e-9`` and diffcp's ``mode="dense"`` derivative: the default tolerance
leaves weights off by ~3e-4 and gradients by ~1e-4 relative, the default ``lsqr`` derivative adds
~5e-7; with these settings weights and gradients agree with the KKT solution to ~5e-9.

Both layers are DPP (parameters enter affinely), so one compiled problem per (K, D) serves every
λ or α and every per-vector rescaling: the parameters are batched, one set per vector.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from .. import _validation as v

# The relative KKT residual SCS reaches at eps=1e-9 on the unit-scaled problems, with margin
# (measured ≤ 2e-9): the exact methods' default certificate tolerance.
EXACT_TOL = 1e-7

DEFAULT_SOLVER_ARGS = {"solve_method": "SCS", "eps": 1e-9, "max_iters": 100_000, "mode": "dense"}


def check_cone_options(chunk_size: int = 32, solver_args: Optional[dict] = None, **_) -> None:
    """The cone methods' ``validate`` (registry.Method): ``chunk_size`` an int ≥ 1 (0 failed inside
    ``range``), ``solver_args`` ``None`` or a dict of SCS settings."""
    v.check_positive_int("chunk_size", chunk_size)
    if solver_args is not None and not isinstance(solver_args, dict):
        raise TypeError(f"solver_args must be a dict or None, got {type(solver_args).__name__}")


@functools.lru_cache(maxsize=16)
def scq_layer(K: int, D: int):
    """minimize ‖Cp − z‖² + ‖√λ·p − √λ·p̃‖²  s.t.  p ≥ 0, 1ᵀp = 1   (C = Eᵀ)."""
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


@functools.lru_cache(maxsize=16)
def lasso_layer(K: int, D: int, nonneg: bool):
    """minimize ½‖Cw − z‖² + α‖w‖₁  [s.t. w ≥ 0]   (C = Eᵀ)."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    w = cp.Variable(K)
    C = cp.Parameter((D, K))
    z = cp.Parameter(D)
    alpha = cp.Parameter(nonneg=True)
    objective = 0.5 * cp.sum_squares(C @ w - z) + alpha * cp.norm1(w)
    problem = cp.Problem(cp.Minimize(objective), [2 * w >= 0] if nonneg else [])
    assert problem.is_dpp()
    return CvxpyLayer(problem, parameters=[C, z, alpha], variables=[w])


def check_cpu(z: torch.Tensor, what: str, *others: Optional[torch.Tensor]) -> None:
    """``z`` on the CPU, and neither it nor ``others`` a torch.func transform's tensor."""
    if z.device.type != "cpu":
        raise ValueError(f"{what} runs on the CPU only (cvxpylayers/diffcp); z is on {z.device}")
    if v.transformed(z, *others):
        # (cvxpylayers' autograd Function predates torch.func: its own error would be obscure)
        raise RuntimeError(f"{what} (cvxpylayers) does not run under torch.func transforms; method='pgd' gives the "
                           f"same solution and does")


def run_chunked(layer, args_for: Callable[[slice], tuple], n: int, chunk_size: int, solver_args: Optional[dict],
                needs_grad: bool, what: str) -> torch.Tensor:
    """Run a CvxpyLayer over rows ``0..n`` in chunks (diffcp's memory grows per vector);
    ``args_for(rows)`` gives the layer's (batched) parameters for those rows. Float64 output.

    A solver failure is an error naming ``what``. Inaccurate answers come back as they are: the
    front door's certificate measures them.
    """
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
    if not bool(torch.isfinite(weights.detach()).all()):
        raise RuntimeError(f"{what}: the cone solver returned non-finite weights")
    return weights
