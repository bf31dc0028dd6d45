r"""The shared engine of the fast exact solvers (SCQ's ``pgd``, SVQ's lasso).

Both problems are non-negative quadratic programs over a few of many codes c_j = σ_j·e_{k_j}
(σ_j = ±1; signed codes turn the lasso's ‖w‖₁ into a linear term over u ≥ 0, w = σ ⊙ u):

    minimize_u  ½ uᵀHu − (b − α1)ᵀu    s.t.  u ≥ 0   [and 1ᵀu = 1 for the simplex]
    H = CCᵀ + ρI,  C the rows σ_j e_{k_j}

- SCQ (MATH.md §2): σ = +1, ρ = λ, α = 0, b = Ez + λp̃, with the simplex constraint.
- Lasso (MATH.md §5): σ = ±1, ρ = 0, α > 0, b = σ ⊙ Ez (``nonneg``: σ = +1).

The solution is sparse and its support is found from the KKT certificate, not from
neighbourhoods (the support is mostly *not* among the nearest codes):

1. Start from a feasible point (the one-hot nearest code for the simplex, 0 for the lasso); the
   working set W is the codes whose multipliers are most negative there.
2. Solve the problem restricted to W exactly: the batched active-set method of
   :mod:`scq.solvers.active_set` (projected steps onto faces, equality solves on the support).
3. Certificate over every code: one GEMM gives all gradients, hence every multiplier
   μ_k = σ(g_k) + α + ν. If none is below −tol, u is optimal; otherwise the most violating codes
   replace W's zero-weight slots (W grows if needed) and step 2 resumes from the current point.

Cost per round: two N×K×D GEMMs and small (N, m, m) systems; no K×K matrix is ever formed. One
host sync per round (and one per ``check_every`` inner iterations). The backward solves the KKT
system on the support (MATH.md §4, §5): exact gradients at the forward's memory, no unrolling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from .active_set import masked_cholesky, solve_active_set, support_vjp
from .problem import code_scores, nearest_code
from .proximal import fista
from .registry import SolverInfo


@dataclass(frozen=True)
class Problem:
    """Which of the problems above: constraint set and the constant terms."""

    simplex: bool  # 1ᵀu = 1; the solve starts at the one-hot nearest code
    signed: bool  # codes ±e_k (lasso) instead of +e_k
    ridge: float  # ρ in H = CCᵀ + ρI
    l1: float  # α
    # Added to b at the nearest code when no ``extra`` term is given: λ for SCQ's default target
    # p̃ = one_hot(nearest code), which carries no gradient.
    start_bonus: float = 0.0


@dataclass(frozen=True)
class Options:
    tol: float
    max_rounds: int
    max_inner: int
    working_set: int
    add_per_round: int
    compact: bool
    pg_iters: int = 10


def _gram(C: torch.Tensor, ridge: float) -> torch.Tensor:
    H = C @ C.transpose(1, 2)
    if ridge:
        H = H + ridge * torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    return H


def _violations(B, zq, E, code, sign, valid, problem: Problem):
    """Score (N, K) of every code outside W (larger = more violating) and its entering sign.

    g_k = e_kᵀ z_q − B_k is the gradient of the + code without the ridge term, which vanishes
    outside W (weight 0). Violation of code k with sign σ: −(σ g_k + α + ν).
    """
    G = torch.addmm(B, zq, E.transpose(0, 1), beta=-1)
    if problem.signed:
        entering = torch.where(G > 0, -1.0, 1.0).to(G.dtype)
        score = G.abs_()
        # Mask (code, sign) pairs already in W; amin so that padding never unmasks a code.
        in_w = valid & (entering.gather(1, code) == sign)
    else:
        entering = None
        score = G.neg_()
        in_w = valid
    mask = torch.where(in_w, float("-inf"), float("inf")).to(score.dtype)
    score.scatter_reduce_(1, code, mask, reduce="amin", include_self=True)
    return score, entering


def _linear_term(z, E, extra, problem: Problem):
    """B = ZEᵀ + extra (N, K), the nearest code (simplex start) and the tolerance scale."""
    B = code_scores(z, E)
    start = nearest_code(B, E) if problem.simplex else None
    if extra is not None:
        B.add_(extra)
    elif problem.start_bonus:
        B.scatter_add_(1, start.unsqueeze(1), torch.full_like(start, problem.start_bonus, dtype=B.dtype).unsqueeze(1))
    # Multipliers are sums of terms of size ‖e‖(‖e‖ + ‖z‖), the ridge and α: tolerances are relative to that.
    e_max = E.norm(dim=-1).max()
    scale = e_max * (e_max + z.norm(dim=-1)) + problem.ridge + problem.l1
    if extra is not None:
        scale = scale + extra.abs().amax(-1)
    return B, start, scale


def _forward(z, E, extra, problem: Problem, opts: Options, info: SolverInfo):
    N, D = z.shape
    K = E.shape[0]
    dtype, device = z.dtype, z.device
    B, start, scale = _linear_term(z, E, extra, problem)
    alpha = problem.l1
    dual_tol = opts.tol * scale
    m = min(opts.working_set, K * (2 if problem.signed else 1))
    n_add = min(opts.add_per_round, K)

    # Round 0: the start point and the codes most violating there.
    code = torch.zeros(N, 0, dtype=torch.long, device=device)
    sign = torch.zeros(N, 0, dtype=dtype, device=device)
    u = torch.zeros(N, 0, dtype=dtype, device=device)
    if start is not None:
        code, sign, u = start.unsqueeze(1), torch.ones(N, 1, dtype=dtype, device=device), torch.ones(N, 1, dtype=dtype, device=device)
    valid = torch.ones_like(code, dtype=torch.bool)
    zq = E[start] if start is not None else z.new_zeros(N, D)
    score, entering = _violations(B, zq, E, code, sign, valid, problem)
    n_first = m - code.shape[1]
    if n_first > 0:
        top = score.topk(min(n_first, K), dim=1).indices
        code = torch.cat([code, top], dim=1)
        sign = torch.cat([sign, entering.gather(1, top) if problem.signed else torch.ones_like(top, dtype=dtype)], dim=1)
        u = torch.cat([u, u.new_zeros(N, top.shape[1])], dim=1)
        valid = torch.cat([valid, torch.ones_like(top, dtype=torch.bool)], dim=1)
    del score, entering
    m = code.shape[1]
    s = u > 0

    converged = torch.zeros(N, dtype=torch.bool, device=device)
    residual = torch.full((N,), float("inf"), dtype=dtype, device=device)
    inner_total = 0
    rounds = 0
    rows = None  # rows still uncertified (None: all of them)

    def take(t):
        return t if rows is None else t[rows]

    for rounds in range(1, opts.max_rounds + 1):
        cr, sgr, ur, sr, vr, Br = take(code), take(sign), take(u), take(s), take(valid), take(B)
        C = E[cr] * sgr.unsqueeze(-1)
        b = sgr * Br.gather(1, cr) - alpha
        H = _gram(C, problem.ridge)
        if opts.pg_iters:
            # Projected-gradient warm start on W: finds most of the support cheaply, so the exact
            # active-set polish below needs few (costly) equality solves.
            ur = fista(H, b, ur, vr, simplex=problem.simplex, ridge=problem.ridge, n_iter=opts.pg_iters)
            sr = ur > 0
        res = solve_active_set(H, b, ur, sr, vr, take(dual_tol), simplex=problem.simplex,
                               max_support=None if problem.ridge > 0 else D,
                               max_iter=opts.max_inner, compact=opts.compact)
        ur, sr, nu = res.weights, res.support, res.nu
        inner_total += res.iterations
        zq = torch.bmm(ur.unsqueeze(1), C).squeeze(1)
        score, entering = _violations(Br, zq, E, cr, sgr, vr, problem)
        worst, worst_code = score.topk(n_add, dim=1)
        new_sign = entering.gather(1, worst_code) if problem.signed else torch.ones_like(worst)
        del score, entering
        violation = worst - alpha - nu.unsqueeze(1)
        violating = violation > take(dual_tol).unsqueeze(1)
        conv_r = res.converged & ~violating[:, 0]
        res_r = torch.maximum(violation[:, 0].clamp_min(0), res.residual) / take(scale)
        if rows is None:
            u, s, converged, residual = ur, sr, conv_r, res_r
        else:
            u[rows], s[rows], converged[rows], residual[rows] = ur, sr, conv_r, res_r
        if bool(converged.all()) or rounds == opts.max_rounds:
            break
        # Grow W: support slots first, then the violators, then the rest of the old W.
        n_support = sr.sum(1)
        need = int((n_support + violating.sum(1)).max())
        if need > m:
            pad = need - m
            grow = lambda t, fill=0: torch.cat([t, torch.full((t.shape[0], pad), fill, dtype=t.dtype, device=device)], 1)
            code, sign, u, s, valid = grow(code), grow(sign, 1), grow(u), grow(s), grow(valid)
            cr, sgr, ur, sr, vr = grow(cr), grow(sgr, 1), grow(ur), grow(sr), grow(vr)
            m = need
        order = torch.argsort((~sr).to(torch.int8), dim=1, stable=True)
        cr, sgr, ur, sr, vr = (t.gather(1, order) for t in (cr, sgr, ur, sr, vr))
        # Violators go to slots n_support, n_support+1, …; the others to a scratch column.
        slot = n_support.unsqueeze(1) + torch.arange(n_add, device=device)
        slot = torch.where(violating, slot, torch.full_like(slot, m))
        put = lambda t, val: torch.cat([t, t[:, :1]], 1).scatter_(1, slot, val)[:, :m]
        cr, sgr, vr = put(cr, worst_code), put(sgr, new_sign), put(vr, torch.ones_like(violating))
        if rows is None:
            code, sign, u, s, valid = cr, sgr, ur, sr, vr
        else:
            code[rows], sign[rows], u[rows], s[rows], valid[rows] = cr, sgr, ur, sr, vr
        if opts.compact:
            rows = (~converged).nonzero().squeeze(1)

    info.iterations = inner_total
    info.residual = float(residual.max()) if N else 0.0
    info.converged = bool(converged.all())
    info.extra.update(rounds=rounds, working_set=m, converged_mask=converged, residuals=residual,
                      support_size=s.sum(1))
    if not info.converged:
        warnings.warn(
            f"scq {info.method}: {int((~converged).sum())} of {N} vectors did not reach tol={opts.tol:g} in "
            f"max_rounds={opts.max_rounds} (largest relative KKT residual {info.residual:.2e}); "
            "raise max_rounds/max_inner or loosen tol",
            RuntimeWarning,
            stacklevel=5,
        )
    return code, sign, u, s


class WorkingSetFunction(torch.autograd.Function):
    """(u, code, sign): the solution u ≥ 0 on the signed codes sign·E[code] (see the module doc).

    Backward (MATH.md §4–5), with v = M g on the support (M the inverse of the KKT system
    restricted to S, including the 1ᵀu = 1 row for the simplex) and C the signed code rows:
    ∂z = VC, ∂(linear extra) = V, ∂C = Vᵀ(Z − UC) − Uᵀ(VC), scattered back to E with the signs.
    """

    @staticmethod
    def forward(ctx, z, E, extra, problem, opts, info):
        code, sign, u, s = _forward(z, E, extra, problem, opts, info)
        ctx.save_for_backward(z, E, code, sign, u, s)
        ctx.problem = problem
        ctx.mark_non_differentiable(code, sign)
        return u, code, sign

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u, _grad_code, _grad_sign):
        z, E, code, sign, u, s = ctx.saved_tensors
        problem = ctx.problem
        C = E[code] * sign.unsqueeze(-1)
        L = masked_cholesky(_gram(C, problem.ridge), s)
        v = support_vjp(L, grad_u, s, simplex=problem.simplex)
        VC = torch.bmm(v.unsqueeze(1), C).squeeze(1)
        grad_z = grad_E = grad_B = None
        if ctx.needs_input_grad[0]:
            grad_z = VC
        if ctx.needs_input_grad[1]:
            zq = torch.bmm(u.unsqueeze(1), C).squeeze(1)
            U = v.unsqueeze(-1) * (z - zq).unsqueeze(1) - u.unsqueeze(-1) * VC.unsqueeze(1)
            U = U * sign.unsqueeze(-1)
            grad_E = torch.zeros_like(E).index_add_(0, code.reshape(-1), U.reshape(-1, U.shape[-1]))
        if ctx.needs_input_grad[2]:
            # b_j = σ_j (Ez + extra)_{k_j}
            grad_B = torch.zeros(z.shape[0], E.shape[0], dtype=z.dtype, device=z.device)
            grad_B.scatter_add_(1, code, sign * v)
        return grad_z, grad_E, grad_B, None, None, None


def solve(z: torch.Tensor, E: torch.Tensor, extra: Optional[torch.Tensor], problem: Problem, opts: Options, info: SolverInfo):
    """Run the engine on b = Ez + ``extra`` (N, K) (``None``: see ``Problem.start_bonus``).

    Returns ``(u, code, sign)``, each (N, m): the solution is Σ_j u_j·sign_j·e_{code_j}.
    Differentiable w.r.t. ``z``, ``E`` and ``extra`` (through ``u``).
    """
    return WorkingSetFunction.apply(z, E, extra, problem, opts, info)
