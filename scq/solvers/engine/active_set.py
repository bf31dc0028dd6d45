r"""Batched primal active-set solver for small non-negative QPs (docs/math.md §2, §4, §5).

For each row n of the batch, on m slots (a working set of codes):

    minimize ½pᵀHp − bᵀp   s.t.  p ≥ 0  [, 1ᵀp = 1 with ``simplex=True``],  p_k = 0 on invalid slots,

with H (N, m, m) symmetric positive definite. Every iterate is feasible. Each iteration solves the
equality system on the current support S,

    [H_SS 1; 1ᵀ 0][p_S; ν] = [b_S; 1]   ⇔   p_S = x − νy,  H_SS x = b_S,  H_SS y = 1,  ν = (1ᵀx − 1)/(1ᵀy),

moves towards its solution until a weight would turn negative (ratio test; the blocking codes leave
S), and, once the equality solution is feasible, reads the multipliers μ_k = (Hp − b)_k + ν off S
and adds the codes with μ_k < 0. When none is left, p is optimal on the slots: that is the KKT
certificate, whatever found S. Without the sum constraint, ν = 0 and p_S = x. Systems are masked,
not gathered (identity off S), so shapes stay fixed and the batch moves in lockstep; at each
convergence check (every ``check_every`` iterations, one host sync) the unfinished rows can be
gathered by index so that stragglers do not cost a whole batch (``compact``).

Adding all violators at once usually finishes in a handful of iterations; a row whose multi-add
made no progress falls back to adding the single most violating code, which always makes
progress for a strictly convex QP (so the method terminates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A code whose multiplier is negative by less than this many tolerances, and whose entry into the
# support comes straight back out (weight ~0), is rounding-level degenerate: the face is accepted.
DEGENERATE_SLACK = 10.0


def drop_tolerance(dtype: torch.dtype) -> float:
    """Weights this small are rounding noise of a zero: the active set drops them (keeping rows
    from cycling on them)."""
    return 16 * torch.finfo(dtype).eps


def dropped_weight_allowance(dtype: torch.dtype, h_max):
    """The most multiplier violation a weight dropped as ≤ 2·drop_tol can leave, |μ_k| ≤ H_kk·w
    with H_kk ≤ ``h_max`` (max‖e‖² + ρ; a float or a device scalar): where a row's active set
    accepted a degenerate face (its ``residual`` above the tolerance), the round's verdict lets
    codes outside W violate by this much too. Such codes would enter, be dropped again and be
    replaced by the next: in float32 at large λ, against a near-collapsed codebook, the exact
    weights hold several ~1e-6 entries below drop_tol, and rows cycled through them for all
    ``max_rounds`` without the answer moving. Relative to the certificate's scale (≥ max‖e‖² + ρ)
    it is at most 32 eps (3.8e-6 in float32, inside the default tolerance 1e-5)."""
    return 2 * drop_tolerance(dtype) * h_max


def masked_cholesky(H: torch.Tensor, support: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """Cholesky factor of H restricted to ``support`` (N, m) bool, identity off it, and the rows
    (N,) bool whose restricted matrix was not numerically positive definite (their factor is the
    identity, so later solves stay finite; the caller freezes those rows as broken down). No
    host sync: a breakdown is a mask, not an exception."""
    s = support.to(H.dtype)
    A = H * (s.unsqueeze(-1) * s.unsqueeze(-2)) + torch.diag_embed(1 - s)
    L, info = torch.linalg.cholesky_ex(A)
    failed = info != 0
    L = torch.where(failed.unsqueeze(-1).unsqueeze(-1), torch.eye(A.shape[-1], dtype=A.dtype, device=A.device), L)
    return L, failed


def support_solve(L: torch.Tensor, rhs: torch.Tensor, support: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """x = H_SS⁻¹ rhs_S and y = H_SS⁻¹ 1_S (zero off S), from the masked factor ``L``."""
    s = support.to(rhs.dtype)
    sol = torch.cholesky_solve(torch.stack([rhs * s, s], dim=-1), L)
    return sol[..., 0], sol[..., 1]


def equality_solution(L: torch.Tensor, b: torch.Tensor, support: torch.Tensor, simplex: bool = True) -> "tuple[torch.Tensor, torch.Tensor]":
    """Minimizer of ½pᵀHp − bᵀp on {p_S free, p_{S^c} = 0 [, 1ᵀp = 1]}, and the multiplier ν
    of the sum constraint (0 without it)."""
    if not simplex:
        s = support.to(b.dtype)
        x = torch.cholesky_solve((b * s).unsqueeze(-1), L).squeeze(-1)
        return x, b.new_zeros(b.shape[:-1])
    x, y = support_solve(L, b, support)
    nu = (x.sum(-1) - 1) / y.sum(-1)
    return x - nu.unsqueeze(-1) * y, nu


def support_vjp(L: torch.Tensor, grad: torch.Tensor, support: torch.Tensor, simplex: bool = True) -> torch.Tensor:
    """v = M g on S, 0 off it: M = H_SS⁻¹ without a sum constraint (docs/math.md §5), and with the
    simplex's 1ᵀu = 1, M = H_SS⁻¹ − H_SS⁻¹11ᵀH_SS⁻¹/(1ᵀH_SS⁻¹1) (docs/math.md §4)."""
    x, y = support_solve(L, grad, support)
    if not simplex:
        return x
    return x - (x.sum(-1) / y.sum(-1).clamp_min(torch.finfo(y.dtype).tiny)).unsqueeze(-1) * y


@dataclass
class ActiveSetResult:
    weights: torch.Tensor  # (N, m), optimal on the slots for converged rows
    support: torch.Tensor  # (N, m) bool
    nu: torch.Tensor  # (N,) multiplier of 1ᵀp = 1
    converged: torch.Tensor  # (N,) bool
    iterations: int
    residual: torch.Tensor  # (N,) multiplier violation left on the slots (≤ DEGENERATE_SLACK·tol)
    broken: torch.Tensor  # (N,) bool: a support system was singular; the row stopped, unconverged
    refined: bool = False  # the finished rows' answers refined once in float64 (working_set._refine)


def _iterate(H, b, p, s, valid, dual_tol, single_add, progress, n_iter, simplex, max_support):
    """``n_iter`` lockstep iterations; rows that finish are frozen.

    Returns p, s, ν, done, the anti-cycling flags (single_add, progress) to carry on with, the
    multiplier violation left at finish (0 unless finished as degenerate) and the rows that broke
    down (singular support system: frozen at their last feasible iterate, ``done`` but not
    converged).
    """
    N = p.shape[0]
    drop_tol = drop_tolerance(p.dtype)
    h_diag = H.diagonal(dim1=-2, dim2=-1)  # H_kk: what a dropped weight's multiplier is measured by
    done = torch.zeros(N, dtype=torch.bool, device=p.device)
    nu = torch.zeros(N, dtype=p.dtype, device=p.device)
    residual = torch.zeros(N, dtype=p.dtype, device=p.device)
    broken = torch.zeros_like(done)
    for _ in range(n_iter):
        L, failed = masked_cholesky(H, s)
        p_eq, nu_eq = equality_solution(L, b, s, simplex)
        # Ratio test: the largest step α ≤ 1 towards p_eq that keeps p ≥ 0.
        blocking = s & (p_eq < -drop_tol)
        ratio = torch.where(blocking, p / (p - p_eq).clamp_min(torch.finfo(p.dtype).tiny), torch.full_like(p, 2.0))
        alpha = ratio.min(-1).values.clamp(max=1.0)
        at_face_optimum = alpha >= 1
        p_new = torch.where(at_face_optimum.unsqueeze(-1), p_eq, p + alpha.unsqueeze(-1) * (p_eq - p))
        progress_new = progress | ((alpha > 0) & ((p_eq - p).abs().amax(-1) > drop_tol))
        # Leave S: the codes that block the step (a weight reaching zero), and at a face optimum
        # the weights that are zero up to rounding. Codes that just entered with p = 0 stay.
        hit = blocking & (ratio <= alpha.unsqueeze(-1))
        tiny = at_face_optimum.unsqueeze(-1) & (p_new <= drop_tol)
        s_new = s & ~hit & ~tiny
        p_new = torch.where(s_new, p_new.clamp_min(0), torch.zeros_like(p_new))
        # Multipliers, meaningful where the equality solution was feasible.
        mu = torch.baddbmm((nu_eq.unsqueeze(-1) - b).unsqueeze(-1), H, p_new.unsqueeze(-1)).squeeze(-1)  # Hp − b + ν
        violation = torch.where(valid & ~s_new, -mu, torch.zeros_like(mu))
        worst, worst_slot = violation.max(-1)
        has_violation = worst > dual_tol
        stalled = at_face_optimum & has_violation & ~progress_new
        # A single add that came straight back out: the code's multiplier is negative only by
        # rounding (its weight would be ~0). Accept the face within DEGENERATE_SLACK·tol, or within
        # what a weight dropped as ≤ drop_tol leaves (|μ_k| ≤ H_kk·w): in float32 at large λ that
        # exceeds the tolerance, and rows cycled to max_iter every round (λ = 10: 30 rounds, 2 s a
        # forward that takes 0.03 s at λ = 0.1).
        h_worst = h_diag.gather(-1, worst_slot.unsqueeze(-1)).squeeze(-1)
        degenerate = stalled & single_add & (worst <= torch.maximum(DEGENERATE_SLACK * dual_tol, 2 * drop_tol * h_worst))
        finished = at_face_optimum & (~has_violation | degenerate) & ~failed
        # A multi-add that led back to the same face without progress: add one code at a time.
        single_add_new = single_add | stalled
        adds = (violation > dual_tol.unsqueeze(-1)) & at_face_optimum.unsqueeze(-1)
        one_add = torch.zeros_like(adds).scatter_(-1, worst_slot.unsqueeze(-1), True) & adds
        if max_support is not None:
            # Past max_support codes H_SS turns singular (the lasso's |S| ≤ D): enter one at a time.
            crowded = s_new.sum(-1) + adds.sum(-1) > max_support
            adds = torch.where(crowded.unsqueeze(-1), one_add, adds)
        adds = torch.where(single_add_new.unsqueeze(-1), one_add, adds)
        s_new = s_new | adds
        progress_new = progress_new & ~adds.any(-1)

        broken = broken | (failed & ~done)
        frozen = done | failed
        keep = frozen.unsqueeze(-1)
        p = torch.where(keep, p, p_new)
        s = torch.where(keep, s, s_new)
        nu = torch.where(frozen, nu, nu_eq)
        residual = torch.where(frozen, residual, torch.where(finished, worst.clamp_min(0), residual))
        progress = torch.where(frozen, progress, progress_new)
        single_add = torch.where(frozen, single_add, single_add_new)
        done = done | finished | failed
    return p, s, nu, done, single_add, progress, residual, broken


def solve_active_set(
    H: torch.Tensor,
    b: torch.Tensor,
    weights: torch.Tensor,
    support: torch.Tensor,
    valid: torch.Tensor,
    dual_tol: torch.Tensor,
    *,
    simplex: bool = True,
    max_support: "int | None" = None,
    max_iter: int = 100,
    check_every: int = 2,
    compact: bool = True,
) -> ActiveSetResult:
    """Run the active-set iterations from a feasible ``weights`` with support ``support``.

    Args:
        H: (N, m, m) SPD. b: (N, m). weights: (N, m) feasible start, zero off ``support``.
        valid: (N, m) bool, slots that may enter the support.
        simplex: with the constraint 1ᵀp = 1 (else only p ≥ 0).
        max_support: add codes one at a time once the support would exceed this size.
        dual_tol: (N,) a multiplier counts as negative below ``-dual_tol``.
        max_iter: iteration cap; rows still running then come back with ``converged`` False.
        check_every: iterations between convergence checks (each is one host sync).
        compact: at each check, carry on with the unfinished rows only (gathered by index, so
            later iterations cost what the stragglers cost); ``False`` keeps every row in
            lockstep with fixed shapes.
    """
    p, s = weights.clone(), support.clone()
    N = p.shape[0]
    nu = p.new_zeros(N)
    converged = torch.zeros(N, dtype=torch.bool, device=p.device)
    single_add = torch.zeros_like(converged)
    progress = torch.ones_like(converged)
    residual = p.new_zeros(N)
    broken = torch.zeros_like(converged)
    rows = None  # None: every row (a converged row re-solved is a fixed point)
    iterations = 0
    while iterations < max_iter:
        n_iter = min(check_every, max_iter - iterations)
        if rows is None:
            p, s, nu, done, single_add, progress, residual, broken_now = _iterate(
                H, b, p, s, valid, dual_tol, single_add, progress, n_iter, simplex, max_support
            )
            broken = broken | broken_now
        else:
            state = _iterate(H[rows], b[rows], p[rows], s[rows], valid[rows], dual_tol[rows],
                             single_add[rows], progress[rows], n_iter, simplex, max_support)
            p[rows], s[rows], nu[rows], done_r, single_add[rows], progress[rows], residual[rows], broken_r = state
            done = converged | broken
            done[rows] = done_r
            broken[rows] = broken[rows] | broken_r
        converged = done & ~broken
        iterations += n_iter
        n_left = int((~done).sum())  # the check's one host sync
        if n_left == 0:
            break
        if compact:
            # The unfinished rows from that count: argsort, not nonzero (which would sync again).
            rows = torch.argsort(done.to(torch.int8), stable=True)[:n_left]
    return ActiveSetResult(p, s, nu, converged, iterations, residual, broken)
