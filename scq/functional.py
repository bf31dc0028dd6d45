r"""The functional front doors: :func:`solve_scq` and :func:`solve_lasso`.

Both take the same path (:mod:`scq.solvers.dispatch`): check the arguments once, flatten the batch,
run a registered method with autocast off, certify its answer, return dense weights in the
input's dtype.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from . import _validation as v
from .solvers.dispatch import LassoProblem, SCQProblem, check_method, prepare, solve
from .solvers.registry import LASSO_METHODS, SCQ_METHODS, SolverInfo

__all__ = ["solve_scq", "solve_lasso", "check_alpha", "DEFAULT_METHOD"]

DEFAULT_METHOD = "pgd"


def check_alpha(alpha: object) -> float:
    alpha = v.check_nonnegative("alpha", alpha)
    if alpha == 0:
        raise ValueError("alpha must be > 0 (alpha = 0 is plain least squares, not unique when K > D)")
    return alpha


def _result(dense: torch.Tensor, info: SolverInfo, batch, K: int, return_info: bool):
    weights = dense.to(batch.out_dtype).reshape(*batch.batch_shape, K)
    return (weights, info) if return_info else weights


def solve_scq(
    z: torch.Tensor,
    codebook: torch.Tensor,
    lam: float,
    *,
    target: Optional[torch.Tensor] = None,
    method: str = DEFAULT_METHOD,
    return_info: bool = False,
    strict: bool = False,
    **options,
) -> Union[torch.Tensor, "tuple[torch.Tensor, SolverInfo]"]:
    r"""Soft convex quantization weights: the best convex combination of codes for each input.

    Solves, for every vector ``z`` of the batch,

        p* = argmin_{p ∈ Δ_K} ‖z − Eᵀp‖² + λ‖p − p̃‖²,

    with Δ_K the probability simplex and ``p̃`` the target (by default the one-hot nearest code).

    Args:
        z: inputs ``(..., D)``.
        codebook: codes ``E`` as rows, ``(K, D)``.
        lam: λ > 0, the pull towards the target; larger λ gives sparser weights closer to ``p̃``.
        target: ``(..., K)`` or ``None`` (the one-hot nearest code, without gradient).
        method: a name from ``scq.available_methods()``: ``"exact"`` (cvxpylayers reference),
            ``"relaxed"`` (the paper's one-shot relaxation, approximate), ``"pgd"`` (exact, fast).
        return_info: also return the :class:`~scq.SolverInfo`: the answer's measured certificate
            (relative KKT residual, bounds on ‖p − p*‖ and ‖z_q − z_q*‖) and ``converged``.
        strict: raise a RuntimeError when the answer fails its certificate (by default an exact
            method warns and returns it flagged ``converged=False``).
        **options: method-specific options (e.g. ``tol``, ``max_rounds`` for ``pgd``).

    Returns:
        weights ``(..., K)`` on the simplex, in the inputs' dtype (half types are computed in
        float32), differentiable w.r.t. ``z``, ``codebook`` and ``target``; and the info if asked.
    """
    m = check_method(SCQ_METHODS, method, options)  # an unknown method is reported first
    lam = v.check_positive("lam", lam)
    batch = prepare(z, codebook, extra=() if target is None else (v.check_tensor("target", target),))
    K = batch.codebook.shape[0]
    if target is not None:
        target = v.check_target(target, batch.batch_shape, K, z).reshape(-1, K).to(batch.z.dtype)
    _, dense, info = solve(SCQProblem(lam, target), m, batch.z, batch.codebook, options, strict=strict)
    return _result(dense, info, batch, K, return_info)


def solve_lasso(
    z: torch.Tensor,
    codebook: torch.Tensor,
    alpha: float,
    *,
    nonneg: bool = False,
    method: str = "pgd",
    return_info: bool = False,
    strict: bool = False,
    **options,
) -> Union[torch.Tensor, "tuple[torch.Tensor, SolverInfo]"]:
    r"""Sparse regression weights of each input on the codebook.

    Solves, for every vector ``z`` of the batch, w* = argmin_w ½‖z − Eᵀw‖² + α‖w‖₁ (with
    w ≥ 0 if ``nonneg``).

    Args:
        z: inputs ``(..., D)``. codebook: ``(K, D)``. alpha: α > 0.
        nonneg: constrain the weights to be non-negative.
        method: a name from ``scq.available_methods("lasso")``: ``"pgd"`` (fast, exact; CPU and
            CUDA) or ``"exact"`` (cvxpylayers reference).
        return_info: also return the :class:`~scq.SolverInfo` (certificate as for
            :func:`solve_scq`).
        strict: raise a RuntimeError when the answer fails its certificate.
        **options: for ``pgd``: ``tol``, ``max_rounds``, ``max_inner``, ``working_set``,
            ``add_per_round``, ``compact``, ``pg_iters`` (as for :func:`scq.solve_scq`) and ``ridge``
            (ρ of a tiny elastic-net term ½ρ‖w‖² that keeps the support systems definite; default
            1e-10·max‖e‖² in float64, 1e-6·max‖e‖² in float32; 0 for the plain lasso); for
            ``exact``: ``tol``, ``chunk_size``, ``solver_args``.

    Returns:
        weights ``(..., K)`` in the input dtype, differentiable w.r.t. ``z`` and ``codebook``.
    """
    m = check_method(LASSO_METHODS, method, options)
    alpha = check_alpha(alpha)
    batch = prepare(z, codebook)
    _, dense, info = solve(LassoProblem(alpha, bool(nonneg)), m, batch.z, batch.codebook, options, strict=strict)
    return _result(dense, info, batch, batch.codebook.shape[0], return_info)
