r"""The engine's Triton kernels (CUDA), and the pieces they share.

Imported only where Triton is installed, by the launchers that use them
(:mod:`~scq.solvers.engine.fista_triton`, :mod:`~scq.solvers.engine.active_set_triton`,
:mod:`~scq.solvers.engine.round_triton`); everything here runs one program per row, the row's
m×m system in registers (m ≤ ``triton_launch.MAX_SLOTS``, padded to BLOCK). The pieces are
``@triton.jit`` functions at module level (Triton looks a called function up among the caller's
module globals), each the same arithmetic as a torch function the tests compare it with:

- :func:`eliminate`: H_SS⁻¹ rhs and H_SS⁻¹ 1 by Gauss–Jordan (identity off S);
- :func:`fista_steps`: :func:`scq.solvers.engine.fista.fista_torch`'s steps;
- :func:`active_set_solve`: :func:`scq.solvers.engine.active_set._iterate` until the row is done;
- :func:`refine_on_support`: :func:`scq.solvers.engine.working_set._refine`.

Flags are int32 0/1 (scalars and vectors alike): the interpreter cannot mix a scalar bool with a
vector bool in & and |.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def eliminate(Hn, sf, rhs, m, i, eye):
    """H_SS⁻¹rhs and H_SS⁻¹1_S (0 off S) by Gauss–Jordan on H restricted to S (``sf`` 0/1),
    identity off it, without pivoting (as Cholesky); and 1 where a pivot was not positive (H_SS
    not numerically positive definite)."""
    A = Hn * (sf[:, None] * sf[None, :]) + tl.where(eye, 1.0 - sf[:, None], 0.0)
    r1 = rhs * sf
    r2 = sf
    failed = m * 0
    # A loop, not unrolled: unrolling BLOCK = 64 steps of 64×64 tile ops made ~5 MB of PTX (8 MB in
    # float64) and a compile of ~1 min (4 min in float64) at the first call with m > 32; and only
    # the m live slots need a step (the padding is identity).
    for k in range(0, m):
        col = tl.sum(tl.where(i[None, :] == k, A, 0.0), 1)
        rowk = tl.sum(tl.where(i[:, None] == k, A, 0.0), 0)
        piv = tl.sum(tl.where(i == k, col, 0.0), 0)
        failed = failed | (piv <= 0.0).to(tl.int32)
        f = tl.where(i == k, 0.0, col / tl.where(piv > 0.0, piv, 1.0))
        A = A - f[:, None] * rowk[None, :]
        r1 = r1 - f * tl.sum(tl.where(i == k, r1, 0.0), 0)
        r2 = r2 - f * tl.sum(tl.where(i == k, r2, 0.0), 0)
    diag = tl.sum(tl.where(eye, A, 0.0), 1)
    diag = tl.where(diag > 0.0, diag, 1.0)
    return r1 / diag, r2 / diag, failed


@triton.jit
def fista_steps(Hn, bn, u, ok, t, mom, i, N_ITER: tl.constexpr, SIMPLEX: tl.constexpr):
    """``N_ITER`` steps u ← Π_C(y − t(H y − b)), y ← u + β(u − u_prev) from ``u``; ``ok`` the
    valid slots (bool). Π_C: the simplex projection (sort, cumulative sum, threshold: the formula of
    :func:`scq.simplex.simplex_threshold`'s ``"sort"``) or the orthant clamp."""
    y = u
    rank = (i + 1).to(u.dtype)
    for _ in range(N_ITER):
        grad = tl.sum(Hn * y[None, :], axis=1) - bn
        v = y - t * grad
        if SIMPLEX:
            # Invalid slots far below any threshold, as the torch path does.
            v = tl.where(ok, v, -1e30)
            srt = tl.sort(v, 0, descending=True)
            cs = tl.cumsum(srt, 0)
            # Support size k: the last j with srt_j − (cs_j − 1)/j > 0.
            k = tl.max(tl.where(srt * rank > cs - 1.0, i + 1, 0), 0)
            cs_k = tl.sum(tl.where(i + 1 == k, cs, 0.0), 0)
            tau = (cs_k - 1.0) / k.to(u.dtype)
            new = tl.maximum(v - tau, 0.0)
        else:
            new = tl.where(ok, tl.maximum(v, 0.0), 0.0)
        y = new + mom * (new - u)
        u = new
    return u


@triton.jit
def active_set_solve(Hn, bn, p, s, ok, dual_tol, m, max_iter, max_support, drop_tol, tiny, slack, i, eye,
                     SIMPLEX: tl.constexpr, CAP_SUPPORT: tl.constexpr):
    """The active-set iterations of :func:`scq.solvers.engine.active_set._iterate` on one row until
    it is done (or ``max_iter``), from the feasible ``p`` with support ``s`` (int32 0/1), ``ok``
    the valid slots (int32 0/1). Returns (p, s, ν, residual, done, broken, iterations)."""
    zero = tl.sum(p * 0.0, 0)  # a scalar of p's dtype
    nu = zero
    residual = zero
    izero = m * 0  # a scalar int32
    done = izero
    broken = izero
    single_add = izero
    progress = izero + 1
    iters = izero
    h_diag = tl.sum(tl.where(eye, Hn, 0.0), 1)  # H_kk: what a dropped weight's multiplier is measured by
    while (iters < max_iter) & (done == 0):
        # 1. Equality solve on S by Gauss–Jordan (identity off S).
        x, y, failed = eliminate(Hn, s.to(p.dtype), bn, m, i, eye)
        if SIMPLEX:
            nu_eq = (tl.sum(x, 0) - 1.0) / tl.sum(y, 0)
            p_eq = x - nu_eq * y
        else:
            nu_eq = zero
            p_eq = x
        # 2. Ratio test: the largest step ≤ 1 towards p_eq that keeps p ≥ 0.
        blocking = s & (p_eq < -drop_tol).to(tl.int32)
        ratio = tl.where(blocking != 0, p / tl.maximum(p - p_eq, tiny), 2.0)
        alpha = tl.minimum(tl.min(ratio, 0), 1.0)
        at_opt = (alpha >= 1.0).to(tl.int32)
        p_new = tl.where(at_opt != 0, p_eq, p + alpha * (p_eq - p))
        moved = (alpha > 0.0).to(tl.int32) & (tl.max(tl.abs(p_eq - p), 0) > drop_tol).to(tl.int32)
        progress_new = progress | moved
        hit = blocking & (ratio <= alpha).to(tl.int32)
        gone = at_opt & (p_new <= drop_tol).to(tl.int32)
        s_new = s & (1 - hit) & (1 - gone)
        p_new = tl.where(s_new != 0, tl.maximum(p_new, 0.0), 0.0)
        # 3. Multipliers and the codes to add.
        mu = tl.sum(Hn * p_new[None, :], 1) - bn + nu_eq
        violation = tl.where((ok & (1 - s_new)) != 0, -mu, 0.0)
        worst = tl.max(violation, 0)
        worst_slot = tl.argmax(violation, 0)
        has_violation = (worst > dual_tol).to(tl.int32)
        stalled = at_opt & has_violation & (1 - progress_new)
        h_worst = tl.sum(tl.where(i == worst_slot, h_diag, 0.0), 0)
        degenerate = stalled & single_add & (worst <= tl.maximum(slack * dual_tol, 2 * drop_tol * h_worst)).to(tl.int32)
        finished = at_opt & ((1 - has_violation) | degenerate) & (1 - failed)
        single_add_new = single_add | stalled
        adds = (violation > dual_tol).to(tl.int32) & at_opt
        one_add = (i == worst_slot).to(tl.int32) & adds
        if CAP_SUPPORT:
            crowded = (tl.sum(s_new, 0) + tl.sum(adds, 0) > max_support).to(tl.int32)
            adds = tl.where(crowded != 0, one_add, adds)
        adds = tl.where(single_add_new != 0, one_add, adds)
        s_new = s_new | adds
        progress_new = progress_new & (tl.max(adds, 0) == 0).to(tl.int32)
        # A failed row keeps its last feasible iterate and stops, flagged.
        broken = broken | failed
        keep = failed != 0
        p = tl.where(keep, p, p_new)
        s = tl.where(keep, s, s_new)
        nu = tl.where(keep, nu, nu_eq)
        residual = tl.where(keep, residual, tl.where(finished != 0, tl.maximum(worst, 0.0), residual))
        progress = tl.where(keep, progress, progress_new)
        single_add = tl.where(keep, single_add, single_add_new)
        done = done | finished | failed
        iters += 1
    return p, s, nu, residual, done, broken, iters


@triton.jit
def refine_on_support(Hn, p, nu, finished, E, codes, sg, z_row, lin, D, ridge_hi, ridge_lo, s_en, m, i, eye,
                      SIMPLEX: tl.constexpr, BLOCK_D: tl.constexpr):
    """One step of iterative refinement of a finished row (``finished`` int32) on its support
    S = {p > 0}: r_S = b_S − H_SS p_S − ν1 summed in float64 as C(z − Cᵀp) + lin − ρp − ν from the
    codes (``codes``, signs ``sg`` float64 and ``lin`` float64 per slot; ``z_row`` the row's
    pointer), the correction by :func:`eliminate` with H, its sum 1 − 1ᵀp on the simplex. Kept only
    where every weight of S stays positive. Returns (p, ν)."""
    support = (p > 0.0).to(tl.int32) & finished
    sf64 = support.to(tl.float64)
    p64 = p.to(tl.float64) * sf64
    r = p64 * 0.0
    for d0 in range(0, D, BLOCK_D):  # z − Cᵀp and its products with the codes, a tile of D at a time
        dd = d0 + tl.arange(0, BLOCK_D)
        tile = tl.load(E + codes[:, None] * s_en + dd[None, :], mask=(support != 0)[:, None] & (dd < D)[None, :],
                       other=0.0).to(tl.float64)
        v = tl.load(z_row + dd, mask=dd < D, other=0.0).to(tl.float64)
        v = v - tl.sum((p64 * sg)[:, None] * tile, 0)
        r += tl.sum(tile * v[None, :], 1)
    ridge = (tl.sum(r, 0) * 0.0 + ridge_hi) + ridge_lo  # ρ in float64, from its two float32 parts
    r = sg * r + lin - ridge * p64
    if SIMPLEX:
        r = r - nu.to(tl.float64)
    dx, dy, bad = eliminate(Hn, support.to(p.dtype), (r * sf64).to(p.dtype), m, i, eye)
    step = dx.to(tl.float64)
    d_nu = tl.sum(step, 0) * 0.0
    if SIMPLEX:  # the correction's sum is the constraint's residual 1 − 1ᵀp
        ones = tl.sum(dy.to(tl.float64), 0)  # 0 only without a support: then nothing is taken below
        d_nu = (tl.sum(step, 0) - (1.0 - tl.sum(p64, 0))) / tl.where(ones != 0.0, ones, 1.0)
        step = step - d_nu * dy.to(tl.float64)
    refined = p64 + step * sf64
    positive = tl.min(tl.where(support != 0, refined, 1.0), 0) > 0.0
    take = (tl.max(support, 0) > 0).to(tl.int32) & (bad == 0).to(tl.int32) & positive.to(tl.int32)
    p = tl.where((support & take) != 0, refined.to(p.dtype), p)
    nu = tl.where(take != 0, (nu.to(tl.float64) + d_nu).to(p.dtype), nu)
    return p, nu


@triton.jit
def load_system(H, b, row, m, s_hn, s_hi, s_hj, s_bn, BLOCK: tl.constexpr):
    """Row ``row``'s slots i (BLOCK), which are inside m, its H (BLOCK×BLOCK) and b, 0-padded."""
    i = tl.arange(0, BLOCK)
    inside = i < m
    # (64-bit: the (N, m, m) batch passes 2³¹ elements at N = 524288 with 64 slots)
    Hn = tl.load(H + row.to(tl.int64) * s_hn + i[:, None] * s_hi + i[None, :] * s_hj,
                 mask=inside[:, None] & inside[None, :], other=0.0)
    return i, inside, Hn, tl.load(b + row * s_bn + i, mask=inside, other=0.0)


@triton.jit
def fista_rows(H, b, u0, valid, step, beta, out, m,
               s_hn, s_hi, s_hj, s_bn, s_un, s_vn, s_on,
               N_ITER: tl.constexpr, SIMPLEX: tl.constexpr, BLOCK: tl.constexpr):
    """:func:`fista_steps` for row ``program_id`` of a batch of systems (see
    :mod:`~scq.solvers.engine.fista_triton`)."""
    row = tl.program_id(0)
    i, inside, Hn, bn = load_system(H, b, row, m, s_hn, s_hi, s_hj, s_bn, BLOCK)
    u = tl.load(u0 + row * s_un + i, mask=inside, other=0.0)
    ok = (tl.load(valid + row * s_vn + i, mask=inside, other=0) != 0) & inside
    u = fista_steps(Hn, bn, u, ok, tl.load(step + row), tl.load(beta + row), i, N_ITER, SIMPLEX)
    tl.store(out + row * s_on + i, u, mask=inside)


@triton.jit
def active_set_rows(H, b, p0, s0, valid, tol, out_p, out_s, out_nu, out_state, out_res, m, max_iter,
                    max_support, drop_tol, tiny, slack,
                    s_hn, s_hi, s_hj, s_bn, s_pn, s_sn, s_vn, s_op, s_os,
                    E, code, sign, z, lin, D, ridge_hi, ridge_lo, s_en, s_cn, s_gn, s_zn, s_ln,
                    SIMPLEX: tl.constexpr, CAP_SUPPORT: tl.constexpr, BLOCK: tl.constexpr,
                    REFINE: tl.constexpr, BLOCK_D: tl.constexpr):
    """:func:`active_set_solve` (then, with ``REFINE``, :func:`refine_on_support`) for row
    ``program_id`` of a batch of systems (see :mod:`~scq.solvers.engine.active_set_triton`)."""
    row = tl.program_id(0)
    i, inside, Hn, bn = load_system(H, b, row, m, s_hn, s_hi, s_hj, s_bn, BLOCK)
    p = tl.load(p0 + row * s_pn + i, mask=inside, other=0.0)
    s = tl.load(s0 + row * s_sn + i, mask=inside, other=0).to(tl.int32)
    ok = tl.load(valid + row * s_vn + i, mask=inside, other=0).to(tl.int32)
    eye = i[:, None] == i[None, :]
    p, s, nu, residual, done, broken, iters = active_set_solve(
        Hn, bn, p, s, ok, tl.load(tol + row), m, max_iter, max_support, drop_tol, tiny, slack, i, eye, SIMPLEX,
        CAP_SUPPORT)
    if REFINE:
        codes = tl.load(code + row * s_cn + i, mask=inside, other=0)
        sg = tl.load(sign + row * s_gn + i, mask=inside, other=0.0).to(tl.float64)
        lin_row = tl.load(lin + row * s_ln + i, mask=inside, other=0.0).to(tl.float64)
        p, nu = refine_on_support(Hn, p, nu, done & (1 - broken), E, codes, sg, z + row * s_zn, lin_row, D, ridge_hi,
                                  ridge_lo, s_en, m, i, eye, SIMPLEX, BLOCK_D)
    tl.store(out_p + row * s_op + i, p, mask=inside)
    tl.store(out_s + row * s_os + i, s.to(tl.int8), mask=inside)
    tl.store(out_nu + row, nu)
    tl.store(out_res + row, residual)
    # state: bit 0 done, bit 1 broken; the rest: iterations run
    tl.store(out_state + row, done + 2 * broken + 4 * iters)


@triton.jit
def _two_part(zero, hi, lo):
    """hi + lo in ``zero``'s dtype: a float64 scalar passed as two float32 ones (Triton passes
    Python floats as float32), exact in a float64 kernel."""
    return (zero + hi) + lo


@triton.jit
def round_rows(E, z, code, sign, u_in, s_in, valid, extra, start, tol, rows,
               out_u, out_s, out_nu, out_converged, out_broken, iterations, out_res, out_diff,
               m, D, max_iter, drop_tol, tiny, slack, ridge_hi, ridge_lo, bonus_hi, bonus_lo, l1_hi, l1_lo,
               s_en, s_zn, s_cn, s_gn, s_un, s_sn, s_vn, s_xn, s_ou, s_os, s_oz,
               N_ITER: tl.constexpr, SIMPLEX: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_START: tl.constexpr,
               REFINE: tl.constexpr, SYS_DTYPE: tl.constexpr, BLOCK: tl.constexpr, GRAM_D: tl.constexpr,
               BLOCK_D: tl.constexpr, HAS_ROWS: tl.constexpr):
    """A certificate round's whole work on W for the round's row ``program_id`` (see
    :mod:`~scq.solvers.engine.round_triton`), the batch's row ``rows[program_id]`` (``HAS_ROWS``;
    else the same): H = CCᵀ + ρI and b = Cz + linear from the codes, FISTA's warm start, the active
    set, the refinement (``REFINE``) and z_q − z (z_q = Σ_j u_j σ_j e_j) for the round's GEMM; the
    row's verdict on W as int8 flags (converged: done and not broken down), the most active-set
    iterations of the round by an atomic max into ``iterations`` (int64). The inputs are read at
    the batch's row, the outputs written at the round's."""
    out = tl.program_id(0)
    row = tl.load(rows + out) if HAS_ROWS else out
    i = tl.arange(0, BLOCK)
    inside = i < m
    eye = i[:, None] == i[None, :]
    codes = tl.load(code + row * s_cn + i, mask=inside, other=0)
    sg = tl.load(sign + row * s_gn + i, mask=inside, other=0.0)
    zero = tl.zeros([BLOCK], SYS_DTYPE)
    # 1. The systems, from the codes (every slot's, as the torch path's gather): H = CCᵀ + ρI, Cz.
    H = tl.zeros([BLOCK, BLOCK], SYS_DTYPE)
    cz = zero
    for d0 in range(0, D, GRAM_D):
        dd = d0 + tl.arange(0, GRAM_D)
        tile = tl.load(E + codes[:, None] * s_en + dd[None, :], mask=inside[:, None] & (dd < D)[None, :],
                       other=0.0).to(SYS_DTYPE)
        H += tl.dot(tile, tl.trans(tile), input_precision="ieee")
        zt = tl.load(z + row * s_zn + dd, mask=dd < D, other=0.0).to(SYS_DTYPE)
        cz += tl.sum(tile * zt[None, :], 1)
    sgs = sg.to(SYS_DTYPE)
    ridge = _two_part(tl.sum(zero, 0), ridge_hi, ridge_lo)
    H = H * (sgs[:, None] * sgs[None, :]) + tl.where(eye, ridge, 0.0)
    # The linear term in the inputs' dtype, as working_set._linear_on_w makes it.
    scalar_in = tl.sum(sg * 0.0, 0)  # a 0 of the inputs' dtype
    lin = sg * 0.0 - _two_part(scalar_in, l1_hi, l1_lo)
    if HAS_EXTRA:
        lin += sg * tl.load(extra + row.to(tl.int64) * s_xn + codes, mask=inside, other=0.0)  # (N, K): 64-bit
    if HAS_START:
        lin += tl.where(codes == tl.load(start + row), _two_part(scalar_in, bonus_hi, bonus_lo), 0.0)
    b = cz * sgs + lin.to(SYS_DTYPE)
    u = tl.load(u_in + row * s_un + i, mask=inside, other=0.0).to(SYS_DTYPE)
    s = tl.load(s_in + row * s_sn + i, mask=inside, other=0).to(tl.int32)
    ok = tl.load(valid + row * s_vn + i, mask=inside, other=0).to(tl.int32)
    # 2. FISTA's warm start (step 1/L, L the Gershgorin bound; momentum (√L − √ρ)/(√L + √ρ)).
    if N_ITER > 0:
        L = tl.max(tl.sum(tl.abs(H), 1), 0)
        root_L = tl.sqrt(L)
        root_rho = tl.sqrt(ridge)
        u = fista_steps(H, b, u, ok != 0, 1.0 / L, (root_L - root_rho) / (root_L + root_rho), i, N_ITER, SIMPLEX)
        s = (u > 0.0).to(tl.int32)
    # 3. The active set, then the refinement.
    p, s, nu, residual, done, broken, iters = active_set_solve(
        H, b, u, s, ok, tl.load(tol + row), m, max_iter, 0, drop_tol, tiny, slack, i, eye, SIMPLEX, False)
    if REFINE:
        p, nu = refine_on_support(H, p, nu, done & (1 - broken), E, codes, sg.to(tl.float64), z + row * s_zn,
                                  lin.to(tl.float64), D, ridge_hi, ridge_lo, s_en, m, i, eye, SIMPLEX, BLOCK_D)
    tl.store(out_u + out * s_ou + i, p, mask=inside)
    tl.store(out_s + out * s_os + i, s.to(tl.int8), mask=inside)
    tl.store(out_nu + out, nu)
    tl.store(out_res + out, residual)
    tl.store(out_converged + out, (done & (1 - broken)).to(tl.int8))
    tl.store(out_broken + out, broken.to(tl.int8))
    tl.atomic_max(iterations, iters.to(tl.int64))
    # 4. z_q − z, z_q = Σ_j u_j σ_j e_j in the inputs' dtype (the weights as returned), a tile of D
    # at a time.
    w = p.to(sg.dtype) * sg
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        tile = tl.load(E + codes[:, None] * s_en + dd[None, :], mask=(w != 0.0)[:, None] & (dd < D)[None, :],
                       other=0.0)
        zt = tl.load(z + row * s_zn + dd, mask=dd < D, other=0.0)
        tl.store(out_diff + out * s_oz + dd, tl.sum(w[:, None] * tile, 0) - zt, mask=dd < D)


@triton.jit
def end_of_round_rows(worst, worst_code, new_sign, nu, tol, residual, allowance, conv_in, broken_in, weights, support,
                      iterations, rows,
                      code, sign, u, s, valid, broken, next_rows, counts, m, n_add, width, alpha,
                      s_wn, s_pn, s_qn, s_cn, s_gn, s_un, s_sn, s_vn,
                      BLOCK: tl.constexpr, BLOCK_ADD: tl.constexpr, BLOCK_W: tl.constexpr, HAS_SIGN: tl.constexpr,
                      HAS_ROWS: tl.constexpr):
    """The end of a certificate round for the round's row ``program_id``, the batch's row
    ``rows[program_id]`` (``HAS_ROWS``; else the same; see
    :func:`scq.solvers.engine.round_triton.end_of_round`): the row's verdict from its ``n_add`` most
    violating codes outside W (``worst`` scores, descending) and the round kernel's (``conv_in``,
    ``broken_in``, ``nu``, ``residual``: where it is above the row's tolerance, the active set
    accepted a degenerate face and the verdict's tolerance is at least ``allowance[0]``,
    ``working_set.verdict_tol``), the round's counts (atomics into ``counts``: unfinished rows, rows
    whose last entry slot violates, the widest W needed, the most active-set iterations), the row
    appended to ``next_rows`` if unfinished, and its next W written over the old one in place
    (``width`` slots: the support first, then the violators, then the rest of the old W, then empty
    slots), made by gathering each new slot's source; the weights and support from the round's
    outputs (``weights``, ``support``), the rest from W itself."""
    out = tl.program_id(0)
    row = tl.load(rows + out) if HAS_ROWS else out
    j = tl.arange(0, BLOCK_ADD)
    entry = j < n_add
    violation = tl.load(worst + out * s_wn + j, mask=entry, other=float("-inf")) - alpha - tl.load(nu + out)
    dual_tol = tl.load(tol + row)
    dual_tol = tl.where(tl.load(residual + out) > dual_tol, tl.maximum(dual_tol, tl.load(allowance)), dual_tol)
    violating = ((violation > dual_tol) & entry).to(tl.int32)  # a prefix: the scores are descending
    first = tl.sum(tl.where(j == 0, violation, 0.0), 0)
    was_broken = (tl.load(broken_in + out) != 0).to(tl.int32)
    converged = (tl.load(conv_in + out) != 0).to(tl.int32) & (first <= dual_tol).to(tl.int32)
    finished = converged | was_broken  # a broken row stops too; the certificate will flag it
    tl.store(broken + row, was_broken.to(tl.int8))
    i = tl.arange(0, BLOCK)
    inside = i < m
    sr = (tl.load(support + out * s_qn + i, mask=inside, other=0) != 0).to(tl.int32)
    n_support = tl.sum(sr, 0)
    n_violating = tl.sum(violating, 0)
    slot = tl.atomic_add(counts + 0, (1 - finished).to(tl.int64))  # the unfinished rows, counted and listed
    tl.store(next_rows + slot, row.to(tl.int64), mask=finished == 0)
    tl.atomic_max(counts + 1, tl.sum(tl.where(j == n_add - 1, violating, 0), 0).to(tl.int64))
    tl.atomic_max(counts + 2, (n_support + n_violating).to(tl.int64))
    tl.atomic_max(counts + 3, tl.load(iterations).to(tl.int64))  # the round's most active-set iterations
    # Each old slot's place in the next W: the support in order, then the others in order from
    # n_support on; the first n_violating of those places go to the violators instead.
    rest = (1 - sr) * inside.to(tl.int32)
    place = tl.where(sr != 0, tl.cumsum(sr, 0) - 1, n_support + tl.cumsum(rest, 0) - 1)
    kept = (sr != 0) | ((rest != 0) & (place >= n_support + n_violating))
    c = tl.arange(0, BLOCK_W)
    src_hit = kept[None, :] & (place[None, :] == c[:, None])
    has_src = tl.max(src_hit.to(tl.int32), 1) != 0
    src = tl.sum(tl.where(src_hit, i[None, :], 0), 1)
    entering = (c >= n_support) & (c < n_support + n_violating)
    t = tl.where(entering, c - n_support, 0)
    cols = c < width
    old = has_src & cols
    new_code = tl.where(entering, tl.load(worst_code + out * s_wn + t, mask=entering & cols, other=0),
                        tl.load(code + row * s_cn + src, mask=old, other=0))
    old_sg = tl.load(sign + row * s_gn + src, mask=old, other=1.0)
    if HAS_SIGN:
        new_sg = tl.where(entering, tl.load(new_sign + out * s_wn + t, mask=entering & cols, other=1.0), old_sg)
    else:  # unsigned codes enter as +e_k
        new_sg = tl.where(entering, 1.0, old_sg)
    new_u = tl.load(weights + out * s_pn + src, mask=old & ~entering, other=0.0).to(u.dtype.element_ty)
    new_s = tl.load(support + out * s_qn + src, mask=old & ~entering, other=0)
    new_valid = tl.where(entering, 1, tl.load(valid + row * s_vn + src, mask=old, other=0))
    tl.debug_barrier()  # every slot of the old W read before the new one is written over it
    tl.store(code + row * s_cn + c, new_code, mask=cols)
    tl.store(sign + row * s_gn + c, new_sg, mask=cols)
    tl.store(u + row * s_un + c, new_u, mask=cols)
    tl.store(s + row * s_sn + c, new_s, mask=cols)
    tl.store(valid + row * s_vn + c, new_valid.to(tl.int8), mask=cols)


@triton.jit
def backward_rows(E, z, code, sign, u, s, grad_u, out_v, grad_z, grad_E, m, D, ridge_hi, ridge_lo,
                  s_en, s_zn, s_cn, s_gn, s_un, s_sn, s_qn, s_vn, s_oz, s_ge,
                  SIMPLEX: tl.constexpr, NEED_E: tl.constexpr, SYS_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                  GRAM_D: tl.constexpr, BLOCK_D: tl.constexpr):
    """The engine's backward (docs/math.md §4–5) for row ``program_id`` (see
    :mod:`~scq.solvers.engine.backward_triton`), on its support S from the codes in place: H_SS =
    C_S C_Sᵀ + ρI (``tl.dot`` at IEEE precision, in the systems' dtype), v = M g on S by
    :func:`eliminate` (M = H_SS⁻¹, less the rank-one term of the simplex's 1ᵀu = 1; 0 where H_SS
    does not factor: the forward flagged the row as broken down), ∂z = Σ_j v_j c_j, and, with
    ``NEED_E``, σ_j(v_j (z − z_q) − u_j ∂z) added into code k_j's row of ``grad_E`` (atomics)."""
    row = tl.program_id(0)
    i = tl.arange(0, BLOCK)
    inside = i < m
    eye = i[:, None] == i[None, :]
    sup = tl.load(s + row * s_sn + i, mask=inside, other=0).to(tl.int32)
    on = sup != 0
    codes = tl.load(code + row * s_cn + i, mask=inside, other=0)
    sg = tl.load(sign + row * s_gn + i, mask=inside, other=0.0)
    # 1. H_SS from the support's codes (identity off S comes from the elimination).
    H = tl.zeros([BLOCK, BLOCK], SYS_DTYPE)
    for d0 in range(0, D, GRAM_D):
        dd = d0 + tl.arange(0, GRAM_D)
        tile = tl.load(E + codes[:, None] * s_en + dd[None, :], mask=on[:, None] & (dd < D)[None, :],
                       other=0.0).to(SYS_DTYPE)
        H += tl.dot(tile, tl.trans(tile), input_precision="ieee")
    sgs = sg.to(SYS_DTYPE)
    ridge = _two_part(tl.sum(sgs * 0.0, 0), ridge_hi, ridge_lo)
    H = H * (sgs[:, None] * sgs[None, :]) + tl.where(eye, ridge, 0.0)
    # 2. v = M g on S.
    g = tl.load(grad_u + row * s_qn + i, mask=inside, other=0.0).to(SYS_DTYPE)
    x, y, failed = eliminate(H, sup.to(SYS_DTYPE), g, m, i, eye)
    v = x
    if SIMPLEX:
        ones = tl.sum(y, 0)  # > 0 where S is not empty (H_SS positive definite)
        v = x - tl.sum(x, 0) / tl.where(ones > 0.0, ones, 1.0) * y
    v = tl.where((failed == 0) & on, v, 0.0)
    tl.store(out_v + row * s_vn + i, v, mask=inside)
    # 3. ∂z = Σ_j v_j σ_j e_j and ∂E, a tile of D at a time, in the inputs' dtype.
    vi = v.to(sg.dtype)
    uu = tl.load(u + row * s_un + i, mask=inside, other=0.0)
    rows_used = on | (uu != 0.0)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        cols = dd < D
        tile = tl.load(E + codes[:, None] * s_en + dd[None, :], mask=rows_used[:, None] & cols[None, :], other=0.0)
        vc = tl.sum((vi * sg)[:, None] * tile, 0)
        tl.store(grad_z + row * s_oz + dd, vc, mask=cols)
        if NEED_E:
            r = tl.load(z + row * s_zn + dd, mask=cols, other=0.0) - tl.sum((uu * sg)[:, None] * tile, 0)
            part = sg[:, None] * (vi[:, None] * r[None, :] - uu[:, None] * vc[None, :])
            tl.atomic_add(grad_E + codes[:, None] * s_ge + dd[None, :], part, mask=rows_used[:, None] & cols[None, :],
                          sem="relaxed")


@triton.jit
def entering_scores_rows(G, score, code, sign, valid, extra, start, rows, K, m, bonus_hi, bonus_lo,
                         s_gn, s_on, s_cn, s_sn, s_vn, s_xn,
                         SIGNED: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_START: tl.constexpr, BLOCK: tl.constexpr,
                         BLOCK_K: tl.constexpr, HAS_ROWS: tl.constexpr):
    """Row ``program_id``'s entering scores from its gradients G = E(z_q − z) (see
    :func:`scq.solvers.engine.round_triton.entering_scores`): g = G − extra (or less the bonus at
    the ``start`` code), the score −g (|g| for signed codes, which enter with sign −sign(g)), and
    −inf at the codes already in W (for signed codes, where W holds the code with its entering
    sign), as :func:`scq.solvers.engine.working_set._gradients` and ``_entering`` make them. G and
    the scores at the round's row ``program_id``, W, ``extra`` and ``start`` at the batch's row
    ``rows[program_id]`` (``HAS_ROWS``; else the same)."""
    # 64-bit rows: the (n, K) G and scores pass 2³¹ elements at N = 131072, K = 16384.
    out = tl.program_id(0).to(tl.int64)
    row = tl.load(rows + out).to(tl.int64) if HAS_ROWS else out
    i = tl.arange(0, BLOCK)
    inside = i < m
    codes = tl.load(code + row * s_cn + i, mask=inside, other=0)
    in_w = (tl.load(valid + row * s_vn + i, mask=inside, other=0) != 0) & inside
    bonus = _two_part(tl.sum(tl.zeros([BLOCK], G.dtype.element_ty), 0), bonus_hi, bonus_lo)
    if HAS_START:
        first = tl.load(start + row)
    if SIGNED:  # W's codes count as in W only with their entering sign (read before any write)
        g_w = tl.load(G + out * s_gn + codes, mask=in_w, other=0.0)
        if HAS_EXTRA:
            g_w -= tl.load(extra + row * s_xn + codes, mask=in_w, other=0.0)
        if HAS_START:
            g_w = tl.where(codes == first, g_w - bonus, g_w)
        in_w = in_w & (tl.where(g_w > 0.0, -1.0, 1.0) == tl.load(sign + row * s_sn + i, mask=inside, other=0.0))
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        live = kk < K
        g = tl.load(G + out * s_gn + kk, mask=live, other=0.0)
        if HAS_EXTRA:
            g -= tl.load(extra + row * s_xn + kk, mask=live, other=0.0)
        if HAS_START:
            g = tl.where(kk == first, g - bonus, g)
        tl.store(score + out * s_on + kk, tl.abs(g) if SIGNED else -g, mask=live)
    tl.debug_barrier()  # the sweep's stores before the mask's, which may fall on the same codes
    tl.store(score + out * s_on + codes, tl.full([BLOCK], float("-inf"), score.dtype.element_ty), mask=in_w)


@triton.jit
def _certificate_tile(G, p, nearest, target, row, k0, K, lam, s_gn, s_pn, s_tn, HAS_TARGET: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """Codes k0 … k0 + BLOCK_K of a row for :func:`scq_certificate_rows`: (inside K, p, and
    g = G + λ(p − p̃)), in float64."""
    kk = k0 + tl.arange(0, BLOCK_K)
    live = kk < K
    pk = tl.load(p + row * s_pn + kk, mask=live, other=0.0).to(tl.float64)
    if HAS_TARGET:
        tk = tl.load(target + row * s_tn + kk, mask=live, other=0.0).to(tl.float64)
    else:
        tk = tl.where(kk == tl.load(nearest + row), 1.0, 0.0).to(tl.float64)
    g = tl.load(G + row * s_gn + kk, mask=live, other=0.0).to(tl.float64) + lam * (pk - tk)
    return live, pk, g


@triton.jit
def scq_certificate_rows(G, p, nearest, target, scale, out_residual, out_gap, out_error, out_q_error, K, lam_hi,
                         lam_lo, s_gn, s_pn, s_tn, HAS_TARGET: tl.constexpr, BLOCK_K: tl.constexpr):
    """The SCQ certificate of row ``program_id`` (docs/math.md §7; see
    :mod:`~scq.solvers.engine.certificate_triton`) in two sweeps over its K codes, as
    :func:`scq.solvers.engine.cpu_kernels.scq_certificate_rows` (sums in float64): g = G + λ(p − p̃)
    (p̃ the one-hot ``nearest`` code, or ``target``), gᵀp, Σp and min g in the first; μ = g − gᵀp,
    max |min(p, μ/s)| and ‖δ‖² (μ's negative part, and its positive part on the support) in the
    second. All four nan where g or p holds a nan."""
    row = tl.program_id(0).to(tl.int64)  # (N, K) offsets pass 2³¹ at N = 131072, K = 16384
    lam = (tl.sum(tl.zeros([BLOCK_K], tl.float64), 0) + lam_hi) + lam_lo
    s = tl.load(scale + row).to(tl.float64)
    gp = lam * 0.0
    total = lam * 0.0
    g_min = lam * 0.0 + float("inf")
    nan = row * 0
    for k0 in range(0, K, BLOCK_K):
        live, pk, g = _certificate_tile(G, p, nearest, target, row, k0, K, lam, s_gn, s_pn, s_tn, HAS_TARGET, BLOCK_K)
        gp += tl.sum(g * pk, 0)
        total += tl.sum(pk, 0)
        g_min = tl.minimum(g_min, tl.min(tl.where(live, g, float("inf")), 0))
        nan = nan | tl.max(((g != g) | (pk != pk)).to(tl.int32), 0)
    worst = lam * 0.0
    delta_sq = lam * 0.0
    for k0 in range(0, K, BLOCK_K):
        live, pk, g = _certificate_tile(G, p, nearest, target, row, k0, K, lam, s_gn, s_pn, s_tn, HAS_TARGET, BLOCK_K)
        mu = g - gp
        worst = tl.maximum(worst, tl.max(tl.where(live, tl.abs(tl.minimum(pk, mu / s)), 0.0), 0))
        part = tl.where(mu < 0.0, mu * mu, tl.where(pk > 0.0, mu * mu, 0.0))
        delta_sq += tl.sum(tl.where(live, part, 0.0), 0)
    off = tl.abs(1.0 - total)
    gap = tl.maximum(gp - g_min, 0.0)
    residual = tl.maximum(worst, off)
    delta = tl.sqrt(delta_sq)
    # The bounds of cpu_kernels._bounds_row: the gap on the face 1ᵀx = c, plus |1 − c|'s share.
    gap_c = tl.maximum(gp - total * g_min, 0.0)
    error = tl.minimum(tl.sqrt(2.0 * gap_c / lam), delta / lam) + off * tl.sqrt(s / lam)
    q_error = tl.minimum(tl.sqrt(2.0 * gap_c), delta / tl.sqrt(lam)) + off * tl.sqrt(s)
    error = tl.where(total > 0.0, error, float("inf"))
    q_error = tl.where(total > 0.0, q_error, float("inf"))
    bad = nan != 0
    out_t = out_residual.dtype.element_ty
    tl.store(out_residual + row, tl.where(bad, float("nan"), residual).to(out_t))
    tl.store(out_gap + row, tl.where(bad, float("nan"), gap).to(out_t))
    tl.store(out_error + row, tl.where(bad, float("nan"), error).to(out_t))
    tl.store(out_q_error + row, tl.where(bad, float("nan"), q_error).to(out_t))
