r"""``solve_lasso(method="pgd")``: the exact lasso on the working-set engine (docs/math.md §5).

    w* = argmin_w ½‖z − Eᵀw‖² + α‖w‖₁ [+ ½ρ‖w‖²]      (``nonneg``: subject to w ≥ 0)

The engine of :mod:`scq.solvers.engine`, shared with SCQ's ``pgd``: the ℓ₁ term becomes a linear
term over signed codes ±e_k with non-negative weights (one sign only with ``nonneg``), the
support is grown from the KKT certificate |e_kᵀ(z − Eᵀw)| ≤ α, and the restricted problem is
solved exactly by the batched active set. Backward: the KKT system on the support,
dw_S = G_SS⁻¹(E_S dz + dE_S r − E_S dE_Sᵀ w_S), G_SS = E_S E_Sᵀ + ρI.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import _validation as v
from .engine import QPForm, solve
from .engine.working_set import check_engine_options, engine_hint, make_options
from .registry import SolverInfo, register_method
from .solution import SparseWeights

# Relative size of the default ridge ε·max‖e‖².
DEFAULT_RIDGE = {torch.float64: 1e-10, torch.float32: 1e-6}


def check_lasso_pgd_options(ridge: Optional[float] = None, **engine_options) -> None:
    """This method's ``validate``: ``ridge`` (``None`` or ≥ 0) and the engine's options."""
    if ridge is not None:
        v.check_nonnegative("ridge", ridge)
    check_engine_options(**engine_options)


@register_method("pgd", "FISTA + exact active set on signed codes, working set grown from the KKT certificate; "
                        "CPU/CUDA, KKT backward", problem="lasso", validate=check_lasso_pgd_options)
def solve_lasso_pgd(
    z: torch.Tensor,
    codebook: torch.Tensor,
    alpha: float,
    nonneg: bool,
    *,
    ridge: Optional[float] = None,
    tol: Optional[float] = None,
    max_rounds: int = 100,
    max_inner: int = 100,
    working_set: int = 16,
    add_per_round: int = 8,
    compact: bool = True,
    pg_iters: int = 10,
) -> "tuple[SparseWeights, SolverInfo]":
    """Options as for SCQ's ``pgd``, and ``ridge``: ρ of the elastic-net term ½ρ‖w‖², which keeps
    the support systems definite when codes are nearly collinear (default 1e-10·max‖e‖² in
    float64, 1e-6·max‖e‖² in float32; it moves the solution by ~ρ‖w‖/α). ``ridge=0`` is the plain
    lasso: the active set then holds at most D codes at a time. ``max_rounds`` is 100, not SCQ's
    30: where α is small against the codes' scale, every support fills D codes out of K, and the
    rounds needed grow with D (N(0, 1) codes and inputs: 54 at D = 32, K = 4000, α = 0.003; 67–72
    at D = 64, K = 10000, α = 0.01; 89 at D = 128, K = 10000, α = 0.01). A round costs only the
    rows still unfinished; a solve that runs out of rounds is flagged, its hint naming ``max_rounds``."""
    opts = make_options(z.dtype, tol, max_rounds, max_inner, working_set, add_per_round, compact, pg_iters)
    e_max_sq = None
    if ridge is None:
        e_max_sq = float((codebook.detach() ** 2).sum(-1).max())  # the engine needs it too: read once
        ridge = DEFAULT_RIDGE.get(z.dtype, 1e-6) * e_max_sq
    ridge = float(ridge)  # checked at the edge (check_lasso_pgd_options)
    form = QPForm(simplex=False, signed=not nonneg, ridge=ridge, l1=alpha)
    diagnostics: dict = {}
    u, code, sign = solve(z, codebook, None, form, opts, diagnostics, e_max_sq)
    info = SolverInfo("pgd", iterations=diagnostics.pop("iterations"), extra=diagnostics)
    # (A partial, not a lambda: picklable, so that torch.save of a module keeps its last_info.)
    info.extra.update(ridge=ridge, hint=functools.partial(engine_hint, diagnostics, opts))
    return SparseWeights(code, u * sign, codebook.shape[0]), info
