r"""The exact sparse regression behind sparse soft VQ (MATH.md §5), functional.

    w* = argmin_w ½‖z − Eᵀw‖² + α‖w‖₁          (``nonneg=True``: subject to w ≥ 0)

Methods:

- ``"pgd"``: the working-set engine shared with SCQ's ``pgd`` (:mod:`scq.solvers.working_set`):
  the ℓ₁ term becomes a linear term over signed codes ±e_k with non-negative weights (one sign
  only with ``nonneg``), the support is grown from the KKT certificate |e_kᵀ(z − Eᵀw)| ≤ α, and the
  restricted problem is solved exactly by the batched active-set method. Backward: the KKT
  system on the support, dw_S = G_SS⁻¹(E_S dz + dE_S r − E_S dE_Sᵀ w_S), G_SS = E_S E_Sᵀ.
- ``"exact"``: cvxpylayers (diffcp + SCS, eps 1e-9, float64, CPU), the reference.

The solution is unique when the codes are in general position (then |S| ≤ D).
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import torch

from .. import _validation as v
from . import working_set as ws
from .exact import check_cpu, run_chunked
from .options import check_options
from .pgd import make_options
from .registry import SolverInfo
from .sparse import SparseWeights

__all__ = ["solve_lasso", "LASSO_METHODS"]


# Relative size of the default ridge ε·max‖e‖² (see ``_lasso_pgd``).
DEFAULT_RIDGE = {torch.float64: 1e-10, torch.float32: 1e-6}


def _lasso_pgd(z, codebook, alpha, nonneg, *, ridge=None, tol=None, max_rounds=30, max_inner=100, working_set=16,
               add_per_round=8, compact=True, pg_iters=10):
    info = SolverInfo("lasso-pgd")
    opts = make_options(z.dtype, tol, max_rounds, max_inner, working_set, add_per_round, compact, pg_iters)
    if ridge is None:
        # On its way to a support of ≤ D codes the active set may hold D + 1 of them, where E_S E_Sᵀ
        # is singular. A ridge this small keeps those systems definite while moving the solution
        # by ~ε‖w‖ (the elastic net ½‖z − Eᵀw‖² + α‖w‖₁ + ½ρ‖w‖²; ``ridge=0`` is the plain lasso).
        ridge = DEFAULT_RIDGE.get(z.dtype, 1e-6) * float((codebook.detach() ** 2).sum(-1).max())
    problem = ws.Problem(simplex=False, signed=not nonneg, ridge=float(v.check_nonnegative("ridge", ridge)), l1=alpha)
    u, code, sign = ws.solve(z, codebook, None, problem, opts, info)
    return SparseWeights(code, u * sign, codebook.shape[0]), info


@functools.lru_cache(maxsize=16)
def _lasso_layer(K: int, D: int, nonneg: bool):
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


def _lasso_exact(z, codebook, alpha, nonneg, *, chunk_size=32, solver_args=None):
    check_cpu(z)
    f64 = torch.float64
    C = codebook.to(f64).transpose(0, 1)
    a = torch.tensor(alpha, dtype=f64)
    weights = run_chunked(
        _lasso_layer(*codebook.shape, nonneg), lambda rows: (C, z[rows].to(f64), a),
        z.shape[0], chunk_size, solver_args, needs_grad=z.requires_grad or codebook.requires_grad,
        what="solve_lasso(method='exact')",
    )
    return weights.to(z.dtype), SolverInfo("lasso-exact")


LASSO_METHODS = {"pgd": _lasso_pgd, "exact": _lasso_exact}


def lasso_dispatch(z2, codebook, alpha, nonneg, method, options):
    """Run a lasso method on validated 2-D inputs (the analogue of ``functional.dispatch``)."""
    if method not in LASSO_METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(LASSO_METHODS)}")
    check_options(f"solve_lasso(method={method!r})", LASSO_METHODS[method], options)
    if z2.shape[0] == 0:
        return (z2 @ codebook.transpose(0, 1)) * 0, SolverInfo(f"lasso-{method}")
    return LASSO_METHODS[method](z2, codebook, alpha, nonneg, **options)


def check_alpha(alpha) -> float:
    alpha = v.check_nonnegative("alpha", alpha)
    if alpha == 0:
        raise ValueError("alpha must be > 0 (alpha = 0 is plain least squares, not unique when K > D)")
    return alpha


def solve_lasso(
    z: torch.Tensor,
    codebook: torch.Tensor,
    alpha: float,
    *,
    nonneg: bool = False,
    method: str = "pgd",
    return_info: bool = False,
    **options,
) -> Union[torch.Tensor, "tuple[torch.Tensor, SolverInfo]"]:
    r"""Sparse regression weights of each input on the codebook.

    Solves, for every vector ``z`` of the batch, w* = argmin_w ½‖z − Eᵀw‖² + α‖w‖₁ (with
    w ≥ 0 if ``nonneg``).

    Args:
        z: inputs ``(..., D)``. codebook: ``(K, D)``. alpha: α > 0.
        nonneg: constrain the weights to be non-negative.
        method: ``"pgd"`` (fast, exact; CPU and CUDA) or ``"exact"`` (cvxpylayers reference).
        return_info: also return the :class:`~scq.SolverInfo`.
        **options: for ``pgd``: ``tol``, ``max_rounds``, ``max_inner``, ``working_set``,
            ``add_per_round``, ``compact`` (as for :func:`scq.solve_scq`) and ``ridge`` (ρ of a tiny
            elastic-net term ½ρ‖w‖² that keeps the support systems definite; default
            1e-10·max‖e‖² in float64, 1e-6·max‖e‖² in float32; 0 for the plain lasso, which fails
            if the active set ever holds more than D codes); for ``exact``: ``chunk_size``,
            ``solver_args``.

    Returns:
        weights ``(..., K)`` in the input dtype, differentiable w.r.t. ``z`` and ``codebook``.
    """
    codebook = v.check_codebook(codebook)
    z = v.check_inputs(z, codebook)
    alpha = check_alpha(alpha)
    K, D = codebook.shape
    dtype = v.compute_dtype(z, codebook)
    z2 = z.reshape(-1, D).to(dtype)
    weights, info = lasso_dispatch(z2, codebook.to(dtype), alpha, bool(nonneg), method, options)
    if isinstance(weights, SparseWeights):
        weights = weights.to_dense()
    weights = weights.to(z.dtype).reshape(*z.shape[:-1], K)
    return (weights, info) if return_info else weights
