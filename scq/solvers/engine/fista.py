r"""Batched accelerated projected gradient (FISTA) on small quadratic programs.

    minimize_u  ½uᵀHu − bᵀu   over  C = {u ≥ 0, 1ᵀu = 1}  (simplex)  or  {u ≥ 0}  (orthant)

per row of a batch, H (N, m, m) SPD. Steps u ← Π_C(y − (Hy − b)/L) with Nesterov momentum
β = (√L − √ρ)/(√L + √ρ) (ρ a lower bound on H's spectrum, the ridge), L a Gershgorin upper bound
on λ_max(H) per row (safe: never too large a step). Π_C is the sparsemax projection for the
simplex and a clamp for the orthant — on the lasso's signed codes the clamp *is* the soft
threshold S_{α/L}, since the ℓ₁ term is folded into b.

Used as the warm start of the active-set polish (:mod:`scq.solvers.engine.active_set`): a few
iterations find most of the support, so the exact polish finishes in one or two solves. Where a
compiled kernel applies (:mod:`scq.solvers.engine.fused`: Triton on CUDA, Numba on the CPU) the
iterations run in it, one call for all of them.
"""

from __future__ import annotations

import math

import torch

from ...simplex import simplex_threshold
from . import fused


def project(u: torch.Tensor, invalid: torch.Tensor, simplex: bool) -> torch.Tensor:
    """Π_C of each row, slots where ``invalid`` (N, m) ending at 0."""
    if simplex:
        # Invalid slots must end at 0: push them far below any threshold.
        u = u.masked_fill(invalid, -1e30 if u.dtype != torch.float16 else -6e4)
        return (u - simplex_threshold(u)).clamp_min_(0)
    return u.clamp_min(0).masked_fill_(invalid, 0)


def step_and_momentum(H: torch.Tensor, ridge: float) -> "tuple[torch.Tensor, torch.Tensor]":
    """Per row (N, 1): the step 1/L (L the Gershgorin bound ≥ λ_max(H)) and the momentum
    β = (√L − √ρ)/(√L + √ρ)."""
    L = H.abs().sum(-1).amax(-1, keepdim=True)
    # √ρ a number, √L taken once: on CUDA each op is a launch, and ρ as a tensor was a copy to the
    # device every round.
    root_L, root_rho = L.sqrt(), math.sqrt(ridge)
    return 1.0 / L, (root_L - root_rho) / (root_L + root_rho)


def fista(H: torch.Tensor, b: torch.Tensor, u0: torch.Tensor, valid: torch.Tensor, *, simplex: bool,
          ridge: float, n_iter: int) -> torch.Tensor:
    """``n_iter`` FISTA steps from the feasible ``u0`` (N, m); returns a feasible iterate. Compiled
    where :mod:`~scq.solvers.engine.fused` has a kernel for ``H``, else :func:`fista_torch`."""
    if n_iter <= 0:
        return u0
    step, beta = step_and_momentum(H, ridge)
    compiled = fused.fista(H, b, u0, valid, step, beta, simplex=simplex, n_iter=n_iter)
    if compiled is not None:  # every iteration in one call (the torch loop is ~30 ops per step)
        return compiled
    return fista_torch(H, b, u0, valid, simplex=simplex, ridge=ridge, n_iter=n_iter, step_and_beta=(step, beta))


def fista_torch(H: torch.Tensor, b: torch.Tensor, u0: torch.Tensor, valid: torch.Tensor, *, simplex: bool,
                ridge: float, n_iter: int, step_and_beta=None) -> torch.Tensor:
    """:func:`fista` as batched torch ops: the reference the compiled kernels are tested against."""
    if n_iter <= 0:
        return u0
    step, beta = step_and_momentum(H, ridge) if step_and_beta is None else step_and_beta
    # Few, fused ops per step (each is a parallel region on the CPU, a launch on CUDA):
    # Hy − b in one baddbmm, the step in one addcmul, the momentum in one lerp.
    invalid, b3, momentum = ~valid, b.unsqueeze(-1), 1 + beta
    u, y = u0, u0
    for _ in range(n_iter):
        grad = torch.baddbmm(b3, H, y.unsqueeze(-1), beta=-1).squeeze(-1)
        u_next = project(torch.addcmul(y, step, grad, value=-1), invalid, simplex)
        y = torch.lerp(u, u_next, momentum)  # u_next + β(u_next − u)
        u = u_next
    return u
