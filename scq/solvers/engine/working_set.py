r"""The shared engine of the fast exact solvers (SCQ's ``pgd``, SVQ's lasso).

Both problems are non-negative quadratic programs over a few of many codes c_j = σ_j·e_{k_j}
(σ_j = ±1; signed codes turn the lasso's ‖w‖₁ into a linear term over u ≥ 0, w = σ ⊙ u):

    minimize_u  ½ uᵀHu − (b − α1)ᵀu    s.t.  u ≥ 0   [and 1ᵀu = 1 for the simplex]
    H = CCᵀ + ρI,  C the rows σ_j e_{k_j}

- SCQ (docs/math.md §2): σ = +1, ρ = λ, α = 0, b = Ez + λp̃, with the simplex constraint.
- Lasso (docs/math.md §5): σ = ±1, ρ = 0, α > 0, b = σ ⊙ Ez (``nonneg``: σ = +1).

The solution is sparse and its support is found from the KKT certificate, not from
neighbourhoods (the support is mostly *not* among the nearest codes):

1. Start from a feasible point (the one-hot nearest code for the simplex, 0 for the lasso); the
   working set W is the codes whose multipliers are most negative there.
2. Solve the problem restricted to W exactly: the batched active-set method of
   :mod:`scq.solvers.engine.active_set` (projected steps onto faces, equality solves on the support).
3. Certificate over every code: one GEMM gives all gradients, hence every multiplier
   μ_k = σ(g_k) + α + ν. If none is below −tol, u is optimal; otherwise the most violating codes
   replace W's zero-weight slots (W grows if needed) and step 2 resumes from the current point.

Cost per round: one N×K×D GEMM (the gradients of step 3) and small systems on W. A K×K matrix is
formed only by the compiled CPU rounds, where it is small beside the (N, K) scores (the codebook's
Gram matrix EEᵀ where K ≤ N, or K ≤ min(4N, 1024): :func:`uses_codebook_gram`); they then read every
product from it, with no GEMM per round. Memory: each (n, K) pass over all codes (the
nearest-code search, a round's gradients and entering codes) runs a block of rows at a time past
:data:`.blocks.GEMM_BLOCK_ELEMENTS` entries, so that the working memory is O(N·m + K·D) beside one
block (the torch loop adds its (N, m, m) systems; the compiled CPU rounds' cache of products is
capped at a block's size, and their codebook Gram path, which reads ZEᵀ (N, K), runs only within it).
One host sync per round. Where :mod:`~scq.solvers.engine.fused` has kernels the work
on W runs compiled: on the CPU (Numba) a round is three parallel loops over the unfinished rows,
each row's state kept in place (:func:`_rounds_on_cpu`): a row's work on W (its Gram matrix from
the products it kept from the last round, FISTA, the active set on its valid slots, z_q), then
after the round's GEMM its entering codes and verdict, then its next W (where the codebook's Gram
matrix replaces the GEMM, each row runs all its rounds in one call: :func:`_rounds_row_by_row`);
on CUDA (Triton) a row's whole work on W is one launch for the round
(:mod:`~scq.solvers.engine.round_triton`), with no sync. The torch path, the kernels' reference,
adds a sync per ``check_every`` inner iterations.
The backward solves the KKT system on the support (docs/math.md §4, §5): exact gradients at the
forward's memory, no unrolling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ... import _validation as v
from ...problems import code_scores, max_code_norm, nearest_code, row_scale
from . import blocks, fused
from .active_set import (DEGENERATE_SLACK, drop_tolerance, dropped_weight_allowance, masked_cholesky, solve_active_set,
                         support_solve, support_vjp)
from ..solution import gather_rows
from ..threads import one_thread
from .active_set_triton import Refinement
from .fista import fista


@dataclass(frozen=True)
class QPForm:
    """Which of the QPs above: constraint set and the constant terms."""

    simplex: bool  # 1ᵀu = 1; the solve starts at the one-hot nearest code
    signed: bool  # codes ±e_k (lasso) instead of +e_k
    ridge: float  # ρ in H = CCᵀ + ρI
    l1: float  # α
    # Added to b at the nearest code when no ``extra`` term is given: λ for SCQ's default target
    # p̃ = one_hot(nearest code), which carries no gradient.
    start_bonus: float = 0.0


@dataclass(frozen=True)
class Options:
    """``tol``: the relative KKT tolerance the engine works to (the caller's, which the answer is
    then certified at, or :func:`engine_tol`); it aims at tol/DEGENERATE_SLACK so that faces it
    accepts as degenerate still pass."""

    tol: float
    max_rounds: int
    max_inner: int
    working_set: int
    add_per_round: int
    compact: bool
    pg_iters: int = 10
    fw_steps: int = 0


# Where the caller gives no tolerance, float32 solves aim this many times inside the default the
# certificate judges them by (1e-5). A code whose multiplier is short of the aim may stay out of
# the support, and the weight it would have had can reach ~aim·s/λ (docs/math.md §7): aiming at
# 1e-5 left weights 1.2–1.4e-4 from the exact ones (N = K = 1024, D = 16, λ = 0.1, on each of the
# three codebooks of the runtime benchmark); 1e-6 left ≤ 1.3e-5 (D = 16–256, K ≤ 4096), in the
# same rounds and time, and stays above float32's rounding (~1e-7·√D relative).
FLOAT32_AIM_INSIDE = 10.0


def engine_tol(dtype: torch.dtype) -> float:
    """The relative KKT tolerance the engine aims at when the caller gives none."""
    from ..registry import default_tol

    return default_tol(dtype) / (FLOAT32_AIM_INSIDE if dtype != torch.float64 else 1.0)


# The engine's integer options and their least values (``check_engine_options``).
_INT_OPTIONS = {"max_rounds": 1, "max_inner": 1, "working_set": 1, "add_per_round": 1, "pg_iters": 0, "fw_steps": 0}


def check_engine_options(**options) -> None:
    """The engine methods' ``validate`` (registry.Method): the integer options given, each an int
    of at least its least value (they were clamped silently once: ``max_rounds=0`` ran one round,
    ``pg_iters=-3`` none). Run where options enter (``dispatch.check_method``), not per solve."""
    for name, low in _INT_OPTIONS.items():
        if name in options:
            v.check_int_at_least(name, options[name], low)


def make_options(dtype: torch.dtype, tol: Optional[float], max_rounds: int, max_inner: int, working_set: int,
                 add_per_round: int, compact: bool, pg_iters: int, fw_steps: int = 0) -> Options:
    """Engine options from a method's keyword options (``tol=None``: :func:`engine_tol`), their
    values checked already (:func:`check_engine_options`)."""
    return Options(tol=engine_tol(dtype) if tol is None else float(tol), max_rounds=int(max_rounds),
                   max_inner=int(max_inner), working_set=int(working_set), add_per_round=int(add_per_round),
                   compact=bool(compact), pg_iters=int(pg_iters), fw_steps=int(fw_steps))


def more_per_round(n_add: int, K: int, D: int, opts: Options, simplex: bool, widest_support: int = 0) -> int:
    """The codes examined per round once rounds keep filling every entry slot: twice as many, up to
    D/2 + 1 (or ``add_per_round`` where larger), for the lasso. Its support needs at most D codes
    (without a ridge), so more entering at once cannot all stay, and the working set, as wide as
    its widest row, would only grow: with doubling unbounded, the
    lasso at D = 64, K = 10000 (α = 0.1, N(0, 1) codes and inputs: supports of D) widened W to 1203
    slots, 5.6 s for 64 vectors, and its Gram cache asked for 41 GB at N = 4096. Where supports
    fill D, half of D a round is the better trade than D + 1: a few more rounds, each on a W of
    ~1.5D instead of ~2D slots, whose active set adds and drops fewer codes (lasso, 2 cores, float32:
    1.25–1.55× faster at D = 32–128, e.g. 12.1 → 7.8 s for 512 vectors at D = 128, K = 10000,
    rounds 35 → 39; SCQ's pgd, whose supports stay well below D, within ±5%).

    That bound is the lasso's. SCQ's ridge λ‖p − p̃‖² lets a support hold up to K codes (duplicate
    or near-duplicate codes, as a collapsed codebook has, share the weight), so for SCQ (``simplex``)
    the doubling goes on up to K, as it does for the lasso once some row's support
    (``widest_support``, a lower bound of the widest) exceeds D + 1, which its ridge allows: a
    support of s codes then takes ~log₂ s rounds, not s / ``add_per_round``. With the bound, 351
    duplicate codes at D = 2 (K = 700, λ = 0.003) ran out of 30 rounds at 240 codes, uncertified;
    without it, 10 rounds. On the runtime benchmark's codebooks (N = K = 1024, D = 16 and 64) the
    row-rounds and active-set iterations moved by under 0.3%; W grew wider at D = 16 (29 → 51)."""
    bounded = not simplex and widest_support <= D + 1
    return min(2 * n_add, K, max(opts.add_per_round, D // 2 + 1) if bounded else K)


def engine_hint(diagnostics: dict, opts: Options) -> str:
    """What to do about vectors the engine left uncertified (read only when some are)."""
    if bool(diagnostics["broken_down"].any()):
        return ("a support system was singular to working precision (duplicate or collinear codes, a lasso "
                "without ridge, or float32 with λ below ~1e-6·‖E‖²): compute in float64 or add a ridge")
    if diagnostics["finished"]:
        return ("the solver met its own criterion; what is left is rounding at this input scale: compute in "
                "float64, or bring the inputs nearer the codebook's scale")
    return f"raise max_rounds (now {opts.max_rounds}) or max_inner (now {opts.max_inner}), or loosen tol"


# Below this ratio ρ/max‖e‖² the support systems (condition up to m·‖e‖²/ρ) are solved in float64
# when the inputs are float32: float32 Cholesky broke down at λ ≈ 1e-6 with ‖e‖ ≈ 3. Above it,
# float32 is safe (Cholesky solves are backward stable) and ~1.3× faster on the CPU.
PRECISE_SYSTEMS_BELOW = 1e-5
# ... and, on the simplex, where the codes are bunched together: their spread about their mean,
# σ² = mean‖e − ē‖², below this fraction of max‖e‖² + ρ. The multipliers of codes so alike differ
# by less than float32 resolves at the problem's scale (λp and the products are ~max‖e‖² + ρ), so
# rows chased rounding noise to max_rounds, up to max_inner iterations each (codebooks 1e-1 to
# 1e-3 of their norm apart, λ = 1e-3 to 100: 38 cases at 30 rounds, one answer uncertified;
# float64 systems: 1–5 rounds, faster). Trained codebooks (λ ≤ 1) and data-like ones sit at 3e-3
# to 1 (float32 systems); λ = 10's early in training at 2e-4 to 2e-3.
PRECISE_SYSTEMS_SPREAD = 1e-3
# Rounds after which a row that fills every entry slot doubles the codes examined per round.
GROW_AFTER_ROUNDS = 4

# Where the codebook's Gram matrix serves the CPU rounds, each row runs its rounds to the end in
# one compiled call (:func:`_rounds_row_by_row`). False: the batch loop of :func:`_rounds_on_cpu`,
# round by round (the same answers; the tests compare the two).
ROW_BY_ROW = True
# There, SCQ's rows start from ``fw_steps`` (default FW_STEPS) Frank–Wolfe steps over all K codes,
# their first W the codes FW weighted and the most violating after them, max(working_set, FW_WIDTH)
# slots in all (cpu_kernels._frank_wolfe_start, docs/math.md §2), instead of the one-hot start and
# its working_set − 1 most violating codes. Measured (2 cores, fp32, forward+backward, paired in
# one process, the runtime benchmark's codebooks): 0.73–0.95× the time at N = 1024–4096,
# K = 128–1024, D = 16–256; 6 to 12 steps and 20 to 24 slots within a few percent of each other,
# 20+ steps or 32 slots slower (a step is a sweep over K). 0: off.
FW_STEPS = 10
FW_WIDTH = 24
# Rows whose block of ``fw_steps`` steps found a new code at each step run another, up to this many
# blocks, and their first W has a slot more per step past the first block (the supports FW had
# not reached: random codes at D = 64 and 256). Measured against one block (fp32, forward+backward,
# paired in one process, N = 1024, K = 1024 unless named): random codes 0.86× the time at D = 256,
# 0.96× at D = 64, 0.91× at N = 4096, 0.95× at K = 512; D = 16 (random, data-like, codes = inputs
# + noise) and K = 128 within ±5%, the host's noise.
FW_BLOCKS = 3


def frank_wolfe_start(problem: QPForm, opts: Options) -> bool:
    """Whether the row-by-row rounds open with Frank–Wolfe steps over all K codes (SCQ's rows,
    ``opts.fw_steps`` > 0, where the codebook's Gram matrix is at hand: the caller checks that):
    then :func:`_forward` leaves the first W to them."""
    return ROW_BY_ROW and opts.fw_steps > 0 and problem.simplex and not problem.signed


def frank_wolfe_width(opts: Options) -> int:
    """The first W's slots after the Frank–Wolfe start: ``working_set`` where larger, and a slot
    more for each step a row takes past ``fw_steps``, as far as W's arrays reach (their width is
    not raised for it: ``max(4 · working_set, this)``, 64 by default, holds the widest first W of
    the default 3 blocks of 10 steps, 44, and many steps cannot make N × W arrays wider)."""
    return max(opts.working_set, FW_WIDTH)


def system_dtype(dtype: torch.dtype, ridge: float, e_max_sq: float, spread_sq: Optional[float] = None) -> torch.dtype:
    """The dtype of the small per-vector systems (Gram, Cholesky, active set, FISTA): float64 for
    float32 inputs whose systems are ill-conditioned (``PRECISE_SYSTEMS_BELOW``) or, on the
    simplex, whose codes are too alike for float32 to tell apart (``spread_sq``: σ² of
    :func:`codebook_spread`; ``PRECISE_SYSTEMS_SPREAD``). They cost O(N·m³) beside the O(N·K·D)
    certificate GEMMs, which stay in the input's dtype."""
    if dtype == torch.float32 and (ridge < PRECISE_SYSTEMS_BELOW * e_max_sq or (
            spread_sq is not None and spread_sq < PRECISE_SYSTEMS_SPREAD * (e_max_sq + ridge))):
        return torch.float64
    return dtype


def codebook_spread(E: torch.Tensor) -> torch.Tensor:
    """σ² = mean‖e − ē‖² (a device scalar): how far apart the codes are, for :func:`system_dtype`."""
    E = E.detach()
    return (E - E.mean(0)).square().sum(-1).mean()


def _unread(e_max: torch.Tensor, spread: Optional[torch.Tensor]) -> "list[torch.Tensor]":
    """What :func:`system_dtype` needs and round 1's counts read where it was not read before:
    max‖e‖² and (float32 on the simplex) the spread."""
    return [e_max.square()] + ([spread] if spread is not None else [])


def _read(values: "list[float]") -> "tuple[float, Optional[float]]":
    """(max‖e‖², spread or ``None``) from the values of :func:`_unread`, as read."""
    return values[0], (values[1] if len(values) > 1 else None)


def refines(sys_dtype: torch.dtype) -> bool:
    """Whether a round refines its answers once on their support (residual in float64): where the
    systems are float32, whose Gram products err by ~eps·‖e‖², so weights by ~eps·‖e‖²/ρ (5e-5
    from the exact ones with codes near the inputs, ρ = 0.1; one step brings that to ~1e-7)."""
    return sys_dtype != torch.float64


def _system_ridge(ridge: float, e_max_sq: float) -> float:
    """ρ of the small systems: the problem's ridge, or 1e-12·max‖e‖² without one."""
    return ridge if ridge > 0 else 1e-12 * e_max_sq


def _code_rows(E: torch.Tensor, code: torch.Tensor, sign: torch.Tensor, signed: bool) -> torch.Tensor:
    """C (N, m, D): the signed codes sign·E[code] (unsigned problems skip the multiply by ones)."""
    C = gather_rows(E, code)
    return C * sign.unsqueeze(-1) if signed else C


def _gram(C: torch.Tensor, ridge) -> torch.Tensor:
    H = C @ C.transpose(1, 2)
    return H + ridge * torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)


def _gradients(zq, z, E, extra, start, bonus: float, G: Optional[torch.Tensor] = None):
    """G (n, K): g_k = e_kᵀ(z_q − z) − extra_k, the gradient of the objective's smooth part along
    each + code without the ridge term (which vanishes outside W, where weights are 0). ``extra``
    None: SCQ's default target adds ``bonus`` (λ) at the nearest code ``start``. One GEMM on the
    rows' points (or its product ``G``, given): the (N, K) linear term is never formed, nor
    gathered per round."""
    if G is None:
        G = (zq - z) @ E.transpose(0, 1)
    if extra is not None:
        G.sub_(extra)
    elif bonus:
        G.scatter_add_(1, start.unsqueeze(1), torch.full_like(start, -bonus, dtype=G.dtype).unsqueeze(1))
    return G


def _systems(E, code, sign, z, problem: QPForm, sys_dtype, sys_ridge, cache, rows):
    """The round's (H, Cz, C): H = CCᵀ + ρI in the systems' dtype, Cz (n, m), and C (n, m, D) on
    the torch path (``None`` where a compiled kernel made H and Cz from the codes in place, reusing
    the products of the codes each row kept from the last round: ``cache``)."""
    compiled = fused.gram(E, code, sign, z, ridge=sys_ridge, sys_dtype=sys_dtype, cache=cache, rows=rows)
    if compiled is not None:
        return compiled[0], compiled[1], None
    C = _code_rows(E, code, sign, problem.signed)
    return _gram(C.to(sys_dtype), sys_ridge), torch.bmm(C, z.unsqueeze(-1)).squeeze(-1), C


def _linear_on_w(code, sign, extra, start, problem: QPForm, dtype):
    """b − Cz on W (n, m): b_j = σ_j(e_{k_j}ᵀz + extra_{k_j}) − α, so the term σ_j·extra_{k_j} − α
    (``extra`` None: λ at the nearest code ``start`` for SCQ's default target)."""
    if extra is not None:
        lin = sign * extra.gather(1, code)
    elif problem.start_bonus:
        lin = (code == start.unsqueeze(1)).to(dtype) * problem.start_bonus
    else:
        lin = torch.zeros(code.shape, dtype=dtype, device=code.device)
    return lin - problem.l1 if problem.l1 else lin


def _solve_on_w(E, code, sign, z, extra, start, u, s, valid, dual_tol, problem: QPForm, opts: Options, sys_dtype,
                sys_ridge, max_support, cache, rows):
    """The round's work on W: the systems, FISTA's warm start and the exact active-set solve (and
    the refinement: :func:`refines`), then z_q. Returns (ActiveSetResult in the systems' dtype, z_q
    (n, D)). Step by step, each step compiled where a kernel applies (without a cap on the support
    the rounds run whole instead, compiled: :func:`_rounds_on_cpu`, :func:`_rounds_on_triton`)."""
    linear = _linear_on_w(code, sign, extra, start, problem, z.dtype)
    H, cz, C = _systems(E, code, sign, z, problem, sys_dtype, sys_ridge, cache, rows)
    b = (cz + linear).to(sys_dtype)
    u = u.to(sys_dtype)
    if opts.pg_iters:
        # Projected-gradient warm start on W: finds most of the support cheaply, so the exact
        # active-set polish below needs few (costly) equality solves.
        u = fista(H, b, u, valid, simplex=problem.simplex, ridge=sys_ridge, n_iter=opts.pg_iters)
        if max_support is not None and code.shape[1] > max_support and not problem.simplex:
            # Keep the warm start's D largest weights: still feasible (u ≥ 0), and the
            # active set then never faces a support system it cannot factor.
            top = u.topk(max_support, dim=1).indices
            u = u * torch.zeros_like(s).scatter_(1, top, True)
        s = u > 0
    # Compiled where a kernel applies: every row runs until its own row is done, in one call.
    refine = Refinement(E, code, sign, z, linear, sys_ridge) if refines(sys_dtype) else None
    res = fused.active_set(H, b, u, s, valid, dual_tol.to(sys_dtype), simplex=problem.simplex,
                           max_support=max_support, max_iter=opts.max_inner, refine=refine)
    if res is None:
        res = solve_active_set(H, b, u, s, valid, dual_tol.to(sys_dtype), simplex=problem.simplex,
                               max_support=max_support, max_iter=opts.max_inner, compact=opts.compact)
    if refine is not None and not res.refined:
        res.weights, res.nu = _refine(E, code, sign, z, linear, H, res, problem, sys_ridge, C)
    w = res.weights.to(E.dtype)
    zq = fused.combine(w * sign if problem.signed else w, E, code) if C is None else None
    if zq is None:
        C = _code_rows(E, code, sign, problem.signed) if C is None else C
        zq = torch.bmm(w.unsqueeze(1), C).squeeze(1)
    return res, zq


def _refine(E, code, sign, z, linear, H, res, problem: QPForm, ridge: float, C):
    """One step of iterative refinement of the finished rows' answers on their supports S = {u > 0}
    (the torch twin of ``cpu_kernels._refine_row``; see :func:`refines`): the residual
    r_S = b_S − H_SS u_S − ν1 summed in float64 from the codes, r = C(z − Cᵀu) + linear − ρu − ν,
    not from H; the correction solved with H_SS's factor in the systems' dtype, its sum set to
    1 − 1ᵀu on the simplex. Rows where a weight would turn non-positive keep their answer.
    Returns (weights, ν) in the systems' dtype."""
    u, f64 = res.weights, torch.float64
    support = (u > 0) & res.converged.unsqueeze(-1)
    C = _code_rows(E, code, sign, problem.signed) if C is None else C
    C64 = C.to(f64)
    u64 = torch.where(support, u, 0).to(f64)
    v = z.to(f64) - torch.bmm(u64.unsqueeze(1), C64).squeeze(1)  # z − z_q
    r = torch.bmm(C64, v.unsqueeze(-1)).squeeze(-1) + linear.to(f64) - ridge * u64
    L, failed = masked_cholesky(H, support)
    if problem.simplex:
        r = r - res.nu.to(f64).unsqueeze(-1)
        x, y = (t.to(f64) for t in support_solve(L, r.to(H.dtype), support))
        d_nu = (x.sum(-1) - (1 - u64.sum(-1))) / y.sum(-1)
        d = x - d_nu.unsqueeze(-1) * y
    else:
        d_nu = torch.zeros_like(res.nu, dtype=f64)
        d = torch.cholesky_solve((r.to(H.dtype) * support).unsqueeze(-1), L).squeeze(-1).to(f64)
    refined = u64 + torch.where(support, d, 0)
    ok = ~failed & support.any(-1) & ((refined > 0) | ~support).all(-1)
    weights = torch.where(ok.unsqueeze(-1), refined.to(u.dtype), u)
    return weights, torch.where(ok, res.nu + d_nu.to(res.nu.dtype), res.nu)


def verdict_tol(dual_tol: torch.Tensor, residual: torch.Tensor, allowance: torch.Tensor) -> torch.Tensor:
    """The tolerance of a round's verdict on the codes outside W, per row: ``dual_tol``, or where
    the row's active set accepted a degenerate face (``residual`` above it) at least
    ``allowance`` (:func:`verdict_allowance`). (The compiled paths' verdicts do the same.)"""
    return torch.where(residual.to(dual_tol.dtype) > dual_tol, torch.clamp_min(dual_tol, allowance), dual_tol)


def verdict_allowance(sys_dtype: torch.dtype, e_max: torch.Tensor, e_max_sq: Optional[float], sys_ridge: float,
                      dual_tol: torch.Tensor) -> torch.Tensor:
    """:func:`~scq.solvers.engine.active_set.dropped_weight_allowance` for systems in ``sys_dtype``,
    H_kk ≤ max‖e‖² + ρ, as a (1,) tensor in ``dual_tol``'s dtype and device (no sync: from the
    device's max‖e‖ where ``e_max_sq`` is not read yet)."""
    h_max = (e_max.square() if e_max_sq is None else e_max_sq) + sys_ridge
    return torch.as_tensor(dropped_weight_allowance(sys_dtype, h_max), dtype=dual_tol.dtype,
                           device=dual_tol.device).reshape(1)


def _entering_codes(zq, z, E, extra, start, code, sign, valid, n_add: int, problem: QPForm,
                    out: Optional[torch.Tensor] = None):
    """:func:`_entering` at the round's points z_q: one GEMM for the gradients (into ``out``, a
    buffer of K columns and as many rows as a block, where given), then on CUDA the scores in one
    launch (:func:`scq.solvers.engine.round_triton.entering_scores`) and their top-k. Past the
    block budget, block by block (:mod:`.blocks`): only the (n, n_add) results outlive a block."""
    n, K = z.shape[0], E.shape[0]
    if blocks.fits(n, K):
        return _entering_codes_of(zq, z, E, extra, start, code, sign, valid, n_add, problem,
                                  None if out is None else out[:n])
    out = z.new_empty(blocks.block_rows(n, K), K) if out is None else out
    at = lambda t, b: None if t is None else t[b]
    parts = [_entering_codes_of(zq[b], z[b], E, at(extra, b), at(start, b), code[b], sign[b], valid[b], n_add, problem,
                                out[:b.stop - b.start]) for b in blocks.row_blocks(n, K)]
    return blocks.cat_rows(parts)


def _entering_codes_of(zq, z, E, extra, start, code, sign, valid, n_add: int, problem: QPForm,
                       out: Optional[torch.Tensor]):
    """:func:`_entering_codes` for rows whose (n, K) gradients fit in one block (``out`` (n, K) or ``None``)."""
    G = torch.matmul(zq - z, E.transpose(0, 1), out=out)
    bonus = problem.start_bonus
    score = fused.entering_scores(G, code, sign, valid, extra, start, bonus=bonus, signed=problem.signed)
    if score is None:
        return _entering(_gradients(zq, z, E, extra, start, bonus, G=G), code, sign, valid, n_add, problem)
    worst, worst_code = score.topk(n_add, dim=1)
    return worst, worst_code, _entering_signs(G, worst_code, extra, start, bonus) if problem.signed else None


def _entering_signs(G, worst_code, extra, start, bonus: float) -> torch.Tensor:
    """The entering signs −sign(g_k) of the codes ``worst_code`` (n, n_add) chosen from the scores of
    :func:`scq.solvers.engine.round_triton.entering_scores`, g = G − extra (or less ``bonus`` at
    the ``start`` codes) read from G, which the signed scores keep. (Unsigned codes: ``None``
    instead, all enter as +e_k.)"""
    g = G.gather(1, worst_code)
    if extra is not None:
        g = g - extra.gather(1, worst_code)
    elif start is not None and bonus:
        g = g - bonus * (worst_code == start.unsqueeze(1))
    return torch.where(g > 0, -1.0, 1.0).to(G.dtype)


def _entering(G, code, sign, valid, n_add: int, problem: QPForm):
    """The ``n_add`` most violating codes of each row outside W, from the gradients G of
    :func:`_gradients` (overwritten): their scores (n, n_add), larger = more violating, in
    descending order, codes and entering signs. Violation of code k with sign σ: −(σ g_k + α + ν),
    the score is −σ g_k (σ = −sign(g_k) for signed codes)."""
    compiled = fused.entering(G, code, sign, valid, n_add, signed=problem.signed)
    if compiled is not None:
        return compiled
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
    worst, worst_code = score.topk(n_add, dim=1)
    new_sign = entering.gather(1, worst_code) if problem.signed else torch.ones_like(worst)
    return worst, worst_code, new_sign


def _nearest_from_scores(scores, E):
    # The same formula as the certificate's and the default target's p̃: a tie goes the same way.
    start = fused.nearest(scores, E)
    return nearest_code(scores, E) if start is None else start


def _start_and_scale(z, E, extra, problem: QPForm, buf: Optional[torch.Tensor] = None):
    """The nearest code (the simplex's start), the tolerance scale (N,), max‖e‖ and the scores
    ZEᵀ (N, K) the nearest code came from (``None`` where there is no start, or where (N, K) is
    past the block budget: the search then runs block by block, :mod:`.blocks`, its scores
    written into ``buf``, one block's buffer)."""
    start = scores = None
    if problem.simplex:
        N, K = z.shape[0], E.shape[0]
        if buf is None:
            scores = code_scores(z, E)
            start = _nearest_from_scores(scores, E)
        else:
            start = torch.empty(N, dtype=torch.long, device=z.device)
            for b in blocks.row_blocks(N, K):
                start[b] = _nearest_from_scores(torch.matmul(z[b], E.transpose(0, 1), out=buf[:b.stop - b.start]), E)
    # Multipliers are sums of terms of size ‖e‖(‖e‖ + ‖z‖), the ridge and α: tolerances are relative to that.
    e_max = max_code_norm(E)
    scale = row_scale(z, e_max, problem.ridge + problem.l1 + (0 if extra is None else extra.abs().amax(-1)))
    return start, scale, e_max, scores


def uses_codebook_gram(N: int, K: int) -> bool:
    """Whether the compiled rounds read the codes' products from the codebook's Gram matrix EEᵀ
    (K, K; one GEMM per solve) instead of computing them: every row's Gram matrix on W, the
    backward's on S, and each round's gradients G = E(z_q − z) = Σ_j u_j σ_j (EEᵀ)[k_j] − ZEᵀ,
    made row by row as the end of the round reads them (a sweep over K per support code instead
    of a GEMM's over K·D, and no (n, K) G in memory).

    Where K ≤ N, EEᵀ is no larger than the (N, K) scores and gradients of the other path, and its
    GEMM (K²D) no dearer than one round's (NKD). Measured (2 cores, fp32, forward+backward): at
    N = 1024, 20–34% faster at K = 128, 512 and at D = 256, 3–17% at K = 1024, D = 16–64; at
    N = 4096, 17% at K = 1024, 23–30% at K = 2048, 3% at K = 4096. Where N < K ≤ 4N it pays while
    EEᵀ stays in the cache (K ≤ 1024, 4 MB in fp32): 5–14% faster at N = 128–512, K = 512–1024;
    at K = 2048 and 4096 with N = 512–1024, 8–40% slower.

    Not past the block budget (:mod:`.blocks`): the rounds would hold ZEᵀ (N, K) whole."""
    return (K <= N or (K <= 4 * N and K <= 1024)) and blocks.fits(N, K)


def _codebook_gram(z, E, scores, sys_dtype):
    """(EEᵀ, ZEᵀ) in the systems' dtype (the scores of the nearest-code search where they are)."""
    E_sys = E.detach().to(sys_dtype)
    table = E_sys @ E_sys.transpose(0, 1)
    if scores is None or scores.dtype != sys_dtype:
        scores = z.detach().to(sys_dtype) @ E_sys.transpose(0, 1)
    return table, scores.detach()


def _forward(z, E, extra, problem: QPForm, opts: Options, diagnostics: dict, e_max_sq: Optional[float] = None,
             certify_scale: Optional[Callable[[], torch.Tensor]] = None):
    N, D = z.shape
    K = E.shape[0]
    dtype, device = z.dtype, z.device
    # Past the block budget, one block's buffer for every (n, K) pass: the nearest-code search,
    # then the first W's gradients and the rounds' (:mod:`.blocks`).
    block_buf = None if blocks.fits(N, K) else z.new_empty(blocks.block_rows(N, K), K)
    start, scale, e_max, scores = _start_and_scale(z, E, extra, problem, block_buf)
    # The systems' precision depends on max‖e‖², a device value. With a ridge, round 1 runs in the
    # input's dtype and reads max‖e‖² with its own counts (no sync of its own); where the systems
    # needed float64 after all (float32 inputs, ρ tiny against ‖e‖²), round 1 runs again, from the
    # start, in float64. Without a ridge the systems' jitter needs the value first: one sync more
    # (unless the caller has read it already, as the lasso's default ridge does).
    kernels = fused.round_kernels(z) if problem.ridge > 0 else None
    # (Only float32 inputs on the simplex can need float64 systems for bunched codes; read with max‖e‖².)
    spread = codebook_spread(E) if dtype == torch.float32 and problem.simplex else None
    if e_max_sq is None and (problem.ridge <= 0 or kernels is not None):
        # (On the CPU a "sync" is a read of memory: the compiled rounds take the value first.)
        if spread is None:
            e_max_sq = float(e_max) ** 2
        else:  # (one read for both)
            e_max_sq, spread = torch.stack([e_max.to(spread.dtype).square(), spread]).tolist()
    elif e_max_sq is not None and spread is not None:  # (a caller that read max‖e‖² already)
        spread = float(spread)
    sys_dtype = dtype if e_max_sq is None else system_dtype(dtype, problem.ridge, e_max_sq, spread)
    alpha = problem.l1
    dual_tol = opts.tol / DEGENERATE_SLACK * scale
    # Without a ridge, H_SS is singular past D codes (the lasso's |S| ≤ D): codes then enter one at
    # a time, and the systems get a rounding-level jitter so that a momentary D + 1 still factors.
    max_support = None if problem.ridge > 0 else D
    sys_ridge = problem.ridge if e_max_sq is None else _system_ridge(problem.ridge, e_max_sq)
    m = min(opts.working_set, K * (2 if problem.signed else 1))
    n_add = min(opts.add_per_round, K)

    # Round 0: the start point and the codes most violating there.
    code = torch.zeros(N, 0, dtype=torch.long, device=device)
    sign = torch.zeros(N, 0, dtype=dtype, device=device)
    u = torch.zeros(N, 0, dtype=dtype, device=device)
    if start is not None:
        code, sign, u = start.unsqueeze(1), torch.ones(N, 1, dtype=dtype, device=device), torch.ones(N, 1, dtype=dtype, device=device)
    valid = torch.ones_like(code, dtype=torch.bool)
    table = g_buf = None
    if kernels is not None and uses_codebook_gram(N, K):
        table, scores = _codebook_gram(z, E, scores, sys_dtype)
    else:
        # Done with (the start is found): not held through the rounds as scores. The compiled
        # rounds write their gradients into it instead, round after round: fresh (N, K) buffers
        # were fresh pages, 12.6k page faults a forward at N = 1024, K = 4096 (0.87–1.0× the time without).
        if kernels is not None and scores is not None and scores.dtype == dtype and scores.is_contiguous():
            g_buf = scores
        elif block_buf is not None:  # (the gradients then come a block of rows at a time)
            g_buf = block_buf
        scores = None
    n_first = m - code.shape[1]
    if table is not None and frank_wolfe_start(problem, opts):
        n_first = 0  # the compiled rounds make each row's first W themselves
    if n_first > 0:
        entering = None
        if table is not None:  # the start's gradients row by row from EEᵀ: no (N, K) G
            entering = fused.table_entering(table, scores, extra, start, problem.start_bonus if extra is None else 0.0,
                                            u, code, sign, valid, min(n_first, K), signed=problem.signed)
        if entering is None:
            zq = E[start] if start is not None else z.new_zeros(N, D)
            entering = _entering_codes(zq, z, E, extra, start, code, sign, valid, min(n_first, K), problem, out=g_buf)
        _, top, top_sign = entering
        top_sign = torch.ones_like(top, dtype=dtype) if top_sign is None else top_sign
        code = torch.cat([code, top], dim=1)
        sign = torch.cat([sign, top_sign], dim=1)
        u = torch.cat([u, u.new_zeros(N, top.shape[1])], dim=1)
        valid = torch.cat([valid, torch.ones_like(top, dtype=torch.bool)], dim=1)
    m = code.shape[1]
    s = u > 0
    if kernels is not None:
        allowance = dropped_weight_allowance(sys_dtype, e_max_sq + sys_ridge)
        out = fused.attempt("round", lambda: _rounds_on_cpu(
            kernels, z, E, extra, start, dual_tol, problem, opts, sys_dtype, sys_ridge, code, sign, u, s, valid, n_add,
            diagnostics, certify_scale, table, scores, allowance, g_buf))
        if out is not None:
            return out + (table,)
    if max_support is None and fused.triton_takes(m, sys_dtype, device):
        out = _rounds_on_triton(z, E, extra, start, dual_tol, problem, opts, sys_dtype, sys_ridge, code, sign, u, s,
                                valid, n_add, e_max, e_max_sq, spread, diagnostics)
        if out is not None:
            return out + (None,)
    # Where round 1 starts again if it ran in the wrong precision (only float32 inputs can).
    first = (code, sign, u.clone(), s.clone(), valid, m) if e_max_sq is None and dtype == torch.float32 else None
    gram_cache = fused.GramCache.within(N, K, sys_dtype, dtype)

    converged = torch.zeros(N, dtype=torch.bool, device=device)
    broken = torch.zeros(N, dtype=torch.bool, device=device)
    residual = torch.full((N,), float("inf"), dtype=dtype, device=device)
    inner_total = 0
    rounds = 0
    rows = None  # rows still uncertified (None: all of them)
    all_finished = False
    allowance = None  # the verdict's on degenerate faces (verdict_tol), made once for the systems' dtype

    def take(t):
        return t if rows is None else t[rows]

    for rounds in range(1, opts.max_rounds + 1):
        cr, sgr, ur, sr, vr, zr = take(code), take(sign), take(u), take(s), take(valid), take(z)
        extra_r = None if extra is None else take(extra)
        start_r = None if start is None else take(start)
        tol_r = take(dual_tol)
        res, zq = _solve_on_w(E, cr, sgr, zr, extra_r, start_r, ur, sr, vr, tol_r, problem, opts, sys_dtype,
                              sys_ridge, max_support, gram_cache, rows)
        ur, sr, nu = res.weights.to(dtype), res.support, res.nu.to(dtype)
        worst, worst_code, new_sign = _entering_codes(zq, zr, E, extra_r, start_r, cr, sgr, vr, n_add, problem)
        violation = worst - alpha - nu.unsqueeze(1)
        if allowance is None:
            allowance = verdict_allowance(sys_dtype, e_max, e_max_sq, sys_ridge, dual_tol)
        violating = violation > verdict_tol(tol_r, res.residual, allowance).unsqueeze(1)
        conv_r = res.converged & ~violating[:, 0]
        res_r = torch.maximum(violation[:, 0].clamp_min(0), res.residual) / take(scale)
        if rows is None:
            u, s, converged, residual, broken = ur, sr, conv_r, res_r, res.broken
        else:
            u[rows], s[rows], converged[rows], residual[rows], broken[rows] = ur, sr, conv_r, res_r, res.broken
        finished = converged | broken  # a broken row stops; the certificate will flag it
        # The round's one host sync: how many rows are left, did some row fill every entry slot,
        # and how wide must W grow?
        # (The fused solve's iteration count is a tensor: it is read here too, not by a sync of its own.)
        fused_count = torch.is_tensor(res.iterations)
        n_support = sr.sum(1)
        counts = [(~finished).sum(), violating[:, -1].any(), (n_support + violating.sum(1)).max()]
        counts += [res.iterations] if fused_count else []
        late = _unread(e_max, spread) if e_max_sq is None else []
        counts = torch.stack([c.to(torch.float64) for c in counts + late]).tolist()  # exact below 2⁵³
        n_left, saturated, need = (int(c) for c in counts[:3])
        inner_total += int(counts[3]) if fused_count else res.iterations
        if e_max_sq is None:
            e_max_sq, spread = _read(counts[len(counts) - len(late):])
            wanted = system_dtype(dtype, problem.ridge, e_max_sq, spread)
            if wanted != sys_dtype and first is not None and rounds < opts.max_rounds:
                sys_dtype = wanted
                code, sign, u, s, valid, m = first
                gram_cache = fused.GramCache.within(N, K, sys_dtype, dtype)
                rows = allowance = None
                continue
        all_finished = n_left == 0
        if all_finished or rounds == opts.max_rounds:
            break
        # Grow W: support slots first, then the violators, then the rest of the old W.
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
        new_sign = torch.ones_like(worst) if new_sign is None else new_sign
        cr, sgr, vr = put(cr, worst_code), put(sgr, new_sign), put(vr, torch.ones_like(violating))
        if rows is None:
            code, sign, u, s, valid = cr, sgr, ur, sr, vr
        else:
            code[rows], sign[rows], u[rows], s[rows], valid[rows] = cr, sgr, ur, sr, vr
        if opts.compact:
            # The unfinished rows, from the count already on the host: no nonzero (a second sync).
            rows = torch.argsort(finished.to(torch.int8), stable=True)[:n_left]
        if saturated and rounds >= GROW_AFTER_ROUNDS:
            # Large supports (inputs deep inside the hull, small λ) need many codes: examine twice
            # as many per round, so the rounds needed grow like log(support), not linearly. Not
            # earlier: the working set is as wide as its widest row, so early doubling costs
            # every row (measured: 23 → 30 slots, +25% time on a batch that finishes in 5 rounds).
            # (need − n_add: a support some row has at least, from the count already on the host.)
            n_add = more_per_round(n_add, K, D, opts, problem.simplex, need - n_add)

    if start is not None:
        diagnostics["nearest"] = start  # the simplex's start, p̃'s code: the certificate's too
    diagnostics.update(iterations=inner_total, rounds=rounds, working_set=m, support_size=s.sum(1),
                       broken_down=broken, systems=(sys_dtype, sys_ridge), finished=all_finished)
    return code, sign, u, s, None


def _rounds_on_triton(z, E, extra, start, dual_tol, problem: QPForm, opts: Options, sys_dtype, sys_ridge, code,
                      sign, u, s, valid, n_add: int, e_max, e_max_sq: Optional[float],
                      spread: Optional[torch.Tensor], diagnostics: dict):
    """The certificate rounds of :func:`_forward` on CUDA, three Triton launches a round
    (:mod:`~scq.solvers.engine.round_triton`) around its GEMM and top-k, the batch's state kept in
    place (W as wide as the widest row needs, in arrays of at least twice that capacity): the work
    on W reads the round's rows where they are (no gathers), the end of the round writes their next
    W and lists the rows left (no write-backs, no sort). The same steps, rounds and answers as the
    torch loop, with one host sync a round (its counts). Returns ``(code, sign, u, s)``, or ``None``
    where W outgrows the kernels or one fails: the torch loop then runs from round 0's W (``code``,
    ``sign``, ``u``, ``s``, ``valid``, which this loop leaves as they are)."""
    from . import round_triton
    from .triton_launch import MAX_SLOTS

    z, E = z.detach(), E.detach()
    extra = None if extra is None else extra.detach()
    (N, D), K = z.shape, E.shape[0]
    dtype, device = z.dtype, z.device
    E_t = E.transpose(0, 1)
    start_w = start if extra is None else None  # the codes that get the start bonus
    round_0 = (code, sign, u, s, valid)
    state, capacity, m = None, 0, code.shape[1]
    broken = torch.zeros(N, dtype=torch.bool, device=device)
    rows = None  # the round's rows (None: all of them)
    inner_total = rounds = 0
    all_finished = False
    allowance = None  # the verdict's on degenerate faces (verdict_tol), made once for the systems' dtype
    while rounds < opts.max_rounds:
        rounds += 1
        if m > MAX_SLOTS or m + n_add > round_triton.MAX_NEXT_WIDTH:
            return None
        if state is None or m + n_add > capacity:  # the end of the round lays out m + n_add slots
            width = 2 * max(capacity, m + n_add)  # (10 launches a growth: a few growths a solve)
            base = round_0 if state is None else state
            pad = lambda t, fill: torch.cat([t, torch.full((N, width - t.shape[1]), fill, dtype=t.dtype,
                                                           device=device)], 1)
            state = [pad(t, fill) for t, fill in zip(base, (0, 1, 0, False, False))]
            capacity = width
        w_code, w_sign, w_u, w_s, w_valid = (t[:, :m] for t in state)
        ran = fused.attempt("round", lambda: round_triton.work_on_w(
            E, w_code, w_sign, z, extra, start_w, w_u, w_s, w_valid, dual_tol, simplex=problem.simplex,
            ridge=sys_ridge, l1=problem.l1, bonus=problem.start_bonus, sys_dtype=sys_dtype, pg_iters=opts.pg_iters,
            max_iter=opts.max_inner, refine=refines(sys_dtype), rows=rows))
        if ran is None:
            return None
        res, diff = ran
        entering = _entering_on_triton(diff, E_t, w_code, w_sign, w_valid, extra, start_w, rows, n_add, problem)
        if entering is None:
            return None
        worst, worst_code, new_sign = entering
        if allowance is None:
            allowance = verdict_allowance(sys_dtype, e_max, e_max_sq, sys_ridge, dual_tol)
        ended = fused.attempt("end-of-round", lambda: round_triton.end_of_round(
            worst, worst_code, new_sign, res, dual_tol, allowance, *state, broken, rows, m, problem.l1))
        if ended is None:
            return None
        counts, next_rows = ended
        # The round's one host sync: rows left, did some row fill every entry slot, how wide must
        # W grow, the most active-set iterations (and, the first time without it, max‖e‖²).
        late = _unread(e_max, spread) if e_max_sq is None else []
        counts = torch.cat([counts.to(torch.float64)] + [c.to(torch.float64).reshape(1) for c in late]).tolist()
        n_left, saturated, need = (int(c) for c in counts[:3])
        inner_total += int(counts[3])
        if e_max_sq is None:
            e_max_sq, spread = _read(counts[len(counts) - len(late):])
            wanted = system_dtype(dtype, problem.ridge, e_max_sq, spread)
            if wanted != sys_dtype and dtype == torch.float32 and rounds < opts.max_rounds:
                # Round 1 again, from round 0's W, with float64 systems (as the torch loop).
                sys_dtype, state, capacity, m, rows, allowance = wanted, None, 0, code.shape[1], None, None
                broken.zero_()
                continue
        all_finished = n_left == 0
        if all_finished or rounds == opts.max_rounds:
            break
        m = max(m, need)
        if opts.compact:
            rows = next_rows[:n_left]
        if saturated and rounds >= GROW_AFTER_ROUNDS:
            n_add = more_per_round(n_add, K, D, opts, problem.simplex, need - n_add)  # see the torch loop
    code, sign, u, s = (t[:, :m] for t in state[:4])  # views of the state: no copies
    if start is not None:
        diagnostics["nearest"] = start
    diagnostics.update(iterations=inner_total, rounds=rounds, working_set=m, support_size=s.sum(1),
                       broken_down=broken, systems=(sys_dtype, sys_ridge), finished=all_finished)
    return code, sign, u, s


def _entering_on_triton(diff, E_t, code, sign, valid, extra, start_w, rows, n_add: int, problem: QPForm):
    """The round's entering codes on CUDA: G = (z_q − z)Eᵀ for the round's rows (``diff`` (n, D),
    row i the batch's ``rows[i]``, ``None``: row i), their scores in one launch and the top-k; a
    block of rows at a time past the block budget (:mod:`.blocks`). ``(worst, codes, signs or
    None)``, each (n, n_add), or ``None`` where the scores' kernel failed."""
    from . import round_triton

    n, K = diff.shape[0], E_t.shape[1]
    parts = []
    for b in blocks.row_blocks(n, K):
        whole = b.start == 0 and b.stop == n
        rows_b = rows if whole else (rows[b] if rows is not None else torch.arange(b.start, b.stop, device=diff.device))
        G = diff[b] @ E_t
        score = fused.attempt("entering-scores", lambda: round_triton.entering_scores(
            G, code, sign, valid, extra, start_w, bonus=problem.start_bonus, signed=problem.signed, rows=rows_b))
        if score is None:
            return None
        worst, worst_code = score.topk(n_add, dim=1)
        new_sign = None
        if problem.signed:
            at_rows = lambda t: t if t is None or rows_b is None else t[rows_b]
            new_sign = _entering_signs(G, worst_code, at_rows(extra), at_rows(start_w), problem.start_bonus)
        parts.append((worst, worst_code, new_sign))
    return parts[0] if len(parts) == 1 else blocks.cat_rows(parts)


def _rounds_on_cpu(k, z, E, extra, start, dual_tol, problem: QPForm, opts: Options, sys_dtype, sys_ridge, code, sign,
                   u, s, valid, n_add: int, diagnostics: dict, certify_scale: Optional[Callable[[], torch.Tensor]],
                   table: Optional[torch.Tensor], scores: Optional[torch.Tensor], allowance: float,
                   g_buf: Optional[torch.Tensor] = None):
    """The certificate rounds of :func:`_forward` as three compiled loops over the unfinished rows
    (``k``: :mod:`~scq.solvers.engine.cpu_kernels`), the state of every row kept in place: the
    work on W (``round_rows``), one GEMM for the gradients (none with the codebook's Gram matrix:
    :func:`uses_codebook_gram`), the entering codes and the round's verdict (``finish_rows``),
    the next W (``place_rows``). The same steps as the torch loop, without its ~60 small ops per
    round (gathers of the unfinished rows and their write-back, masks, sorts), which cost a third
    of a solve at N = 1024, D = 16.

    ``certify_scale`` (SCQ only; gives the certificate's scale (N,)): each row's SCQ certificate is
    measured in ``finish_rows`` from the G of its last round, put in ``diagnostics["certificate"]``: the front door's
    certificate without a GEMM and a pass over (N, K) of its own.

    ``table``, ``scores``: EEᵀ and ZEᵀ in the systems' dtype where :func:`uses_codebook_gram` (else
    ``None``): the rows' Gram matrices and the rounds' G are read from them, with no GEMM per round;
    a row then needs nothing of the others between rounds, and each runs its rounds to the end in
    one call (:func:`_rounds_row_by_row`, unless ``ROW_BY_ROW`` is off).

    ``allowance``: what the verdict lets codes outside W violate by on rows whose active set
    accepted a degenerate face (:func:`verdict_tol`).

    ``g_buf``: a buffer of K columns in the inputs' dtype each round's gradients are written into
    (N rows, or a block's past the block budget: the round then runs :func:`finish_rows` a block
    of rows at a time, :mod:`.blocks`), or ``None``: a new one a round."""
    z, E = z.detach(), E.detach()
    extra = None if extra is None else extra.detach()
    N, D = z.shape
    K = E.shape[0]
    dtype = z.dtype
    finfo = torch.finfo(sys_dtype)
    # NumPy views of everything the kernels read, taken once (W's again when it grows).
    E_sys, z_sys = E.to(sys_dtype).contiguous().numpy(), z.to(sys_dtype).contiguous().numpy()
    E_out = E.contiguous().numpy()
    extra_sys = (extra.to(sys_dtype) if extra is not None else torch.zeros(0, 0, dtype=sys_dtype)).contiguous().numpy()
    start_np = (start if extra is None and start is not None else torch.zeros(0, dtype=torch.long)).numpy()
    bonus = float(problem.start_bonus) if extra is None else 0.0
    tol = dual_tol.to(sys_dtype).contiguous().numpy()
    code, sign = code.contiguous(), sign.to(sys_dtype).contiguous()
    u, s, valid = u.contiguous(), s.contiguous(), valid.contiguous()
    w = [t.numpy() for t in (code, sign, u, s, valid)]
    broken = torch.zeros(N, dtype=torch.bool)
    certify = certify_scale is not None and problem.simplex and not problem.signed
    cert = np.full((4, N if certify else 0), np.nan)
    # (float64 either way: an empty float32 one compiled every kernel taking it a second time)
    cert_scale = (certify_scale().detach().to(torch.float64).contiguous() if certify
                  else torch.zeros(0, dtype=torch.float64)).numpy()
    cert_lam = float(problem.ridge) if certify else -1.0
    cache = fused.GramCache.within(N, K, sys_dtype, dtype)
    use_table = table is not None
    if use_table:  # no products to cache: an empty cache is passed through
        table_np, scores_np = table.contiguous().numpy(), scores.contiguous().numpy()
    else:
        table_np = scores_np = np.zeros((0, 0), dtype=E_sys.dtype)
    m = capacity = code.shape[1]  # W's width, and that of its arrays
    if use_table and ROW_BY_ROW:  # no GEMM between rounds: each row runs its rounds to the end in one call
        rounds, inner_total, all_finished, m, capacity, (code, sign, u, s) = _rounds_row_by_row(
            k, E_sys, E_out, table_np, scores_np, z_sys, extra_sys, start_np, bonus, problem, opts, sys_dtype,
            sys_ridge, (code, sign, u, s, valid), tol, broken, cert, cert_lam, cert_scale, n_add, allowance)
    else:
        rows = np.arange(N, dtype=np.int64)
        inner_total = 0
        all_finished = False
        rounds = 0
        for rounds in range(1, opts.max_rounds + 1):
            n = rows.shape[0]
            rows_t = torch.from_numpy(rows)
            nu, res = np.zeros(n, dtype=E_sys.dtype), np.zeros(n, dtype=E_sys.dtype)
            state = np.zeros(n, dtype=np.int32)
            zq = torch.zeros(0 if use_table else n, D, dtype=dtype)  # z_q only for the GEMM's G
            bounds = fused.row_ranges(n)
            # (the cache as wide as the widest row's W, m, not W's capacity: (N, m, m) products)
            cache.exchange(n, 0 if use_table else m, rows_t, lambda *cached: k.round_par(
                E_sys, E_out, table_np, scores_np, w[0], w[1], z_sys, extra_sys, start_np, bonus, float(problem.l1),
                float(sys_ridge), *cached, w[2], w[3], w[4], tol, int(opts.pg_iters), int(fused.FISTA_PATIENCE),
                bool(problem.simplex), int(opts.max_inner), drop_tolerance(sys_dtype), finfo.tiny, DEGENERATE_SLACK,
                refines(sys_dtype), nu, res, state,
                zq.numpy(), bounds))
            inner_total += int(state.max()) >> 2 if n else 0
            finished = np.zeros(n, dtype=np.bool_)
            new_code = np.zeros((n, n_add), dtype=np.int64)
            new_sign = np.ones((n, n_add), dtype=E_sys.dtype)
            violating = np.zeros((n, n_add), dtype=np.bool_)
            need = np.zeros(n, dtype=np.int64)
            # The round's gradients G (n, K), a block of rows at a time past the block budget
            # (:mod:`.blocks`): finish_rows reads row i of G with row i of its per-round arrays,
            # so each block gets their slices (views: it writes through them).
            for b in [slice(0, n)] if use_table else blocks.row_blocks(n, K):
                G = None  # the last block's G goes before this one's is made
                if use_table:  # finish_rows makes each row's G from EEᵀ
                    G = torch.zeros(0, K, dtype=sys_dtype)
                else:
                    z_b = z[b] if n == N else z.index_select(0, rows_t[b])
                    G = torch.matmul(zq[b] - z_b, E.transpose(0, 1),
                                     out=None if g_buf is None else g_buf[:b.stop - b.start])
                whole = b.stop - b.start == n
                k.finish_par(G.numpy(), table_np, scores_np, extra_sys, start_np, bonus, float(problem.l1),
                             bool(problem.signed), rows[b], w[0], w[1], w[4], w[3], nu[b], res[b], state[b], tol,
                             allowance, broken.numpy(), finished[b], new_code[b], new_sign[b], violating[b], need[b],
                             w[2], cert_lam, cert_scale, rounds == opts.max_rounds, cert,
                             bounds if whole else fused.row_ranges(b.stop - b.start))
            n_left = int(n - finished.sum())
            all_finished = n_left == 0
            if all_finished or rounds == opts.max_rounds:
                break
            wider = int(need.max())
            if wider > capacity:  # grow W: every row's support and violators must fit
                # Twice as wide at least, so that W is reallocated a few times, not every round (five
                # (N, m) copies each); the slots past m are not valid, and the kernels skip them.
                grown = min(max(wider, 2 * capacity), K * (2 if problem.signed else 1))
                pad = lambda t, fill: torch.cat([t, torch.full((N, grown - capacity), fill, dtype=t.dtype)], 1)
                code, sign, u, s, valid = pad(code, 0), pad(sign, 1), pad(u, 0), pad(s, False), pad(valid, False)
                w = [t.numpy() for t in (code, sign, u, s, valid)]
                capacity = grown
            m = max(m, wider)
            k.place_par(rows, *w, new_code, new_sign, violating, bounds)
            if opts.compact:
                rows = rows[~finished]
            if violating[:, -1].any() and rounds >= GROW_AFTER_ROUNDS:
                n_add = more_per_round(n_add, K, D, opts, problem.simplex, wider - n_add)  # see the torch loop

    if start is not None:
        diagnostics["nearest"] = start
    diagnostics.update(iterations=inner_total, rounds=rounds, working_set=m, support_size=s.sum(1),
                       broken_down=broken, systems=(sys_dtype, sys_ridge), finished=all_finished)
    if certify:
        diagnostics["certificate"] = tuple(torch.from_numpy(c).to(dtype) for c in cert)
    if capacity > m:
        code, sign, u, s = (t[:, :m].contiguous() for t in (code, sign, u, s))
    return code, sign.to(dtype), u, s


def _wider(a: np.ndarray, width: int, fill) -> np.ndarray:
    """``a`` (n, w) with columns of ``fill`` up to ``width``: np.pad's result at a tenth of its
    Python overhead (~0.1 ms a call, which a row outgrowing its arrays pays in every solve)."""
    out = np.full((a.shape[0], width), fill, dtype=a.dtype)
    out[:, :a.shape[1]] = a
    return out


def _rounds_row_by_row(k, E_sys, E_out, table_np, scores_np, z_sys, extra_sys, start_np, bonus: float, problem: QPForm,
                       opts: Options, sys_dtype: torch.dtype, sys_ridge: float, W, tol, broken, cert, cert_lam: float,
                       cert_scale, n_add: int, allowance: float):
    """The rounds of :func:`_rounds_on_cpu` where the codebook's Gram matrix gives every row's
    systems and gradients: each row's rounds back to back in one compiled call
    (:func:`~scq.solvers.engine.cpu_kernels.table_rounds_rows`), called again only for rows that
    outgrew W (after widening it). ``W``: (code, sign, u, s, valid), the first round's.
    Returns (rounds, iterations, all finished, W's width m, its arrays' width, (code, sign, u, s))."""
    code, sign, u, s, valid = W
    N, m = code.shape
    finfo = torch.finfo(sys_dtype)
    K_w = table_np.shape[0] * (2 if problem.signed else 1)
    K_t, D = table_np.shape[0], z_sys.shape[1]
    add_cap = more_per_round(K_t, K_t, D, opts, problem.simplex)  # the most a round examines
    # W's arrays start wide enough for a few rounds' entering codes, so that few rows outgrow them.
    fw_steps = opts.fw_steps if frank_wolfe_start(problem, opts) else 0
    capacity = min(K_w, max(4 * opts.working_set, frank_wolfe_width(opts) if fw_steps else 0))
    pad = lambda t, width, fill: torch.cat([t, torch.full((N, width - t.shape[1]), fill, dtype=t.dtype)], 1)
    widen = lambda W, width: tuple(pad(t, width, fill) for t, fill in zip(W, (0, 1, 0, False, False)))
    code, sign, u, s, valid = widen((code, sign, u, s, valid), capacity)
    row_rounds = np.zeros(N, dtype=np.int64)
    row_add = np.full(N, n_add, dtype=np.int64)
    row_iters = np.zeros(N, dtype=np.int64)
    row_state = np.zeros(N, dtype=np.int8)
    need = np.full(N, m, dtype=np.int64)
    # Entry slots for one doubling past the lasso's bound; rows that want more (SCQ's, or supports past
    # D + 1: more_per_round) stop for wider arrays, so that they are as wide as the widest row needs.
    entry_width = min(2 * more_per_round(K_t, K_t, D, opts, False), K_w)
    new_code = np.zeros((N, entry_width), dtype=np.int64)
    new_sign = np.ones((N, entry_width), dtype=E_sys.dtype)
    violating = np.zeros((N, entry_width), dtype=np.bool_)
    no_cache_gram, no_cache_code = np.zeros((0, 0), dtype=E_sys.dtype), np.zeros((0, 0), dtype=np.int64)
    rows = np.arange(N, dtype=np.int64)
    while rows.shape[0]:
        w = [t.numpy() for t in (code, sign, u, s, valid)]
        k.table_rounds_par(E_sys, E_out, table_np, scores_np, w[0], w[1], z_sys, extra_sys, start_np, bonus,
                           float(problem.l1), float(sys_ridge), bool(problem.signed), w[2], w[3], w[4], tol,
                           int(opts.pg_iters), int(fused.FISTA_PATIENCE), bool(problem.simplex), int(opts.max_inner),
                           drop_tolerance(sys_dtype), finfo.tiny, DEGENERATE_SLACK, allowance, refines(sys_dtype),
                           cert_lam, cert_scale, cert, int(opts.max_rounds), GROW_AFTER_ROUNDS, add_cap,
                           no_cache_gram, no_cache_code, rows, row_rounds, row_add, row_iters, row_state,
                           broken.numpy(), new_code, new_sign, violating, need, fw_steps, FW_BLOCKS,
                           frank_wolfe_width(opts), fused.row_ranges(rows.shape[0]))
        outgrown = rows[row_state[rows] == k.ROW_OUTGROWN]
        if outgrown.shape[0]:  # widen W as the batch loop does: twice as wide at least
            if capacity >= K_w:  # (cannot happen: a row's support and violators are distinct codes)
                raise RuntimeError(f"scq: the working set cannot widen past {K_w} slots")
            capacity = min(max(int(need[outgrown].max()), 2 * capacity), K_w)
            code, sign, u, s, valid = widen((code, sign, u, s, valid), capacity)
        wider = rows[row_state[rows] == k.ROW_WIDER_ENTRY]
        if wider.shape[0]:  # supports past D + 1 (more_per_round): wider entry arrays, the waiting entries kept
            width = int(row_add[wider].max())
            new_code, new_sign, violating = (_wider(a, width, fill)
                                             for a, fill in ((new_code, 0), (new_sign, 1), (violating, False)))
        rows = np.sort(np.concatenate([outgrown, wider]))
    all_finished = bool((row_state == k.ROW_DONE).all())
    return (int(row_rounds.max(initial=0)), int(row_iters.max(initial=0)), all_finished, int(need.max(initial=m)),
            capacity, (code, sign, u, s))


class WorkingSetFunction(torch.autograd.Function):
    """(u, code, sign): the solution u ≥ 0 on the signed codes sign·E[code] (see the module doc).

    Backward (docs/math.md §4–5), with v = M g on the support (M the inverse of the KKT system
    restricted to S, including the 1ᵀu = 1 row for the simplex) and C the signed code rows:
    ∂z = VC, ∂(linear extra) = V, ∂C = Vᵀ(Z − UC) − Uᵀ(VC), scattered back to E with the signs.

    Twice differentiable (a gradient penalty, a Hessian-vector product: ``create_graph=True``):
    the support is locally constant, so the backward's formula, written in torch ops of z, E, the
    saved u and the incoming gradient, is what autograd differentiates again. That path runs only
    where a backward builds a graph; every other backward takes the compiled kernel.
    """

    @staticmethod
    def forward(z, E, extra, problem, opts, diagnostics, e_max_sq, certify_scale):
        code, sign, u, s, table = _forward(z, E, extra, problem, opts, diagnostics.filled, e_max_sq, certify_scale)
        # The support and EEᵀ are outputs too, for setup_context (it sees only inputs and outputs).
        return u, code, sign, s, table

    @staticmethod
    def setup_context(ctx, inputs, output):
        # (Forward and context apart, so that torch.func's grad and vjp can run it.)
        z, E, _, problem, _, diagnostics, _, _ = inputs
        u, code, sign, s, table = output
        # The backward runs as the forward did (dispatch.solve decided; the load may change since).
        ctx.one_thread = z.device.type == "cpu" and torch.get_num_threads() == 1
        ctx.save_for_backward(z, E, code, sign, u, s)
        ctx.problem = problem
        ctx.table = table  # EEᵀ where the rounds had it (else None): the backward reads its products too
        ctx.systems = diagnostics.filled["systems"]  # (dtype, ridge) of the forward's support systems
        ctx.mark_non_differentiable(*(t for t in (code, sign, s, table) if t is not None))
        ctx.set_materialize_grads(False)  # no zero gradients made for the outputs that take none

    @staticmethod
    def backward(ctx, grad_u, _grad_code, _grad_sign, _grad_s, _grad_table):
        if grad_u is None:  # (the weights reached no loss)
            return (None,) * 8
        with one_thread(ctx.one_thread):
            return WorkingSetFunction._backward(ctx, grad_u)

    @staticmethod
    def _backward(ctx, grad_u):
        z, E, code, sign, u, s = ctx.saved_tensors
        problem = ctx.problem
        sys_dtype, sys_ridge = ctx.systems
        need_z, need_E, need_B = ctx.needs_input_grad[:3]
        # Grad mode is on in a backward only under create_graph=True: then the torch ops below.
        compiled = None if torch.is_grad_enabled() else fused.backward(
            z, E, code, sign, u, s, grad_u, ridge=sys_ridge, simplex=problem.simplex, signed=problem.signed,
            need_E=need_E, sys_dtype=sys_dtype, table=ctx.table)
        if compiled is not None:  # the CPU: per row, on the support only, no (N, m, D) tensor
            v, VC, grad_E = compiled
            v = v.to(z.dtype)
        else:
            C = _code_rows(E, code, sign, problem.signed)
            L, _ = masked_cholesky(_gram(C.to(sys_dtype), sys_ridge), s)  # the forward's last support: factorable
            v = support_vjp(L, grad_u.to(sys_dtype), s, simplex=problem.simplex).to(C.dtype)
            VC = torch.bmm(v.unsqueeze(1), C).squeeze(1)
            grad_E = None
            if need_E:
                zq = torch.bmm(u.unsqueeze(1), C).squeeze(1)
                U = v.unsqueeze(-1) * (z - zq).unsqueeze(1) - u.unsqueeze(-1) * VC.unsqueeze(1)
                if problem.signed:
                    U = U * sign.unsqueeze(-1)
                grad_E = torch.zeros_like(E).index_add_(0, code.reshape(-1), U.reshape(-1, U.shape[-1]))
        grad_B = None
        if need_B:
            # b_j = σ_j (Ez + extra)_{k_j}
            grad_B = torch.zeros(z.shape[0], E.shape[0], dtype=z.dtype, device=z.device)
            grad_B.scatter_add_(1, code, sign * v)
        return VC if need_z else None, grad_E if need_E else None, grad_B, None, None, None, None, None


def solve(z: torch.Tensor, E: torch.Tensor, extra: Optional[torch.Tensor], problem: QPForm, opts: Options,
          diagnostics: dict, e_max_sq: Optional[float] = None,
          certify_scale: Optional[Callable[[], torch.Tensor]] = None):
    """Run the engine on b = Ez + ``extra`` (N, K) (``None``: see ``QPForm.start_bonus``).
    ``e_max_sq``: max‖e‖², where the caller has read it already (else read with round 1's counts).
    ``certify_scale``: for SCQ, gives the certificate's scale (N,), called only where the rounds run
    compiled (the CPU): they then measure the SCQ certificate of the answer on their own gradients and put its four
    (N,) tensors (residual, gap, error bounds; see :mod:`scq.solvers.certificate`) in
    ``diagnostics["certificate"]``.

    Returns ``(u, code, sign)``, each (N, m): the solution is Σ_j u_j·sign_j·e_{code_j}.
    Differentiable w.r.t. ``z``, ``E`` and ``extra`` (through ``u``). Fills ``diagnostics`` with
    the engine's counters (iterations, rounds, working-set size, support sizes, broken-down rows).
    """
    box = _DiagnosticsBox(diagnostics)
    return WorkingSetFunction.apply(z, E, extra, problem, opts, box, e_max_sq, certify_scale)[:3]


class _DiagnosticsBox:
    """The dict the forward fills, passed to the Function in a box: torch.func would pass a copy of
    a dict (a pytree) and the caller would never see the counters."""

    def __init__(self, filled: dict):
        self.filled = filled
