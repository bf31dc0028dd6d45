r"""``method="pgd"``: the exact SCQ solution, fast, with a KKT backward (MATH.md §2, §4).

    p* = argmin_{p ∈ Δ_K} pᵀHp − 2bᵀp,   H = EEᵀ + λI,  b = Ez + λp̃.

The solution is sparse (a handful of codes out of K), but its support is mostly *not* among the
nearest codes, so no fixed neighbourhood is safe. The solver grows a working set from the KKT
certificate instead:

1. ``B = ZEᵀ + λP̃`` (one GEMM, shared with the nearest-code search).
2. Start at the one-hot nearest code; the working set W is that code plus the ``working_set − 1``
   codes whose multipliers μ_k = (Hp − b)_k + ν are most negative there.
3. Solve the problem restricted to W exactly with the batched active-set method of
   :mod:`scq.solvers.active_set` (projected steps onto the simplex faces, equality solves on the
   support, multiplier checks).
4. Certificate over all K codes: one GEMM gives Hp − b, hence every μ_k. If no μ_k < −tol the
   solution is optimal (MATH.md §2); otherwise the most violating codes replace W's zero-weight
   slots (W grows if needed) and step 3 resumes from the current point.

Cost per round: two N×K×D GEMMs and small (N, m, m) systems; no K×K matrix is ever formed.
Convergence is checked once per round (one host sync). The backward solves the KKT system on the
support (:func:`~scq.solvers.active_set.constrained_vjp`): exact gradients w.r.t. z, the codebook
and the target at the memory of the forward, without unrolling.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .active_set import constrained_vjp, masked_cholesky, solve_active_set
from .registry import SolverInfo, register_method
from .sparse import SparseWeights

DEFAULT_TOL = {torch.float64: 1e-11, torch.float32: 1e-6}


def _default_tol(dtype: torch.dtype) -> float:
    return DEFAULT_TOL.get(dtype, 1e-6)


def _restricted_gram(E_W: torch.Tensor, lam: float) -> torch.Tensor:
    H = E_W @ E_W.transpose(1, 2)
    return H + lam * torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)


def _forward(z, E, lam, target, tol, max_rounds, max_inner, working_set, add_per_round, compact, info):
    N, D = z.shape
    K = E.shape[0]
    dtype, device = z.dtype, z.device
    scores = z @ E.transpose(0, 1)  # (N, K)
    sq_norms = (E * E).sum(-1)
    start = (scores - 0.5 * sq_norms).argmax(-1)  # the nearest code: a feasible start
    B = scores  # b = Ez + λp̃, in place
    if target is None:
        B.scatter_add_(1, start.unsqueeze(1), torch.full((N, 1), lam, dtype=dtype, device=device))
    else:
        B.add_(target, alpha=lam)

    # Tolerances are relative to the size of the multipliers: |μ| ≲ ‖e‖(‖e‖ + ‖z‖) + λ‖p̃‖.
    e_max = sq_norms.max().sqrt()
    scale = e_max * (e_max + z.norm(dim=-1)) + lam * (1 if target is None else target.abs().amax(-1).clamp_min(1))
    dual_tol = tol * scale

    m = min(working_set, K)
    n_add = min(add_per_round, K)
    # Round 0: multipliers at the one-hot start rank the first candidates.
    G = torch.addmm(B, E[start], E.transpose(0, 1), beta=-1)  # Hp − b without the λp term
    G.scatter_add_(1, start.unsqueeze(1), torch.full((N, 1), lam, dtype=dtype, device=device))
    G.scatter_(1, start.unsqueeze(1), float("inf"))
    candidates = G.topk(m - 1, dim=1, largest=False).indices if m > 1 else start.new_zeros((N, 0))
    del G
    W = torch.cat([start.unsqueeze(1), candidates], dim=1)
    p = torch.zeros(N, m, dtype=dtype, device=device)
    p[:, 0] = 1
    s = p > 0
    valid = torch.ones_like(s)

    converged = torch.zeros(N, dtype=torch.bool, device=device)
    residual = torch.full((N,), float("inf"), dtype=dtype, device=device)
    inner_total = 0
    rounds = 0
    rows = None  # the rows still uncertified (None: all of them)

    def take(t):
        return t if rows is None else t[rows]

    for rounds in range(1, max_rounds + 1):
        Wr, pr, sr, vr, Br = take(W), take(p), take(s), take(valid), take(B)
        E_W = E[Wr]
        res = solve_active_set(_restricted_gram(E_W, lam), Br.gather(1, Wr), pr, sr, vr, take(dual_tol),
                               max_iter=max_inner, compact=compact)
        pr, sr, nu = res.weights, res.support, res.nu
        inner_total += res.iterations
        # Certificate over every code: μ = Hp − b + ν.
        zq = torch.bmm(pr.unsqueeze(1), E_W).squeeze(1)
        G = torch.addmm(Br, zq, E.transpose(0, 1), beta=-1)
        G.scatter_add_(1, Wr, lam * pr)
        G.scatter_(1, Wr, float("inf"))
        worst, worst_idx = G.topk(n_add, dim=1, largest=False)
        del G
        mu = worst + nu.unsqueeze(1)
        violating = mu < -take(dual_tol).unsqueeze(1)
        conv_r = res.converged & ~violating[:, 0]
        res_r = torch.clamp(-mu[:, 0], min=0) / take(scale)
        if rows is None:
            p, s, converged, residual = pr, sr, conv_r, res_r
        else:
            p[rows], s[rows], converged[rows], residual[rows] = pr, sr, conv_r, res_r
        if bool(converged.all()) or rounds == max_rounds:
            break
        # Grow the working set: support slots first, then the violators, then the rest of W.
        n_support = sr.sum(1)
        n_new = violating.sum(1)
        need = int((n_support + n_new).max())
        if need > m:
            pad = need - m
            W = torch.cat([W, start.unsqueeze(1).expand(N, pad)], dim=1)
            p = torch.cat([p, p.new_zeros(N, pad)], dim=1)
            s = torch.cat([s, s.new_zeros(N, pad)], dim=1)
            valid = torch.cat([valid, valid.new_zeros(N, pad)], dim=1)
            # Padding slots repeat the start code (already in W, weight 0, not valid), so they
            # never hide another code from the certificate.
            Wr = torch.cat([Wr, take(start).unsqueeze(1).expand(-1, pad)], dim=1)
            pr, sr, vr = (torch.cat([t, t.new_zeros(t.shape[0], pad)], dim=1) for t in (pr, sr, vr))
            m = need
        order = torch.argsort((~sr).to(torch.int8), dim=1, stable=True)
        Wr, pr, sr, vr = Wr.gather(1, order), pr.gather(1, order), sr.gather(1, order), vr.gather(1, order)
        # Violators go to slots n_support, n_support+1, …; the others to a scratch column.
        slot = n_support.unsqueeze(1) + torch.arange(n_add, device=device)
        slot = torch.where(violating, slot, torch.full_like(slot, m))
        Wr = torch.cat([Wr, Wr.new_zeros(Wr.shape[0], 1)], dim=1).scatter_(1, slot, worst_idx)[:, :m]
        vr = torch.cat([vr, vr.new_zeros(vr.shape[0], 1)], dim=1).scatter_(1, slot, True)[:, :m]
        if rows is None:
            W, p, s, valid = Wr, pr, sr, vr
        else:
            W[rows], p[rows], s[rows], valid[rows] = Wr, pr, sr, vr
        if compact:
            rows = (~converged).nonzero().squeeze(1)

    info.iterations = inner_total
    info.residual = float(residual.max()) if N else 0.0
    info.converged = bool(converged.all())
    info.extra.update(rounds=rounds, working_set=m, converged_mask=converged, residuals=residual,
                      support_size=s.sum(1))
    if not info.converged:
        warnings.warn(
            f"scq pgd: {int((~converged).sum())} of {N} vectors did not reach tol={tol:g} in "
            f"max_rounds={max_rounds} (largest relative KKT residual {info.residual:.2e}); "
            "raise max_rounds/max_inner or loosen tol",
            RuntimeWarning,
            stacklevel=4,
        )
    return W, p, s


class _SCQActiveSetFunction(torch.autograd.Function):
    """values[n] = p*[n] on the codes indices[n]: p* = argmin_{p∈Δ} ‖z − Eᵀp‖² + λ‖p − p̃‖².

    Backward (MATH.md §4): v = M g on the support, then ∂z = VE, ∂p̃ = λV,
    ∂E = Vᵀ(Z − PE) − Pᵀ(VE).
    """

    @staticmethod
    def forward(ctx, z, codebook, target, lam, options, info):
        W, p, s = _forward(z, codebook, lam, target, info=info, **options)
        ctx.save_for_backward(z, codebook, W, p, s)
        ctx.lam = lam
        ctx.has_target = target is not None
        ctx.mark_non_differentiable(W)
        return p, W

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_values, _grad_indices):
        z, E, W, p, s = ctx.saved_tensors
        lam = ctx.lam
        E_W = E[W]
        L = masked_cholesky(_restricted_gram(E_W, lam), s)
        v = constrained_vjp(L, grad_values, s)
        VE = torch.bmm(v.unsqueeze(1), E_W).squeeze(1)
        grad_z = VE if ctx.needs_input_grad[0] else None
        grad_E = grad_target = None
        if ctx.needs_input_grad[1]:
            zq = torch.bmm(p.unsqueeze(1), E_W).squeeze(1)
            U = v.unsqueeze(-1) * (z - zq).unsqueeze(1) - p.unsqueeze(-1) * VE.unsqueeze(1)
            grad_E = torch.zeros_like(E).index_add_(0, W.reshape(-1), U.reshape(-1, U.shape[-1]))
        if ctx.has_target and ctx.needs_input_grad[2]:
            grad_target = torch.zeros(z.shape[0], E.shape[0], dtype=z.dtype, device=z.device)
            grad_target.scatter_add_(1, W, lam * v)
        return grad_z, grad_E, grad_target, None, None, None


def solve_pgd_sparse(
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
) -> "tuple[SparseWeights, SolverInfo]":
    """The solve, returning the solution as :class:`SparseWeights` (see :func:`solve_pgd`)."""
    info = SolverInfo("pgd")
    options = dict(
        tol=_default_tol(z.dtype) if tol is None else float(tol),
        max_rounds=int(max_rounds),
        max_inner=int(max_inner),
        working_set=max(1, int(working_set)),
        add_per_round=max(1, int(add_per_round)),
        compact=bool(compact),
    )
    values, indices = _SCQActiveSetFunction.apply(z, codebook, target, lam, options, info)
    return SparseWeights(indices, values, codebook.shape[0]), info


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
) -> "tuple[SparseWeights, SolverInfo]":
    """Options:
        tol: relative KKT tolerance (default 1e-11 in float64, 1e-6 in float32); a code counts
            as violating when its multiplier is below ``-tol·(‖e‖max(‖e‖max + ‖z‖) + λ‖p̃‖max)``.
        max_rounds: certificate rounds over all K codes; a warning is raised if they run out.
        max_inner: active-set iterations per round on the working set.
        working_set: initial working-set size m (grows when the support needs more).
        add_per_round: codes examined per round for entry into the working set.
        compact: after each convergence check, work on the unfinished vectors only (gathered by
            index at the check's host sync). ``False`` keeps the whole batch in lockstep with
            fixed shapes (e.g. for CUDA graphs), at the cost of re-solving finished vectors.

    Returns the solution as :class:`SparseWeights` (``solve_scq`` densifies it).
    """
    info = SolverInfo("pgd")
    options = dict(
        tol=_default_tol(z.dtype) if tol is None else float(tol),
        max_rounds=int(max_rounds),
        max_inner=int(max_inner),
        working_set=max(1, int(working_set)),
        add_per_round=max(1, int(add_per_round)),
        compact=bool(compact),
    )
    values, indices = _SCQActiveSetFunction.apply(z, codebook, target, lam, options, info)
    return SparseWeights(indices, values, codebook.shape[0]), info
