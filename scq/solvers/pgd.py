r"""``method="pgd"``: the exact SCQ solution, fast, with a KKT backward (MATH.md §2, §4).

    p* = argmin_{p ∈ Δ_K} ‖z − Eᵀp‖² + λ‖p − p̃‖²  =  argmin_{p ∈ Δ_K} ½pᵀHp − bᵀp,
    H = EEᵀ + λI,  b = Ez + λp̃.

Projected steps onto the simplex's faces, on a working set grown from the KKT certificate: the
engine of :mod:`scq.solvers.working_set` (shared with the lasso) with the simplex constraint,
ridge λ and no ℓ₁ term. It starts at the one-hot nearest code (the VQ solution, a warm start that
is feasible), adds the codes whose multipliers are most negative, solves the restricted problem
exactly by a batched active-set method, and stops only when the certificate holds over all K
codes. Converges to the exact solution (not the paper's relaxation), in the input's dtype, on
CPU and CUDA, with O(N·K + N·m²) memory.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import working_set as ws
from .registry import SolverInfo, register_method
from .sparse import SparseWeights

DEFAULT_TOL = {torch.float64: 1e-11, torch.float32: 1e-6}


def default_tol(dtype: torch.dtype) -> float:
    return DEFAULT_TOL.get(dtype, 1e-6)


def make_options(dtype, tol, max_rounds, max_inner, working_set, add_per_round, compact, pg_iters) -> ws.Options:
    return ws.Options(
        tol=default_tol(dtype) if tol is None else float(tol),
        max_rounds=max(1, int(max_rounds)),
        max_inner=max(1, int(max_inner)),
        working_set=max(1, int(working_set)),
        add_per_round=max(1, int(add_per_round)),
        compact=bool(compact),
        pg_iters=max(0, int(pg_iters)),
    )


@register_method("pgd", "exact: working set grown from the KKT certificate + batched active set, KKT backward")
def solve_pgd(
    z: torch.Tensor,
    codebook: torch.Tensor,
    lam: float,
    target: Optional[torch.Tensor],
    *,
    tol: Optional[float] = None,
    max_rounds: int = 30,
    max_inner: int = 100,
    working_set: int = 16,
    add_per_round: int = 8,
    compact: bool = True,
    pg_iters: int = 10,
) -> "tuple[SparseWeights, SolverInfo]":
    """Options:
        tol: relative KKT tolerance (default 1e-11 in float64, 1e-6 in float32): a code counts as
            violating when its multiplier is below ``-tol·(‖e‖max(‖e‖max + ‖z‖) + λ(1 + |p̃|max))``.
        max_rounds: certificate rounds over all K codes; a RuntimeWarning is raised and
            ``info.converged`` is False if they run out.
        max_inner: active-set iterations per round on the working set.
        working_set: initial working-set size m (grows when the support needs more).
        add_per_round: codes examined per round for entry into the working set.
        compact: after each convergence check, work on the unfinished vectors only (gathered by
            index at the check's host sync). ``False`` keeps the whole batch in lockstep with
            fixed shapes, at the cost of re-solving finished vectors.
        pg_iters: accelerated projected-gradient (FISTA) steps on the working set before each
            exact active-set polish (0: polish from the previous point directly).

    Returns the solution as :class:`SparseWeights` (``solve_scq`` densifies it).
    """
    info = SolverInfo("pgd")
    opts = make_options(z.dtype, tol, max_rounds, max_inner, working_set, add_per_round, compact, pg_iters)
    problem = ws.Problem(simplex=True, signed=False, ridge=lam, l1=0.0, start_bonus=lam)
    extra = None if target is None else lam * target
    values, indices, _ = ws.solve(z, codebook, extra, problem, opts, info)
    return SparseWeights(indices, values, codebook.shape[0]), info
