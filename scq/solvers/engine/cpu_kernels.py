r"""The engine's per-vector work compiled for the CPU (Numba): FISTA, the active set, the
backward, and the round's Gram matrices, entering codes, sparse combine and SCQ certificate.

The torch path runs the batch in lockstep: ~130 ops per active-set iteration and ~33 per FISTA
step, each a parallel region over (N, m, m) tensors, with batched Cholesky on every row's masked
m×m system whatever its support size. On 2 cores that made ``pgd`` 13–69× ``scq.VQ`` at N = 4096,
K = 1024, D = 64, and each region waits for every thread, so a busy machine multiplied the cost
(issue #11). Here a row does only its own work: it factors its support (k×k, k = |S|, not m×m),
stops when its own row is done, and no (N, m, D) tensor of gathered codes is formed.

Every kernel runs rows ``lo..hi`` into output arrays it is given; a ``*_par`` launcher at the end
runs one row range per thread of Numba's pool (:mod:`scq.solvers.engine.fused` picks the ranges),
calling the kernel through its address (:class:`InParallel`), so that each kernel compiles once.

The arithmetic is the torch path's, line for line (:func:`scq.solvers.engine.fista.fista_torch`,
:func:`scq.solvers.engine.active_set._iterate`, ``WorkingSetFunction._backward``, the certificate
of :func:`scq.solvers.certificate.certify_scq`; the same formulas as the Triton kernels, with
Cholesky on the gathered support instead of Gauss–Jordan on the masked matrix): the two agree to
rounding, checked by tests/test_cpu_kernels.py.

The kernels stay in this one file on purpose. Numba's on-disk cache (``cache=True``) recompiles a
function when its own file changes, not when a function it calls from another file does (a
documented limit of Numba's caching). Split across files, an edited helper would leave its
callers running their stale cached copies.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange, typeof, types

try:  # Numba's dispatcher's type fingerprint (see _types_key); typeof where it is missing
    from numba._dispatcher import compute_fingerprint as _fingerprint
except ImportError:  # pragma: no cover - a Numba without it
    _fingerprint = typeof

# Numba's defaults raise on x/0; the torch path gives inf/nan there, and so do these. Sums may be
# reassociated (so that dot products vectorize); nothing assumes finite values (inf, -1e30 are used).
_JIT = dict(cache=True, error_model="numpy", nogil=True, fastmath={"reassoc", "nsz"})
# Constants passed where the same argument is elsewhere a variable, and the starting values of
# counters passed on: typed int64 and bool, not Literal[int](0) and Literal[bool](False), so that
# Numba compiles one version of the callee (and of everything it calls with them), not one per
# literal (a counter starting at 0 is typed both ways): each was another compile on first use.
_ZERO = np.int64(0)
_NO = np.bool_(False)
_NO_CAP = np.int64(-1)  # max_support: none


@njit(**_JIT)
def _cholesky(A, k):
    """In place: the lower Cholesky factor L of A[:k, :k], its diagonal stored as 1/L_jj (what
    :func:`_cho_solve` multiplies by: a division on each step of the substitutions' dependent
    chains cost ~20 cycles of latency, a product 4). False if a pivot is not positive (or is nan):
    the matrix is not numerically positive definite, as LAPACK's ``info > 0``."""
    for j in range(k):
        d = A[j, j]
        for t in range(j):  # the columns left of j: off the diagonal only
            d -= A[j, t] * A[j, t]
        if not d > 0:
            return False
        inv = 1.0 / np.sqrt(d)
        A[j, j] = inv
        for i in range(j + 1, k):
            v = A[i, j]
            for t in range(j):
                v -= A[i, t] * A[j, t]
            A[i, j] = v * inv
    return True


@njit(**_JIT)
def _cho_solve(L, k, x):
    """In place: x[:k] ← (L Lᵀ)⁻¹ x[:k], L from :func:`_cholesky` (its diagonal holds 1/L_ii)."""
    for i in range(k):
        v = x[i]
        for t in range(i):
            v -= L[i, t] * x[t]
        x[i] = v * L[i, i]
    # Lᵀ: solved column by column, each x_i taken off the rows above along L's row i (contiguous),
    # instead of row by row along L's columns (strided by L's width).
    for i in range(k - 1, -1, -1):
        xi = x[i] * L[i, i]
        x[i] = xi
        for t in range(i):
            x[t] -= L[i, t] * xi


@njit(**_JIT)
def _cho_solve2(L, k, x, y):
    """:func:`_cho_solve` on x and y at once: two independent dependency chains side by side."""
    for i in range(k):
        vx = x[i]
        vy = y[i]
        for t in range(i):
            vx -= L[i, t] * x[t]
            vy -= L[i, t] * y[t]
        x[i] = vx * L[i, i]
        y[i] = vy * L[i, i]
    for i in range(k - 1, -1, -1):
        xi = x[i] * L[i, i]
        yi = y[i] * L[i, i]
        x[i] = xi
        y[i] = yi
        for t in range(i):
            x[t] -= L[i, t] * xi
            y[t] -= L[i, t] * yi


@njit(**_JIT)
def _solve_on_simplex(A, k, x, y, shift, floor):
    """From the Cholesky factor A of H_SS (k×k), in place: x ← H_SS⁻¹x − c·H_SS⁻¹1 with
    c = (1ᵀH_SS⁻¹x − shift)/max(1ᵀH_SS⁻¹1, floor). With ``shift`` 1 that is the equality solution
    under 1ᵀp = 1 and c = ν (the active set); with 0, the backward's v = M g (docs/math.md §4).
    ``y`` is scratch. Returns c."""
    for a in range(k):
        y[a] = 1.0
    _cho_solve2(A, k, x, y)
    sx = 0.0
    sy = 0.0
    for a in range(k):
        sx += x[a]
        sy += y[a]
    c = (sx - shift) / max(sy, floor)
    for a in range(k):
        x[a] -= c * y[a]
    return c


@njit(**_JIT)
def _factor_support(H, s, idx, A):
    """Gather the support's rows and columns of H into A and factor them; returns (k, ok)."""
    k = _ZERO
    for j in range(s.shape[0]):
        if s[j]:
            idx[k] = j
            k += 1
    for a in range(k):
        for c in range(a + 1):
            A[a, c] = H[idx[a], idx[c]]
    return k, _cholesky(A, k)


@njit(**_JIT)
def _factor_append(H, A, idx, k, j):
    """Append slot j to the Cholesky factor ``A`` of H on the slots ``idx[:k]`` (row k of L:
    Lᵀ's forward substitution against H's column j, then the pivot): O(k²) where refactoring the
    k+1 slots costs O(k³). Returns False, A's row k and ``idx`` untouched, if the pivot is not
    positive (as :func:`_cholesky`)."""
    Hj = H[j]
    for t in range(k):
        v = Hj[idx[t]]
        for c in range(t):
            v -= A[t, c] * A[k, c]
        A[k, t] = v * A[t, t]
    d = Hj[j]
    for t in range(k):
        d -= A[k, t] * A[k, t]
    if not d > 0:
        return False
    A[k, k] = 1.0 / np.sqrt(d)
    idx[k] = j
    return True


@njit(**_JIT)
def _factor_remove(A, idx, k, t, v):
    """Remove position t from the Cholesky factor ``A`` of H on the slots ``idx[:k]`` (k−1 left):
    the rows below t keep their first t columns, and their trailing block absorbs the removed
    column as a rank-one update L̃L̃ᵀ = L₂₂L₂₂ᵀ + l lᵀ (rotations, O((k−t)²); stable, where a
    refactor costs O(k³)). ``v`` is scratch (≥ k−t−1)."""
    n = k - t - 1
    for i in range(n):
        v[i] = A[t + 1 + i, t]
    for a in range(n):
        j = t + 1 + a
        ljj = 1.0 / A[j, j]  # (the diagonal holds 1/L_jj)
        r = np.sqrt(ljj * ljj + v[a] * v[a])
        c = r / ljj
        c_inv = ljj / r
        s = v[a] / ljj
        A[j, j] = 1.0 / r
        for b in range(a + 1, n):
            i = t + 1 + b
            lij = (A[i, j] + s * v[b]) * c_inv
            A[i, j] = lij
            v[b] = c * v[b] - s * lij
    for i in range(t + 1, k):  # rows below t move up a row, columns right of t left a column
        for c in range(t):
            A[i - 1, c] = A[i, c]
        for c in range(t + 1, i + 1):
            A[i - 1, c - 1] = A[i, c]
        idx[i - 1] = idx[i]


@njit(**_JIT)
def _factor_update(H, s, idx, A, k, in_factor, v):
    """Bring the Cholesky factor ``A`` of H on the slots ``idx[:k]`` to the support ``s``: remove
    the slots that left it (:func:`_factor_remove`), append those that entered
    (:func:`_factor_append`), so that an active-set step costs O(k²) instead of a refactor's O(k³)
    (k ≈ 64 in the lasso with supports of D: its rows take hundreds of steps). The factor's order
    is the order codes entered, not the slots'. A pivot that is not positive refactors the support
    from scratch in slot order (:func:`_factor_support`), whose verdict stands: the same test of
    positive definiteness as before. ``in_factor`` (bool) and ``v`` are scratch. Returns (k, ok)."""
    m = s.shape[0]
    for j in range(m):
        in_factor[j] = False
    for t in range(k - 1, -1, -1):
        if s[idx[t]]:
            in_factor[idx[t]] = True
        else:
            _factor_remove(A, idx, k, t, v)
            k -= 1
    for j in range(m):
        if s[j] and not in_factor[j]:
            if not _factor_append(H, A, idx, k, j):
                return _factor_support(H, s, idx, A)
            k += 1
    return k, True


@njit(**_JIT)
def _simplex_threshold(v, n_valid):
    """τ with Σ_i max(v_i − τ, 0) = 1 (the simplex projection is max(v − τ, 0)); slots that are
    not valid come in at −1e30 (below any τ), ``n_valid`` is how many are.

    Michelot's algorithm: τ = (Σ_S v − 1)/|S| over a shrinking set S, dropping v_i ≤ τ until none
    is left to drop (a few passes, no sort). τ only grows, so S after each pass is {v > τ}: every
    pass is one branch-free sweep that vectorizes (keeping the set slot by slot made FISTA 2.4×
    slower). The same τ as the sort-based formula of :func:`scq.simplex.simplex_threshold` up to
    rounding."""
    zero = v.dtype.type(0)
    one = v.dtype.type(1)
    if n_valid == 0:
        return zero  # nothing to project: every slot ends at 0
    total = zero
    for i in range(v.shape[0]):
        total += v[i] if v[i] > -1e29 else zero
    size = n_valid
    tau = (total - one) / size
    while True:
        total = zero
        count = 0
        for i in range(v.shape[0]):
            above = v[i] > tau
            total += v[i] if above else zero
            count += above
        # Done when nothing is dropped. S only shrinks (at most m passes): a slot that rounding
        # would let back in, or a NaN that empties S, ends the loop too.
        if count >= size or count == 0:
            return tau
        size = count
        tau = (total - one) / size


@njit(**_JIT)
def _fista_row(H, b, u, valid, t, mom, n_iter, simplex, patience, y, v):
    """``n_iter`` FISTA steps on one row, in place on ``u``: u ← Π_C(y − t(Hy − b)),
    y ← u + β(u − u_prev); ``patience`` > 0: fewer, once the support {u > 0} has not changed for
    that many steps (finding it is the warm start's job; the active set polishes the weights).
    ``y``, ``v`` are scratch. Branch-free sweeps in the input's dtype, so that they vectorize."""
    m = b.shape[0]
    zero = u.dtype.type(0)
    low = u.dtype.type(-1e30)  # an invalid slot, below any threshold: it projects to 0
    n_valid = _ZERO
    for i in range(m):
        n_valid += valid[i]
    y[:] = u
    steady = 0
    for _ in range(n_iter):
        for i in range(m):
            g = -b[i]
            Hi = H[i]
            for j in range(m):
                g += Hi[j] * y[j]
            v[i] = y[i] - t * g if valid[i] else low
        tau = _simplex_threshold(v, n_valid) if simplex else zero
        changed = 0
        for i in range(m):
            new = max(v[i] - tau, zero)
            changed += (new > zero) != (u[i] > zero)
            y[i] = new + mom * (new - u[i])
            u[i] = new
        steady = steady + 1 if changed == 0 else 0
        if patience > 0 and steady >= patience:
            break


@njit(**_JIT)
def _step_and_momentum(H, ridge):
    """FISTA's step 1/L (L = max_i Σ_j |H_ij|, Gershgorin's bound on λ_max) and momentum
    β = (√L − √ρ)/(√L + √ρ), as :func:`scq.solvers.engine.fista.step_and_momentum`."""
    L = 0.0
    for i in range(H.shape[0]):
        row = 0.0
        for j in range(H.shape[1]):
            row += abs(H[i, j])
        L = max(L, row)
    return 1.0 / L, (np.sqrt(L) - np.sqrt(ridge)) / (np.sqrt(L) + np.sqrt(ridge))


@njit(**_JIT)
def fista_rows(H, b, u0, valid, step, beta, n_iter, simplex, out, lo, hi):
    """``n_iter`` FISTA steps for rows lo..hi from ``u0``, the last iterate written to ``out``."""
    m = b.shape[1]
    y = np.empty(m, dtype=u0.dtype)
    v = np.empty(m, dtype=u0.dtype)
    for n in range(lo, hi):
        out[n] = u0[n]
        _fista_row(H[n], b[n], out[n], valid[n], step[n], beta[n], n_iter, simplex, _ZERO, y, v)


@njit(**_JIT)
def _active_set_row(H, b, p, s, valid, dual_tol, max_iter, max_support, simplex, drop_tol, tiny, slack, A, idx, k, x,
                    y, p_eq, p_new, ratio, blocking, s_new, violation):
    """The active-set iterations of ``active_set._iterate`` on one row until it is done (or
    ``max_iter``), from the feasible start ``p``/``s`` (updated in place) and the Cholesky factor
    ``A`` of H on the ``k`` slots ``idx[:k]`` (0: none; a factor carried over from the row's last
    round, see :func:`_round_row`); the rest is scratch. Returns ν, the violation left at finish,
    the row's state (bit 0 done, bit 1 broken down, the rest the iterations it ran) and k: ``A``
    holds the factor of H on the k slots ``idx[:k]`` (in the order they entered), the last
    support factored."""
    m = b.shape[0]
    nu = 0.0
    residual = 0.0
    done = False
    broken = False
    single_add = False
    progress = True
    iters = 0
    while iters < max_iter and not done:
        iters += 1
        # 1. The equality solution on S: H_SS x = b_S, H_SS y = 1, ν = (1ᵀx − 1)/(1ᵀy), with
        # H_SS's factor carried over from the last step (``ratio``, ``blocking`` are scratch here).
        k, ok = _factor_update(H, s, idx, A, k, blocking, ratio)
        if not ok:  # not numerically positive definite: frozen at the last feasible iterate
            broken = True
            done = True
            break
        for a in range(k):
            x[a] = b[idx[a]]
        nu_eq = 0.0
        if simplex:
            nu_eq = _solve_on_simplex(A, k, x, y, 1.0, -np.inf)
        else:
            _cho_solve(A, k, x)
        p_eq[:] = 0.0
        for a in range(k):
            p_eq[idx[a]] = x[a]
        # 2. Ratio test: the largest step α ≤ 1 towards p_eq that keeps p ≥ 0.
        alpha = 1.0
        moved = 0.0
        for i in range(m):
            blocking[i] = s[i] and p_eq[i] < -drop_tol
            ratio[i] = p[i] / max(p[i] - p_eq[i], tiny) if blocking[i] else 2.0
            alpha = min(alpha, ratio[i])
            moved = max(moved, abs(p_eq[i] - p[i]))
        at_opt = alpha >= 1.0
        progress_new = progress or (alpha > 0 and moved > drop_tol)
        n_in = 0
        for i in range(m):
            v = p_eq[i] if at_opt else p[i] + alpha * (p_eq[i] - p[i])
            hit = blocking[i] and ratio[i] <= alpha
            gone = at_opt and v <= drop_tol
            s_new[i] = s[i] and not hit and not gone
            p_new[i] = max(v, 0.0) if s_new[i] else 0.0
            n_in += s_new[i]
        # 3. Multipliers μ = Hp − b + ν off the support, and the codes to add.
        worst = -np.inf
        worst_slot = 0
        for i in range(m):
            viol = 0.0
            if valid[i] and not s_new[i]:
                mu = nu_eq - b[i]
                for j in range(m):
                    mu += H[i, j] * p_new[j]
                viol = -mu
            violation[i] = viol
            if viol > worst:
                worst = viol
                worst_slot = i
        has_violation = worst > dual_tol
        stalled = at_opt and has_violation and not progress_new
        # (or within what a weight below drop_tol leaves: its multiplier is at most H_kk·w, and in
        # float32 at large λ that exceeds the tolerance: λ = 10 cycled to max_iter every round)
        degenerate = stalled and single_add and worst <= max(slack * dual_tol, 2 * drop_tol * H[worst_slot, worst_slot])
        finished = at_opt and (not has_violation or degenerate)
        single_add = single_add or stalled
        n_adds = 0
        if at_opt:
            for i in range(m):
                n_adds += violation[i] > dual_tol
        one_at_a_time = single_add or (max_support >= 0 and n_in + n_adds > max_support)
        for i in range(m):
            add = at_opt and violation[i] > dual_tol and (not one_at_a_time or i == worst_slot)
            s[i] = s_new[i] or add
            p[i] = p_new[i]
        progress = progress_new and n_adds == 0
        nu = nu_eq
        if finished:
            residual = max(worst, 0.0)
            done = True
    return nu, residual, (1 if done else 0) + (2 if broken else 0) + 4 * iters, k


@njit(**_JIT)
def _refine_row(E, z, code, sign, lin, ridge, simplex, H, u, nu, A, idx, k_fact, support, x, y, v):
    """One step of iterative refinement of a row's answer on its support S = {u > 0}, for float32
    systems: the residual r_S = b_S − H_SS u_S − ν1 (and 1 − 1ᵀu on the simplex) summed in float64
    from the codes themselves, r_a = σ_a e_aᵀ(z − Σ_c u_c σ_c e_c) + lin_a − ρu_a − ν, not from H,
    whose float32 products err by ~eps·‖e‖² (weights by ~eps·‖e‖²/ρ: 5e-5 with codes near the
    inputs); then the correction solved with H_SS's float32 factor (docs/math.md §2): u_S += d,
    ν += dν. Kept only where every weight of S stays positive (else the row is left as it was).
    ``code``, ``sign``, ``lin``, ``u`` are the row's k valid slots; ``A`` holds the factor of H on
    the slots ``idx[:k_fact]`` (the active set's last), reused where S is the same set (most rows: the
    factor was ~45% of the step's cost), else overwritten with the factor of H on S (``idx`` then
    lists S); ``support``, ``x``, ``y`` scratch, ``v`` (D,) float64 scratch. Returns ν and the
    size of the factor ``A`` then holds on the slots ``idx`` (0 where S's failed)."""
    k = code.shape[0]
    D = E.shape[1]
    n_s = _ZERO
    total = 0.0
    for a in range(k):
        if u[a] > 0:
            support[n_s] = a
            n_s += 1
            total += u[a]
    if n_s == 0:
        return nu, k_fact
    same = n_s == k_fact  # the same set: the factor's k distinct slots all on S
    for t in range(n_s if same else 0):
        same = same and u[idx[t]] > 0
    for t in range(n_s if same else 0):  # S in the factor's order
        support[t] = idx[t]
    for d in range(D):
        v[d] = z[d]
    for t in range(n_s):
        a = support[t]
        w = np.float64(u[a]) * sign[a]
        e = E[code[a]]
        for d in range(D):
            v[d] -= w * e[d]
    for t in range(n_s):
        a = support[t]
        e = E[code[a]]
        dot = 0.0
        for d in range(D):
            dot += e[d] * v[d]
        x[t] = sign[a] * dot + lin[a] - ridge * np.float64(u[a]) - nu
    if not same:
        for t in range(n_s):
            for c in range(t + 1):
                A[t, c] = H[support[t], support[c]]
        if not _cholesky(A, n_s):
            return nu, 0
        for t in range(n_s):
            idx[t] = support[t]
        k_fact = n_s
    d_nu = 0.0
    if simplex:  # 1ᵀd = 1 − 1ᵀu: the sum constraint's residual too
        d_nu = _solve_on_simplex(A, n_s, x, y, 1.0 - total, -np.inf)
    else:
        _cho_solve(A, n_s, x)
    for t in range(n_s):
        if not u[support[t]] + x[t] > 0:
            return nu, k_fact
    for t in range(n_s):
        u[support[t]] += x[t]
    return nu + d_nu, k_fact


@njit(**_JIT)
def active_set_rows(H, b, out_p, out_s, valid, tol, max_iter, max_support, simplex, drop_tol, tiny, slack,
                    out_nu, out_res, state, lo, hi):
    """:func:`_active_set_row` for rows lo..hi (``max_support`` < 0: no cap), from the feasible
    start in ``out_p``/``out_s`` (updated in place); writes ν, the violation left and the state."""
    m = b.shape[1]
    A = np.empty((m, m), dtype=b.dtype)
    idx = np.empty(m, dtype=np.int64)
    work = np.empty((6, m), dtype=b.dtype)
    flags = np.empty((2, m), dtype=np.bool_)
    for n in range(lo, hi):
        out_nu[n], out_res[n], state[n], _ = _active_set_row(
            H[n], b[n], out_p[n], out_s[n], valid[n], tol[n], max_iter, max_support, simplex, drop_tol, tiny, slack,
            A, idx, _ZERO, work[0], work[1], work[2], work[3], work[4], flags[0], flags[1], work[5])


@njit(**_JIT)
def _dots4(x, e0, e1, e2, e3, zero):
    """(x·e0, x·e1, x·e2, x·e3) in one sweep over x, summed from ``zero`` (its dtype): 2.5× four
    sweeps in float32, where the Gram matrices spend their time."""
    d0 = zero
    d1 = zero
    d2 = zero
    d3 = zero
    for d in range(x.shape[0]):
        t = x[d]
        d0 += t * e0[d]
        d1 += t * e1[d]
        d2 += t * e2[d]
        d3 += t * e3[d]
    return d0, d1, d2, d3


@njit(**_JIT)
def backward_rows(z, E, table, code, sign, u, s, grad_u, ridge, simplex, need_E, v_out, grad_z, grad_E, lo, hi):
    """The engine's backward (docs/math.md §4–5) on each row's support S, from the codes in place:
    no (N, m, D) tensor is formed and only |S|×|S| systems are factored.

    With c_j = σ_j e_{k_j} and H_SS = C_S C_Sᵀ + ρI: v = M g on S (M = H_SS⁻¹, less the rank-one
    term of the simplex's 1ᵀu = 1), ∂z = Σ_j v_j c_j, and code k_j collects
    σ_j(v_j (z − z_q) − u_j ∂z), added into ``grad_E`` (K, D): each thread passes its own, so that
    no two threads write one row. A support that does not factor gives v = 0 (the forward flagged
    that row as broken down). Rows lo..hi of v (in grad_u's dtype, the systems') and ∂z are
    written; both come in zeroed."""
    m = u.shape[1]
    D = z.shape[1]
    tiny = np.finfo(grad_u.dtype).tiny
    A = np.empty((m, m), dtype=grad_u.dtype)
    idx = np.empty(m, dtype=np.int64)
    x = np.empty(m, dtype=grad_u.dtype)
    y = np.empty(m, dtype=grad_u.dtype)
    vc = np.empty(D, dtype=z.dtype)
    r = np.empty(D, dtype=z.dtype)
    # The support's Gram in the systems' dtype, as the forward's (which runs on E in that dtype):
    # float32 sums vectorize.
    zero = grad_u.dtype.type(0)
    has_table = table.shape[0] > 0
    for n in range(lo, hi):
        k = _ZERO
        for j in range(m):
            if s[n, j]:
                idx[k] = j
                k += 1
        for a in range(k):
            ja = idx[a]
            if has_table:  # the products from the codebook's Gram matrix
                for c in range(a + 1):
                    A[a, c] = sign[n, ja] * sign[n, idx[c]] * table[code[n, ja], code[n, idx[c]]]
                A[a, a] += ridge
                continue
            ea = E[code[n, ja]]
            c = 0
            while c + 4 <= a + 1:  # four products per sweep over e_a
                row = code[n]
                A[a, c], A[a, c + 1], A[a, c + 2], A[a, c + 3] = _dots4(
                    ea, E[row[idx[c]]], E[row[idx[c + 1]]], E[row[idx[c + 2]]], E[row[idx[c + 3]]], zero)
                c += 4
            while c <= a:
                eb = E[code[n, idx[c]]]
                dot = zero
                for d in range(D):
                    dot += ea[d] * eb[d]
                A[a, c] = dot
                c += 1
            for c in range(a + 1):
                A[a, c] *= sign[n, ja] * sign[n, idx[c]]
            A[a, a] += ridge
        if not _cholesky(A, k):
            continue
        for a in range(k):
            x[a] = grad_u[n, idx[a]]
        if simplex:
            _solve_on_simplex(A, k, x, y, 0.0, tiny)
        else:
            _cho_solve(A, k, x)
        vc[:] = 0.0
        r[:] = z[n]
        for a in range(k):
            j = idx[a]
            v_out[n, j] = x[a]
            e = E[code[n, j]]
            for d in range(D):
                vc[d] += x[a] * sign[n, j] * e[d]
                r[d] -= u[n, j] * sign[n, j] * e[d]
        grad_z[n] = vc
        if need_E:
            for a in range(k):
                j = idx[a]
                row = grad_E[code[n, j]]
                for d in range(D):
                    row[d] += sign[n, j] * (x[a] * r[d] - u[n, j] * vc[d])


@njit(**_JIT)
def combine_rows(values, E, idx, out, lo, hi):
    """z_q[n] = Σ_j values[n, j] · E[idx[n, j]] for rows lo..hi into ``out`` (zeroed), skipping
    zero weights (padding, codes off the support): no (N, m, D) gather."""
    m = values.shape[1]
    for n in range(lo, hi):
        row = out[n]
        for j in range(m):
            w = values[n, j]
            if w != 0:
                e = E[idx[n, j]]
                for d in range(E.shape[1]):
                    row[d] += w * e[d]


@njit(**_JIT)
def combine_backward_rows(values, E, idx, grad, need_values, need_E, grad_values, grad_E, lo, hi):
    """The backward of :func:`combine_rows` for rows lo..hi: ∂values[n, j] = E[idx[n, j]]·grad[n]
    (every slot), and E[idx[n, j]] collects values[n, j]·grad[n] in ``grad_E`` (K, D; each
    thread passes its own, so that no two threads write one row)."""
    m = values.shape[1]
    D = E.shape[1]
    for n in range(lo, hi):
        g = grad[n]
        for j in range(m):
            k = idx[n, j]
            if need_values:
                e = E[k]
                dot = 0.0
                for d in range(D):
                    dot += e[d] * g[d]
                grad_values[n, j] = dot
            w = values[n, j]
            if need_E and w != 0:
                row = grad_E[k]
                for d in range(D):
                    row[d] += w * g[d]


@njit(**_JIT)
def _gram_row(E, code, sign, z, ridge, r, old_gram, old_ez, old_code, new_gram, new_ez, new_code, H, cz, old,
              targets, pos):
    """One row's H = CCᵀ + ρI and Cz (c_j = σ_j e_{k_j}), from the codes in place, summed in E's
    dtype; products the row's codes had in the last round come from the cache (row ``r`` of
    ``old_*``; see :func:`gram_rows`), and this round's are written to row ``r`` of ``new_*``.
    ``old`` and ``targets`` are scratch; ``pos`` (K,) comes in and leaves at −1."""
    m = code.shape[0]
    m_old = old_code.shape[1]
    D = E.shape[1]
    zero = E.dtype.type(0)  # sums in E's dtype, so that they vectorize
    # Where each code sat in the cache, −1 if it is new to the row: O(m) through ``pos``, not a
    # search of the cached codes for each code.
    for j in range(m_old):
        if old_code[r, j] >= 0:
            pos[old_code[r, j]] = j
    for a in range(m):
        old[a] = pos[code[a]]
    for j in range(m_old):
        if old_code[r, j] >= 0:
            pos[old_code[r, j]] = -1
    for a in range(m):  # products both codes of which the row had: from the cache
        if old[a] >= 0:
            cz[a] = old_ez[r, old[a]]
            for c in range(a + 1):
                if old[c] >= 0:  # the cache holds the lower triangle, packed: (i, j ≤ i) at i(i+1)/2 + j
                    i, j = max(old[a], old[c]), min(old[a], old[c])
                    H[a, c] = old_gram[r, i * (i + 1) // 2 + j]
    for a in range(m):  # a new code: its products with every slot not yet set, four at a time
        if old[a] >= 0:
            continue
        ea = E[code[a]]
        dz = zero
        for d in range(D):
            dz += ea[d] * z[d]
        cz[a] = dz
        n_t = 0
        for c in range(m):
            if old[c] >= 0 or c <= a:
                targets[n_t] = c
                n_t += 1
        t = 0
        while t + 4 <= n_t:  # four dot products per sweep over ea
            d0, d1, d2, d3 = _dots4(ea, E[code[targets[t]]], E[code[targets[t + 1]]], E[code[targets[t + 2]]],
                                    E[code[targets[t + 3]]], zero)
            c0, c1, c2, c3 = targets[t], targets[t + 1], targets[t + 2], targets[t + 3]
            H[max(a, c0), min(a, c0)] = d0
            H[max(a, c1), min(a, c1)] = d1
            H[max(a, c2), min(a, c2)] = d2
            H[max(a, c3), min(a, c3)] = d3
            t += 4
        while t < n_t:
            c = targets[t]
            eb = E[code[c]]
            dot = zero
            for d in range(D):
                dot += ea[d] * eb[d]
            H[max(a, c), min(a, c)] = dot
            t += 1
    for a in range(m, new_code.shape[1]):  # slots beyond this row's codes hold none
        new_code[r, a] = -1
    keep = new_code.shape[1] >= m  # (a cache of width 0 keeps nothing: see fused.GramCache)
    for a in range(m if keep else 0):  # the unsigned products, without the ridge (lower triangle, packed)
        new_code[r, a] = code[a]
        new_ez[r, a] = cz[a]
        base = a * (a + 1) // 2
        for c in range(a + 1):
            new_gram[r, base + c] = H[a, c]
    for a in range(m):
        cz[a] *= sign[a]
        for c in range(a + 1):
            h = sign[a] * sign[c] * H[a, c]
            H[a, c] = h + (ridge if a == c else 0.0)
            H[c, a] = H[a, c]


@njit(**_JIT)
def gram_rows(E, code, sign, z, ridge, rows, old_gram, old_ez, old_code, new_gram, new_ez, new_code, H, cz, lo,
              hi):
    """Per row, from the codes in place (no (N, m, D) gather): H = CCᵀ + ρI and Cz, with
    c_j = σ_j e_{k_j}, for rows lo..hi, summed in E's dtype (the caller passes E in the systems'
    precision).

    Rounds change a few codes of W: the products e_aᵀe_b and e_aᵀz of codes a row had in the last
    round are taken from a per-row cache instead of recomputed (a round then costs O(new·m·D),
    not O(m²·D)). The cache is read at ``old_*`` (rows of the whole batch, ``rows[i]`` for row i;
    ``old_code`` −1 where empty) and written at ``new_*`` (may be the same arrays: a row is read
    whole before it is written)."""
    old = np.empty(code.shape[1], dtype=np.int64)
    targets = np.empty(code.shape[1], dtype=np.int64)
    pos = np.full(E.shape[0], -1, dtype=np.int64)
    for n in range(lo, hi):
        _gram_row(E, code[n], sign[n], z[n], ridge, rows[n], old_gram, old_ez, old_code, new_gram, new_ez, new_code,
                  H[n], cz[n], old, targets, pos)


@njit(**_JIT)
def _table_row(table, scores, code, sign, ridge, H, cz):
    """One row's H = CCᵀ + ρI and Cz (c_j = σ_j e_{k_j}) read from the codebook's Gram matrix
    ``table`` = EEᵀ (K, K) and the row's scores Ez (K,): O(m²) reads, no product over D."""
    m = code.shape[0]
    for a in range(m):
        ka = code[a]
        cz[a] = sign[a] * scores[ka]
        for c in range(a + 1):
            h = sign[a] * sign[c] * table[ka, code[c]]
            H[a, c] = h + (ridge if a == c else 0.0)
            H[c, a] = H[a, c]


@njit(**_JIT)
def _table_gradient(table, scores, code, sign, u, extra, start, bonus, g, nz, w):
    """One row's gradients g = E(z_q − z) − extra (or less ``bonus`` at the ``start`` code; see
    :func:`finish_rows`) from the codebook's Gram matrix, into ``g`` (K,): Σ_j u_j σ_j (EEᵀ)[k_j]
    − Ez, a sweep over K per nonzero weight (four at a time: one load and store of g per four
    table rows) instead of a GEMM's sweep over K·D, and no (N, K) G in memory. ``scores`` is the
    row's Ez, ``extra`` its row or empty, ``start`` its start code or −1; ``nz``, ``w`` scratch (m,)."""
    K = g.shape[0]
    n_nz = 0
    for a in range(code.shape[0]):
        wa = g.dtype.type(u[a] * sign[a])
        if wa != 0:
            nz[n_nz] = code[a]
            w[n_nz] = wa
            n_nz += 1
    if extra.shape[0] > 0:
        for k in range(K):
            g[k] = -scores[k] - extra[k]
    else:
        for k in range(K):
            g[k] = -scores[k]
        if start >= 0:
            g[start] -= bonus
    j = 0
    while j + 4 <= n_nz:
        t0, t1, t2, t3 = table[nz[j]], table[nz[j + 1]], table[nz[j + 2]], table[nz[j + 3]]
        w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
        for k in range(K):
            g[k] += w0 * t0[k] + w1 * t1[k] + w2 * t2[k] + w3 * t3[k]
        j += 4
    while j < n_nz:
        t0 = table[nz[j]]
        w0 = w[j]
        for k in range(K):
            g[k] += w0 * t0[k]
        j += 1


@njit(**_JIT)
def _round_scratch(m, K, D, dtype, refine):
    """Scratch of :func:`_round_row` for a W of ``m`` slots (K codes, D dimensions): one set per
    thread, reused row after row."""
    return (np.empty(m * m, dtype=dtype), np.empty((m, m), dtype=dtype), np.empty(m, dtype=np.int64),
            np.empty(m, dtype=np.int64), np.empty(m, dtype=dtype), np.ones(m, dtype=np.bool_),
            np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64), np.full(K, -1, dtype=np.int64),
            np.empty(m, dtype=np.int64), np.empty((8, m), dtype=dtype), np.empty((3, m), dtype=np.bool_),
            np.empty(D if refine else 0, dtype=np.float64), np.empty(m, dtype=np.float64),
            np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64), np.empty(m, dtype=dtype))


@njit(**_JIT)
def _round_row(E, E_out, table, scores, code, sign, z, extra, start, bonus, l1, ridge, n, r, old_gram, old_ez,
               old_code, new_gram, new_ez, new_code, u, s, valid, tol, n_iter, patience, simplex, max_iter, drop_tol,
               tiny, slack, refine, zq, scratch, carried):
    """One row's work on W in a certificate round (row ``r`` of the batch, ``n`` of the round; see
    :func:`round_rows`, whose arguments these are, and :func:`_round_scratch`). Returns the row's
    (ν, residual, state) of :func:`_active_set_row` and the size of the Cholesky factor the
    scratch then holds, on the codes it records.

    ``carried`` > 0: the scratch holds the factor this call returned for the same row's last round
    (:func:`table_rounds_rows`, where a row's rounds run back to back): the active set starts from
    it, on the slots its codes hold now, instead of factoring the support again (~11% of the
    rounds' time at D = 64, where supports of 15–20 codes stay from round to round). Where one of
    them left W the factor is not used."""
    (H_flat, A, slots, row_code, row_sign, all_valid, old, targets, pos, idx, work, flags, v, lin_k, support,
     fact_code, fact_sign) = scratch
    m = code.shape[1]
    D = E.shape[1]
    # The row's valid slots only (W is as wide as its widest row: the others are padding).
    k = _ZERO
    for a in range(m):
        if valid[r, a]:
            slots[k] = a
            row_code[k] = code[r, a]
            row_sign[k] = sign[r, a]
            k += 1
    H = H_flat[:k * k].reshape((k, k))
    b, un, sn = work[6, :k], work[7, :k], flags[2, :k]
    if table.shape[0] > 0:
        _table_row(table, scores[r], row_code[:k], row_sign[:k], ridge, H, b)
    else:
        _gram_row(E, row_code[:k], row_sign[:k], z[r], ridge, r, old_gram, old_ez, old_code, new_gram, new_ez,
                  new_code, H, b, old, targets, pos)
    for a in range(k):
        lin = -l1
        if extra.shape[0] > 0:
            lin += row_sign[a] * extra[r, row_code[a]]
        if start.shape[0] > 0 and row_code[a] == start[r]:
            lin += bonus
        b[a] += lin
        lin_k[a] = lin
        un[a] = u[r, slots[a]]
        sn[a] = s[r, slots[a]]
    if n_iter > 0:
        t, mom = _step_and_momentum(H, ridge)
        _fista_row(H, b, un, all_valid[:k], t, mom, n_iter, simplex, patience, work[0, :k], work[1, :k])
        for a in range(k):
            sn[a] = un[a] > 0
    k_fact = _carried_factor(row_code[:k], row_sign[:k], fact_code, fact_sign, carried, idx)
    nu, res, state, k_fact = _active_set_row(
        H, b, un, sn, all_valid[:k], tol[r], max_iter, _NO_CAP, simplex, drop_tol, tiny, slack, A, idx, k_fact,
        work[0, :k], work[1, :k], work[2, :k], work[3, :k], work[4, :k], flags[0, :k], flags[1, :k], work[5, :k])
    if refine and state & 3 == 1:  # finished, not broken down
        nu, k_fact = _refine_row(E, z[r], row_code[:k], row_sign[:k], lin_k[:k], ridge, simplex, H, un, nu, A, idx,
                                 k_fact, support, work[0, :k], work[1, :k], v)
    for t in range(k_fact):  # the factor's codes, for the row's next round
        fact_code[t] = row_code[idx[t]]
        fact_sign[t] = row_sign[idx[t]]
    for a in range(m):  # padding slots end at 0, off the support
        u[r, a] = 0
        s[r, a] = False
    for a in range(k):
        u[r, slots[a]] = un[a]
        s[r, slots[a]] = sn[a]
    if zq.shape[0] > 0:
        row = zq[n]
        for a in range(k):
            w = u[r, slots[a]] * row_sign[a]  # as stored: the weights returned (and certified)
            if w != 0:
                e = E_out[row_code[a]]
                for d in range(D):
                    row[d] += w * e[d]
    return nu, res, state, k_fact


@njit(**_JIT)
def _carried_factor(row_code, row_sign, fact_code, fact_sign, carried, idx):
    """The size of the carried factor (see :func:`_round_row`) with ``idx`` pointed at the slots
    its codes ``fact_code``/``fact_sign`` (``carried`` of them) hold in ``row_code``/``row_sign``
    now; 0 where one of them is not there."""
    k = row_code.shape[0]
    for t in range(carried):
        found = -1
        for a in range(k):
            if row_code[a] == fact_code[t] and row_sign[a] == fact_sign[t]:
                found = a
                break
        if found < 0:
            return 0
        idx[t] = found
    return carried


@njit(**_JIT)
def round_rows(E, E_out, table, scores, code, sign, z, extra, start, bonus, l1, ridge, rows, old_gram, old_ez,
               old_code, new_gram, new_ez, new_code, u, s, valid, tol, n_iter, patience, simplex, max_iter, drop_tol,
               tiny, slack, refine, out_nu, out_res, state, zq, lo, hi):
    """One certificate round's work on W for rows ``rows[lo:hi]`` of the batch, each row start to
    end in one pass, on its valid slots only (k×k, not m×m), its system never leaving the thread:
    the Gram matrix (:func:`_gram_row`, with the cache), b = Cz + the linear term, ``n_iter``
    FISTA steps (then S = {u > 0}; with none, S comes in ``s``), the active set
    (:func:`_active_set_row`; ``u``, ``s`` updated in place), with ``refine`` (float32 systems) one
    step of iterative refinement of a finished row (:func:`_refine_row`), and z_q = Σ_j u_j c_j
    from ``E_out`` (E in the inputs' dtype). The same arithmetic as :func:`gram_rows`, :func:`fista_rows`,
    :func:`active_set_rows` and :func:`combine_rows` run one after the other, without writing H to
    memory between them.

    Row i of the round is row r = ``rows[i]`` of the batch: ``code``, ``sign``, ``u``, ``s``,
    ``valid``, ``z``, ``tol``, ``extra``, ``start`` and the cache are read (and ``u``, ``s``
    written) at r; ``out_nu``, ``out_res``, ``state`` and ``zq`` (zeroed) at i. The linear term of
    slot j: σ_j·extra[r, k_j] (``extra`` (0, 0): none) + ``bonus`` where k_j = start[r]
    (``start`` (0,): none) − ``l1``.

    ``table`` (K, K) not empty: the Gram matrix and Cz are read from the codebook's Gram matrix
    EEᵀ and ``scores`` ZEᵀ (:func:`_table_row`; the cache is not used), and z_q is not formed
    (``zq`` (0, D)): the end of the round makes G from the table too."""
    scratch = _round_scratch(code.shape[1], E.shape[0], E.shape[1], E.dtype, refine)
    for n in range(lo, hi):
        out_nu[n], out_res[n], state[n], _ = _round_row(
            E, E_out, table, scores, code, sign, z, extra, start, bonus, l1, ridge, n, rows[n], old_gram, old_ez,
            old_code, new_gram, new_ez, new_code, u, s, valid, tol, n_iter, patience, simplex, max_iter, drop_tol,
            tiny, slack, refine, zq, scratch, _ZERO)


@njit(**_JIT)
def _finish_scratch(n_add, m, G, u):
    """Scratch of :func:`_finish_row`: (in_w, score, block_top, low, worst, support, weight)."""
    in_w, score, block_top, low = _entering_scratch(n_add, G)
    return (in_w, score, block_top, low, np.empty(n_add, dtype=G.dtype), np.empty(m, dtype=np.int64),
            np.empty(m, dtype=u.dtype))


@njit(**_JIT)
def _finish_row(g, r, l1, signed, code, sign, valid, s, nu, residual, state, tol, allowance, broken, new_code,
                new_sign, violating, u, lam, cert_scale, last, cert, scratch):
    """The end of a round for one row (row ``r`` of the batch; see :func:`finish_rows`, whose
    arguments these are) from its gradients ``g`` (K,; the linear term taken off), its ν and
    state from the round: the entering codes into ``new_code``, ``new_sign``, ``violating`` (the
    row's (n_add,) views; n_add is their length), the certificate (``lam`` ≥ 0) into ``cert``
    at r, ``broken`` at r. Returns (finished, need): whether the row is done (or broken) and the
    width of W it needs for its support and violators. Where the row's active set accepted a
    degenerate face (its ``residual`` above ``tol[r]``), codes outside W may violate by
    ``allowance`` too (``working_set.verdict_tol``)."""
    in_w, score, block_top, low, worst, support, weight = scratch
    n_add = new_code.shape[0]
    m = code.shape[1]
    row_tol = tol[r]
    if residual > row_tol:
        row_tol = max(row_tol, allowance)
    # Only violators are placed: the codes scoring below l1 + ν + tol need no sorting (a hair
    # lower, so that rounding leaves the verdict below to the test it always was).
    margin = 1e-6 * (abs(l1) + abs(nu) + abs(row_tol)) + 1e-30
    _entering_row(g, code[r], sign[r], valid[r], signed, in_w, score, block_top, low[:n_add], worst[:n_add], new_code,
                  l1 + nu + row_tol - margin)
    n_violating = 0
    for j in range(n_add):
        new_sign[j] = -1.0 if signed and g[new_code[j]] > 0 else 1.0
        violating[j] = worst[j] - l1 - nu > row_tol
        n_violating += violating[j]
    done, was_broken = (state & 1) != 0, (state & 2) != 0
    broken[r] = was_broken
    # A broken row stops too; the certificate will flag it.
    finished = (done and not violating[0]) or was_broken
    n_support = _ZERO
    for a in range(m):
        n_support += s[r, a]
    if lam >= 0 and (finished or last):
        # g + λp and p's nonzeros, on W (unsigned codes: each code at most once in W); g's
        # minimum off W is the entering sweep's (its block tops are max −g_k outside W).
        lam_t = g.dtype.type(lam)
        g_min = -block_top.max()
        n_nonzero = _ZERO
        for a in range(m):
            if valid[r, a]:
                if u[r, a] != 0:
                    g[code[r, a]] += lam_t * u[r, a]
                    support[n_nonzero] = code[r, a]
                    weight[n_nonzero] = u[r, a]
                    n_nonzero += 1
                g_min = min(g_min, g[code[r, a]])
        cert[0, r], cert[1, r], cert[2, r], cert[3, r] = _certificate_row(g, g_min, support, weight, n_nonzero, lam,
                                                                          cert_scale[r])
    return finished, n_support + n_violating


@njit(**_JIT)
def finish_rows(G, table, scores, extra, start, bonus, l1, signed, rows, code, sign, valid, s, nu, res, state, tol,
                allowance, broken, finished, new_code, new_sign, violating, need, u, lam, cert_scale, last, cert, lo,
                hi):
    """The end of a certificate round for rows ``rows[lo:hi]`` of the batch (row i of the round is
    row r = ``rows[i]``), after :func:`round_rows`: G (n, K) holds E(z_q − z) for the round's rows
    (overwritten). Per row: the gradients g = G − extra (or less ``bonus`` at the start code), the
    ``n_add`` most violating codes outside W (:func:`_entering_row`; their codes and entering signs
    into ``new_code``, ``new_sign`` (n, n_add)), which of them violate the KKT conditions by more
    than ``tol`` (``violating``), whether the row is ``finished`` (certified on W and no code
    outside it violating, or ``broken``: its active set broke down, written at r) and how wide W
    must be for it to take its violators in (``need``). ``nu``, ``res``, ``state``: the round
    kernel's; ``allowance``: see :func:`_finish_row`.
    Everything but ``broken`` is at i.

    ``lam`` ≥ 0 (SCQ, whose g is then Hp − b less λp): a row that finishes, or every row in the
    ``last`` round, also gets its certificate (:func:`_certificate_row`, scale ``cert_scale[r]``)
    from this g and its weights ``u`` on W, into ``cert`` (4, N) at r: the front door's
    certificate, measured on the same G, without a GEMM of its own.

    ``table`` (K, K) not empty: G is not given (``G`` (0, K)); each row's g is computed here from
    the codebook's Gram matrix EEᵀ and ``scores`` ZEᵀ (:func:`_table_gradient`)."""
    K = G.shape[1]
    has_table = table.shape[0] > 0
    g_row = np.empty(K if has_table else 0, dtype=G.dtype)
    nz = np.empty(code.shape[1], dtype=np.int64)
    w_nz = np.empty(code.shape[1], dtype=G.dtype)
    no_extra = np.empty(0, dtype=extra.dtype)
    has_extra = extra.shape[0] > 0
    has_start = start.shape[0] > 0
    scratch = _finish_scratch(new_code.shape[1], code.shape[1], G, u)
    for n in range(lo, hi):
        r = rows[n]
        if has_table:
            g = g_row
            _table_gradient(table, scores[r], code[r], sign[r], u[r], extra[r] if has_extra else no_extra,
                            start[r] if has_start else -1, bonus, g, nz, w_nz)
        else:
            g = G[n]
            if has_extra:
                for k in range(K):
                    g[k] -= extra[r, k]
            elif has_start:
                g[start[r]] -= bonus
        finished[n], need[n] = _finish_row(g, r, l1, signed, code, sign, valid, s, nu[n], res[n], state[n], tol,
                                           allowance, broken, new_code[n], new_sign[n], violating[n], u, lam,
                                           cert_scale, last, cert, scratch)


@njit(**_JIT)
def _place_scratch(m, code, sign, u):
    """Scratch of :func:`_place_row`: (order, code, sign, u, valid) for a W of ``m`` slots."""
    return (np.empty(m, dtype=np.int64), np.empty(m, dtype=code.dtype), np.empty(m, dtype=sign.dtype),
            np.empty(m, dtype=u.dtype), np.empty(m, dtype=np.bool_))


@njit(**_JIT)
def _place_row(r, code, sign, u, s, valid, new_code, new_sign, violating, scratch):
    """:func:`place_rows` for row ``r``, its entering codes in the (n_add,) ``new_code``,
    ``new_sign``, ``violating``."""
    order, c_tmp, g_tmp, u_tmp, v_tmp = scratch
    m = code.shape[1]
    n_support = 0
    for a in range(m):
        if s[r, a]:
            order[n_support] = a
            n_support += 1
    t = n_support
    for a in range(m):
        if not s[r, a]:
            order[t] = a
            t += 1
    for a in range(m):
        c_tmp[a] = code[r, order[a]]
        g_tmp[a] = sign[r, order[a]]
        u_tmp[a] = u[r, order[a]]
        v_tmp[a] = valid[r, order[a]]
    for a in range(m):
        code[r, a] = c_tmp[a]
        sign[r, a] = g_tmp[a]
        u[r, a] = u_tmp[a]
        valid[r, a] = v_tmp[a]
        s[r, a] = a < n_support
    for j in range(violating.shape[0]):
        slot = n_support + j
        if violating[j] and slot < m:
            code[r, slot] = new_code[j]
            sign[r, slot] = new_sign[j]
            valid[r, slot] = True


@njit(**_JIT)
def place_rows(rows, code, sign, u, s, valid, new_code, new_sign, violating, lo, hi):
    """W for the next round, for rows ``rows[lo:hi]`` (in place at r = ``rows[i]``): the support's
    slots first, then the violators of :func:`finish_rows` (at i), then the rest of the old W, as
    far as W is wide (it was grown to hold every row's support and violators)."""
    scratch = _place_scratch(code.shape[1], code, sign, u)
    for n in range(lo, hi):
        _place_row(rows[n], code, sign, u, s, valid, new_code[n], new_sign[n], violating[n], scratch)


@njit(**_JIT)
def _certificate_row(g, g_min, support, weight, n_support, lam, s):
    """The SCQ certificate of one row (docs/math.md §7; :func:`scq.solvers.certificate.certify_scq`)
    from g = Hp − b = E(z_q − z) + λ(p − p̃) (K,), its smallest entry ``g_min``, and the row's
    nonzero weights p (``weight`` at codes ``support``, the first ``n_support`` entries; a code at
    most once), ``s`` the row's scale: (residual, objective gap, ‖p − p*‖ bound, ‖z_q − z_q*‖
    bound), all nan if g or p holds a nan.

    One sweep over K and one over the support, instead of several over K with a dense p: ν = −gᵀp
    and Σp need only the support; off it (p_k = 0) a code's terms depend on μ_k = g_k − gᵀp alone:
    |min(0, μ_k/s)| ≤ gap/s in the residual (equal at g_min), μ_k² in ‖δ‖² where μ_k < 0. The
    sweep takes every code as if off the support; the support's terms, never smaller
    (|min(p, μ/s)| ≥ |min(0, μ/s)|), are then taken in by max and by adding the μ_k ≥ 0 part.
    The sweep is a plain sum (it vectorizes, 7× a sweep that also takes the minimum, whose
    reduction does not); a nan in g reaches the sum. Sums in float64."""
    gp = 0.0
    total = 0.0
    nan_weight = False
    for j in range(n_support):
        pj = weight[j]
        gp += g[support[j]] * pj
        total += pj
        nan_weight |= pj != pj
    gp_t = g.dtype.type(gp)
    zero = g.dtype.type(0)
    neg_sq = 0.0
    for k in range(g.shape[0]):
        below = g[k] - gp_t
        below = zero if below >= zero else below  # a nan stays
        neg_sq += np.float64(below) * np.float64(below)
    if nan_weight or neg_sq != neg_sq or g_min != g_min:
        return np.nan, np.nan, np.nan, np.nan
    gap = max(gp - g_min, 0.0)
    worst = max(abs(total - 1.0), gap / s)
    delta_sq = neg_sq
    for j in range(n_support):
        pj = weight[j]
        mu = g[support[j]] - gp
        worst = max(worst, abs(min(pj, mu / s)))
        delta_sq += mu * mu if (mu >= 0) & (pj > 0) else 0.0
    error, q_error = _bounds_row(gp - total * g_min, np.sqrt(delta_sq), total, lam, s)
    return worst, gap, error, q_error


@njit(**_JIT)
def _bounds_row(gap_c, delta, total, lam, s):
    """The error bounds from the gap on the face 1ᵀx = c (c = ``total`` = 1ᵀp; ``gap_c`` = gᵀp −
    c·min g) and ‖δ‖, as :func:`scq.solvers.certificate.error_bounds`: inf where c ≤ 0."""
    if not total > 0.0:
        return np.inf, np.inf
    off = abs(1.0 - total)
    gap_c = max(gap_c, 0.0)
    return (min(np.sqrt(2 * gap_c / lam), delta / lam) + off * np.sqrt(s / lam),
            min(np.sqrt(2 * gap_c), delta / np.sqrt(lam)) + off * np.sqrt(s))


@njit(**_JIT)
def _row_min(g):
    """min(g) (a nan may be dropped): sixteen running minima, as a reduction of one would not vectorize."""
    lanes = np.empty(16, dtype=g.dtype)
    lanes[:] = g[0]
    K = g.shape[0]
    k = 0
    while k + 16 <= K:
        for j in range(16):
            v = g[k + j]
            lanes[j] = v if v < lanes[j] else lanes[j]
        k += 16
    out = lanes.min()
    for k in range(k, K):
        out = g[k] if g[k] < out else out
    return out


@njit(**_JIT)
def scq_certificate_rows(G, p, nearest, target, lam, scale, residual, gap, error, q_error, lo, hi):
    """The SCQ certificate (:func:`_certificate_row`) in two passes over each row instead of a
    dozen passes over (N, K): from G = E(z_q − z) (N, K), with g = G + λ(p − p̃), p̃ the one-hot
    ``nearest`` code (``target`` empty) or ``target``, p dense. Writes residual, objective gap,
    ‖p − p*‖ bound and ‖z_q − z_q*‖ bound of rows lo..hi."""
    K = G.shape[1]
    dense_target = target.shape[0] > 0
    g = np.empty(K, dtype=G.dtype)
    support = np.empty(K, dtype=np.int64)
    weight = np.empty(K, dtype=p.dtype)
    lam_t = G.dtype.type(lam)
    for n in range(lo, hi):
        pn = p[n]
        if dense_target:
            tn = target[n]
            for k in range(K):
                g[k] = G[n, k] + lam_t * (pn[k] - tn[k])
        else:
            for k in range(K):
                g[k] = G[n, k] + lam_t * pn[k]
            g[nearest[n]] -= lam_t
        n_support = _ZERO
        for k in range(K):
            if pn[k] != 0:  # a nan too
                support[n_support] = k
                weight[n_support] = pn[k]
                n_support += 1
        residual[n], gap[n], error[n], q_error[n] = _certificate_row(g, _row_min(g), support, weight, n_support, lam,
                                                                     scale[n])


@njit(**_JIT)
def lasso_certificate_rows(G, w, w_idx, w_val, scale, alpha, ridge, nonneg, residual, g_max, w_abs, w_sq, w_g, lo,
                           hi):
    """The per-row sweep of the lasso certificate (:func:`scq.solvers.certificate.certify_lasso`)
    over rows ``lo..hi`` of G = E(z_q − z) and the weights w, ``scale`` the rows' scales (N,):
    with g = G + ρw, the residual max_k |min(w_k, (α + g_k)/s)| (w_k's positive part unless
    ``nonneg``; signed: also |min((−w_k)⁺, (α − g_k)/s)|), ‖g‖∞ (``nonneg``: max(−g)⁺), Σ|w_k|,
    Σw_k² and Σw_k·g_k (sums in float64). One pass where the torch path makes ~15 over (N, K)
    tensors; all five nan where G or w holds a nan, as the torch path's are.

    w dense (N, K), or (``w`` (0, K)) sparse: row n is Σ_j w_val[n, j]·one_hot(w_idx[n, j]) (as
    ``SparseWeights.to_dense``), spread into one (K,) row at a time: no (N, K) w in memory."""
    K = G.shape[1]
    zero = G.dtype.type(0)
    a = G.dtype.type(alpha)
    rho = G.dtype.type(ridge)
    sparse = w.shape[0] == 0
    row = np.zeros(K if sparse else 0, dtype=G.dtype)
    for n in range(lo, hi):
        if sparse:
            for j in range(w_idx.shape[1]):
                row[w_idx[n, j]] += w_val[n, j]
            wn = row
        else:
            wn = w[n]
        s = scale[n]
        res = zero
        emax = zero
        total_abs = 0.0
        total_sq = 0.0
        total_wg = 0.0
        bad = False
        for k in range(K):
            wk = wn[k]
            gk = G[n, k] + rho * wk
            u = wk if nonneg else max(wk, zero)
            up = (a + gk) / s
            down = (a - gk) / s
            r = abs(min(u, up))
            if not nonneg:
                r = max(r, abs(min(max(-wk, zero), down)))
            res = max(res, r)
            e = -gk
            emax = max(emax, max(e, zero) if nonneg else abs(e))
            total_abs += abs(np.float64(wk))
            total_sq += np.float64(wk) * np.float64(wk)
            total_wg += np.float64(wk) * np.float64(gk)
            # min and max drop a nan where torch's propagate it: look for one in what they read
            # (inf inputs make inf/inf here)
            bad |= (up != up) | (down != down) | (wk != wk)
        if bad:
            residual[n] = g_max[n] = w_abs[n] = w_sq[n] = w_g[n] = np.nan
        else:
            residual[n], g_max[n], w_abs[n], w_sq[n], w_g[n] = res, emax, total_abs, total_sq, total_wg
        for j in range(w_idx.shape[1] if sparse else 0):  # the row back to zeros
            row[w_idx[n, j]] = zero


@njit(**_JIT)
def nearest_rows(scores, sq_norms, out, lo, hi):
    """argmin_k ‖e_k‖² − 2 scores[n, k] for rows lo..hi into ``out``: the formula of
    :func:`scq.problems.nearest_code` (the same float values: 2s is exact, one rounding in the
    difference), in one pass without its two (N, K) temporaries; ties go to the lower code and a
    nan is chosen first, as torch's argmin."""
    K = scores.shape[1]
    two = scores.dtype.type(2)
    for n in range(lo, hi):
        best = np.inf
        best_k = 0
        for k in range(K):
            v = sq_norms[k] - two * scores[n, k]
            if v != v:
                best_k = k
                break
            if v < best:
                best = v
                best_k = k
        out[n] = best_k


ENTERING_BLOCK = 16  # codes per block of the entering kernel's first pass (at most)
ENTERING_LANES = 64  # blocks at least (K permitting): the width of its vectorized sweep


@njit(**_JIT)
def _entering_score(g, k, in_w, signed, neg_inf):
    """Code k's entering score: −g_k (signed codes: |g_k|), −inf where it is in W already (with
    the sign it would enter with)."""
    if signed:
        return neg_inf if in_w[k] & (2 if g[k] > 0 else 1) else abs(g[k])
    return neg_inf if in_w[k] else -g[k]


@njit(**_JIT)
def _entering_row(g, code, sign, valid, signed, in_w, score, block_top, low, best, best_code, at_least):
    """The ``n_add`` = len(``best``) most violating codes of one row outside its working set, from
    its gradients ``g`` (K,): score −g_k (signed codes: |g_k|), codes already in W (with the sign
    they would enter with) excluded; the scores in descending order (ties: the lower code first)
    into ``best``, their codes into ``best_code``. Only codes scoring ``at_least`` or more are
    wanted (−inf: any): the others may be left out, their places −inf (code 0) — the end of a
    round asks only for the codes that violate, most rows' few after the first rounds, and skips
    sorting the rest. ``in_w`` (K,) comes in and leaves zeroed; the rest is scratch.

    Two passes instead of a sorted buffer over the whole row: a branch-free sweep gives every
    code's score and each block's largest; the ``n_add``-th largest block top is a floor no
    entering code is below (that many distinct codes reach it), so the second pass sorts only the
    codes of the blocks that reach it (about ``n_add`` blocks; 1.2–1.4× faster than one pass). A
    block is strided, codes b, b + B, b + 2B, … (B blocks of at most ``ENTERING_BLOCK`` codes, B at
    least ``ENTERING_LANES`` where K allows; :func:`_entering_scratch`), so that
    the sweep's maxima are elementwise over B lanes and vectorize, where a block of neighbours
    needs a reduction per block, which does not: the kernel took half the time (1.2 → 0.57 µs at
    K = 1024), ~9% of the compiled rounds at N = K = 1024, D = 16."""
    K = g.shape[0]
    m = code.shape[0]
    n_add = best.shape[0]
    n_blocks = block_top.shape[0]
    neg_inf = g.dtype.type(-np.inf)
    for j in range(m):
        if valid[j]:
            in_w[code[j]] |= 1 if (not signed or sign[j] > 0) else 2
    for b in range(n_blocks):
        block_top[b] = neg_inf
    for i in range(score.shape[0] // n_blocks):  # (each block's codes)
        base = i * n_blocks
        if base + n_blocks <= K:  # (branch-free: the codes' loop vectorizes)
            for b in range(n_blocks):
                v = _entering_score(g, base + b, in_w, signed, neg_inf)
                score[base + b] = v
                block_top[b] = v if v > block_top[b] else block_top[b]
        else:  # the last blocks run past K: −inf there
            for b in range(n_blocks):
                v = _entering_score(g, base + b, in_w, signed, neg_inf) if base + b < K else neg_inf
                score[base + b] = v
                block_top[b] = v if v > block_top[b] else block_top[b]
    # The floor: ``at_least``, or above it the n_add-th largest block top when n_add or more
    # blocks reach ``at_least`` (fewer blocks than n_add: every code is a candidate).
    floor = g.dtype.type(at_least)
    reaching = 0
    for b in range(n_blocks):
        reaching += block_top[b] >= floor
    for j in range(n_add):  # places no candidate fills
        best[j] = neg_inf
        best_code[j] = 0
    if reaching >= n_add:  # (then n_blocks ≥ n_add too)
        for j in range(n_add):
            low[j] = neg_inf
        for b in range(n_blocks):
            v = block_top[b]
            if v > low[n_add - 1]:
                pos = n_add - 1
                while pos > 0 and v > low[pos - 1]:
                    low[pos] = low[pos - 1]
                    pos -= 1
                low[pos] = v
        floor = max(floor, low[n_add - 1])
    filled = 0
    for b in range(n_blocks):
        if not block_top[b] >= floor:
            continue
        for k in range(b, K, n_blocks):  # (not in code order across blocks: ties compare codes)
            v = score[k]
            if not v >= floor or (filled == n_add and not _ranks_above(v, k, best[n_add - 1],
                                                                         best_code[n_add - 1])):
                continue
            pos = filled if filled < n_add else n_add - 1
            while pos > 0 and _ranks_above(v, k, best[pos - 1], best_code[pos - 1]):
                if pos < n_add:
                    best[pos] = best[pos - 1]
                    best_code[pos] = best_code[pos - 1]
                pos -= 1
            best[pos] = v
            best_code[pos] = k
            if filled < n_add:
                filled += 1
    for j in range(m):
        if valid[j]:
            in_w[code[j]] = 0


@njit(**_JIT)
def _ranks_above(v, k, other_v, other_k):
    """Whether score ``v`` of code ``k`` ranks above ``other_v`` of ``other_k``: larger, or equal
    with the lower code."""
    return v > other_v or (v == other_v and k < other_k)


@njit(**_JIT)
def _entering_scratch(n_add, G):
    """Scratch of :func:`_entering_row` for G's rows: (in_w, score, block_top, low)."""
    K = G.shape[1]
    n_blocks = max((K + ENTERING_BLOCK - 1) // ENTERING_BLOCK, min(K, ENTERING_LANES))
    per_block = (K + n_blocks - 1) // n_blocks
    return (np.zeros(K, dtype=np.int8), np.empty(n_blocks * per_block, dtype=G.dtype),
            np.empty(n_blocks, dtype=G.dtype), np.empty(n_add, dtype=G.dtype))


@njit(**_JIT)
def entering_rows(G, code, sign, valid, signed, out_score, out_code, out_sign, lo, hi):
    """:func:`_entering_row` for rows lo..hi of G (n, K) (the gradients of
    ``working_set._gradients``), with the entering signs −sign(g_k) of signed codes (``out_sign``
    comes in as ones)."""
    in_w, score, block_top, low = _entering_scratch(out_score.shape[1], G)
    for n in range(lo, hi):
        _entering_row(G[n], code[n], sign[n], valid[n], signed, in_w, score, block_top, low, out_score[n],
                      out_code[n], -np.inf)
        if signed:
            for j in range(out_score.shape[1]):
                out_sign[n, j] = -1.0 if G[n, out_code[n, j]] > 0 else 1.0


@njit(**_JIT)
def table_entering_rows(table, scores, extra, start, bonus, u, code, sign, valid, signed, out_score, out_code,
                        out_sign, lo, hi):
    """:func:`entering_rows` for rows lo..hi at the weights ``u`` on W, each row's gradients made
    from the codebook's Gram matrix (:func:`_table_gradient`; ``extra`` (0, 0): none, ``start``
    (0,): none) one row at a time: no (N, K) G in memory."""
    K = table.shape[0]
    has_extra = extra.shape[0] > 0
    has_start = start.shape[0] > 0
    no_extra = np.empty(0, dtype=extra.dtype)
    g = np.empty((1, K), dtype=table.dtype)
    nz = np.empty(code.shape[1], dtype=np.int64)
    w = np.empty(code.shape[1], dtype=table.dtype)
    in_w, score, block_top, low = _entering_scratch(out_score.shape[1], g)
    for n in range(lo, hi):
        _table_gradient(table, scores[n], code[n], sign[n], u[n], extra[n] if has_extra else no_extra,
                        start[n] if has_start else -1, bonus, g[0], nz, w)
        _entering_row(g[0], code[n], sign[n], valid[n], signed, in_w, score, block_top, low, out_score[n],
                      out_code[n], -np.inf)
        if signed:
            for j in range(out_score.shape[1]):
                out_sign[n, j] = -1.0 if g[0, out_code[n, j]] > 0 else 1.0


# A row's state in :func:`table_rounds_rows`: still running, done (certified or broken down), out of
# rounds, or outgrown (its support and violators need a wider W; the violators wait at its row of
# ``new_code``, ``new_sign``, ``violating``, placed when the caller has widened W and runs it again).
ROW_RUNNING, ROW_DONE, ROW_OUT_OF_ROUNDS, ROW_OUTGROWN, ROW_WIDER_ENTRY = 0, 1, 2, 3, 4


@njit(**_JIT)
def _fw_scratch(n_steps, n_blocks, width, table):
    """Scratch of :func:`_frank_wolfe_start` for up to ``n_blocks`` blocks of ``n_steps`` steps and
    a first W of ``width`` slots, one more for each step past the first block (``table``: (K, K),
    or empty where no row takes the start)."""
    K = table.shape[0]
    most_steps = n_steps * max(n_blocks, 1)
    widest = width + most_steps - n_steps
    return (np.empty(K, dtype=table.dtype), np.empty(K, dtype=table.dtype), np.empty(K, dtype=table.dtype),
            np.empty(min(K, ENTERING_LANES), dtype=table.dtype), np.empty(most_steps + 1, dtype=np.int64),
            np.empty(most_steps + 1, dtype=np.float64), _entering_scratch(widest, table),
            np.empty(widest, dtype=table.dtype), np.empty(widest, dtype=np.int64))


@njit(**_JIT)
def _fw_pass(tp, Tj, keep, at, lin, g, block_min):
    """Frank–Wolfe's pass over K: tp ← keep·tp + at·T_j, g = tp − lin, and the minima of g over
    the strided blocks b, b + B, … (B = len(block_min)), elementwise over the B lanes: the pass
    vectorizes (over whole blocks; the last, partial one after)."""
    K = tp.shape[0]
    B = block_min.shape[0]
    for b in range(B):
        block_min[b] = np.inf
    full = K // B
    for i in range(full):
        base = i * B
        for b in range(B):
            k = base + b
            t = keep * tp[k] + at * Tj[k]
            tp[k] = t
            v = t - lin[k]
            g[k] = v
            block_min[b] = v if v < block_min[b] else block_min[b]
    for k in range(full * B, K):
        t = keep * tp[k] + at * Tj[k]
        tp[k] = t
        v = t - lin[k]
        g[k] = v
        b = k - full * B
        block_min[b] = v if v < block_min[b] else block_min[b]


@njit(**_JIT)
def _fw_block_min(g, b, n_blocks):
    """The smallest of g over the strided block b (codes b, b + n_blocks, …) and its code
    (ties: the lower)."""
    v, at = g.dtype.type(np.inf), b
    for k in range(b, g.shape[0], n_blocks):
        if g[k] < v:
            v, at = g[k], k
    return v, at


@njit(**_JIT)
def _frank_wolfe_start(table, scores, extra, start, bonus, ridge, n_steps, n_blocks, width, code, sign, u, s, valid,
                       scratch):
    """A row's first W (SCQ, the codebook's Gram matrix path), in place on its ``code``, ``sign``,
    ``u``, ``s``, ``valid`` (W's slots; slot 0 comes in holding the start code): ``n_steps``
    Frank–Wolfe steps over all K codes on ½pᵀHp − bᵀp over the simplex (H = T + ρI, T = EEᵀ =
    ``table``, b = ``scores`` + ``extra``, or + ``bonus`` at the ``start`` code), from the one-hot
    start, each with the exact line search, and a block of ``n_steps`` more (up to ``n_blocks``
    blocks) after a block whose steps each picked a code not picked before; then W = the codes FW
    gave weight to, with their weights (a feasible start: ``s`` marks them), and the codes of most
    negative gradient there, up to ``width`` slots and one more for each step past the first
    block (capped by the scratch, :func:`_fw_scratch`, and W's slots). Returns how many slots it
    filled.

    Why: the one-hot start ranks codes badly (the exact supports hold codes ranked ~600th of
    1024 there), so rows needed ~4 rounds of W's work; from FW's point most rows' supports lie in
    its first W, and half to three quarters of them finish in one round (docs/math.md §2). The
    blocks that run on serve the larger supports (random codes at N = K = 1024: ~22 codes at
    D = 64, ~40 at D = 256), which 10 steps cannot reach: a block of all-new codes says so (74%
    and 100% of those rows; 10% at D = 16, 0–3% with the data-like codebook), and their rows took
    2.1 and 3.7 rounds; with the blocks, 1.4 and 2.1.

    A step is one pass over K: Hp ← (1 − a)Hp + a(T_j + ρe_j), g = Hp − b and the minima of g
    over strided blocks (elementwise over the blocks, so that the pass vectorizes; a running
    minimum does not); the ρ at j goes in after the pass, its block's minimum made again. b is
    one K-vector (the start's bonus in it); pᵀHp and bᵀp are carried as scalars, the weights as a
    list of codes."""
    tp, g, lin, block_min, fw_code, fw_weight, entering, best, best_code = scratch
    K = table.shape[0]
    m = code.shape[0]
    n_lanes = block_min.shape[0]
    if extra.shape[0] > 0:  # b, summed once a row
        for k in range(K):
            lin[k] = scores[k] + extra[k]
    else:
        lin[:] = scores
    if start >= 0:
        lin[start] += bonus
    c0 = code[0]
    rho = tp.dtype.type(ridge)
    tp[:] = 0
    _fw_pass(tp, table[c0], tp.dtype.type(0), tp.dtype.type(1), lin, g, block_min)
    tp[c0] += rho
    g[c0] += rho
    block_min[c0 % n_lanes] = _fw_block_min(g, c0 % n_lanes, n_lanes)[0]
    A = tp[c0]  # pᵀHp
    B = lin[c0]  # bᵀp
    n_fw = 1
    fw_code[0] = c0
    fw_weight[0] = 1.0
    steps = 0
    limit = n_steps
    repeated = False  # whether a step of this block picked a code FW had picked before
    while steps < limit:
        bb = _ZERO
        for b in range(1, n_lanes):
            if block_min[b] < block_min[bb]:
                bb = b
        gj, j = _fw_block_min(g, bb, n_lanes)
        gd = gj - (A - B)  # gᵀ(e_j − p)
        if not gd < 0:
            break
        hj = tp[j]
        tjj = table[j, j] + ridge
        curv = tjj - 2 * hj + A
        a = min(-gd / curv, 1.0) if curv > 0 else 1.0
        A = (1 - a) * (1 - a) * A + 2 * a * (1 - a) * hj + a * a * tjj
        B = (1 - a) * B + a * lin[j]
        keep = tp.dtype.type(1 - a)
        at = tp.dtype.type(a)
        _fw_pass(tp, table[j], keep, at, lin, g, block_min)
        tp[j] += at * rho
        g[j] += at * rho
        block_min[j % n_lanes] = _fw_block_min(g, j % n_lanes, n_lanes)[0]
        found = False
        for t in range(n_fw):
            fw_weight[t] *= 1 - a
            if fw_code[t] == j:
                fw_weight[t] += a
                found = True
        if found:
            repeated = True
        else:
            fw_code[n_fw] = j
            fw_weight[n_fw] = a
            n_fw += 1
        steps += 1
        # A block of steps that each found a new code: the support is larger than FW has reached
        # (random codes at D = 64 to 256: 20 to 40 codes), so FW goes on a block more.
        if steps == limit and limit < n_steps * n_blocks and not repeated:
            limit += n_steps
    # W: FW's codes with their weights, then the most negative gradients outside them, a slot more
    # for each step past the first block.
    width = min(width + max(steps - n_steps, 0), best.shape[0], m)
    for a in range(m):
        valid[a] = False
        u[a] = 0
        s[a] = False
        sign[a] = 1
    n_w = 0
    total = 0.0
    for t in range(n_fw):
        if fw_weight[t] > 0 and n_w < m:
            code[n_w] = fw_code[t]
            u[n_w] = fw_weight[t]
            s[n_w] = True
            valid[n_w] = True
            total += fw_weight[t]
            n_w += 1
    for a in range(n_w):
        u[a] /= total
    n_top = width - n_w
    if n_top > 0:
        in_w, score, block_top, low = entering
        _entering_row(g, code, sign, valid, _NO, in_w, score, block_top, low[:n_top], best[:n_top],
                      best_code[:n_top], -np.inf)
        for t in range(n_top):
            if best[t] > -np.inf:
                code[n_w] = best_code[t]
                valid[n_w] = True
                n_w += 1
    return n_w


@njit(**_JIT)
def _grow_entry(r, n_add, add_cap, wide_cap, d, s, row_add, row_state, width):
    """Row ``r`` filled every entry slot: it examines twice as many codes next round, up to
    ``add_cap`` (:func:`scq.solvers.engine.working_set.more_per_round`'s bound), or up to
    ``wide_cap`` once its support exceeds d + 1 (the bound does not hold there). Past the entry
    arrays' ``width`` the row stops as ``ROW_WIDER_ENTRY`` (the caller widens them and calls
    again); returns whether it runs on."""
    cap = add_cap
    if 2 * n_add > add_cap:
        support = 0
        for j in range(s.shape[1]):
            if s[r, j]:
                support += 1
        if support > d + 1:
            cap = wide_cap
    row_add[r] = min(2 * n_add, cap)
    if row_add[r] > width:
        row_state[r] = ROW_WIDER_ENTRY
        return False
    return True


@njit(**_JIT)
def table_rounds_rows(E, E_out, table, scores, code, sign, z, extra, start, bonus, l1, ridge, signed, u, s, valid,
                      tol, n_iter, patience, simplex, max_iter, drop_tol, tiny, slack, allowance, refine, lam,
                      cert_scale, cert,
                      max_rounds, grow_after, add_cap, cache_gram, cache_code, rows, row_rounds, row_add, row_iters,
                      row_state, broken, new_code, new_sign, violating, need, fw_steps, fw_blocks, fw_width, lo,
                      hi):
    """Every certificate round of rows ``rows[lo:hi]``, each row to its end before the next row
    starts, where the codebook's Gram matrix ``table`` = EEᵀ (K, K) and ``scores`` ZEᵀ give each
    row's systems and gradients (``working_set.uses_codebook_gram``): a row needs nothing of the
    others, so its rounds run back to back in one call, with no pass of the batch between them
    (three parallel loops, their allocations and a host round trip per round: 8–10% of a solve
    at N = K = 1024, D = 16), its data still in the core's cache from the round before.

    A round of a row is the batch loop's, step for step: :func:`_round_row` (its work on W),
    :func:`_table_gradient` and :func:`_finish_row` (its entering codes, verdict and certificate),
    :func:`_place_row` (its next W); the answers are the same. The batch loop's one difference:
    the codes examined per round double (from round ``grow_after`` on; see :func:`_grow_entry`)
    for the rows that fill every entry slot, not for all rows when one does.

    Arguments as in :func:`round_rows` and :func:`finish_rows` (``E_out``, ``cache_*``: as there,
    unused here), all at the batch row r = ``rows[i]``; per row: rounds run (``row_rounds``),
    codes examined per round (``row_add``), active-set iterations (``row_iters``), state
    (``row_state``: ``ROW_*``), the widest W it placed (``need``). A row stops when done, out of
    ``max_rounds``, outgrown (W's width, code.shape[1], too narrow) or wanting more entry slots
    than ``new_code`` has: the caller widens W or those arrays and calls again for these rows; the
    outgrown ones place their waiting violators first. ``fw_steps`` > 0 (SCQ's rows only): a row
    that has run no round yet first makes its W of ``fw_width`` slots or more with
    :func:`_frank_wolfe_start`, in up to ``fw_blocks`` blocks of steps (the caller leaves W holding
    just the start code)."""
    m = code.shape[1]
    K = table.shape[0]
    has_extra = extra.shape[0] > 0
    has_start = start.shape[0] > 0
    round_scratch = _round_scratch(m, E.shape[0], E.shape[1], E.dtype, refine)
    entry_width = new_code.shape[1]  # the entry arrays' (the caller widens them for ROW_WIDER_ENTRY rows)
    wide_cap = K * (2 if signed else 1)
    finish_scratch = _finish_scratch(entry_width, m, table, u)
    place_scratch = _place_scratch(m, code, sign, u)
    g = np.empty(K, dtype=table.dtype)
    nz = np.empty(m, dtype=np.int64)
    w_nz = np.empty(m, dtype=table.dtype)
    no_extra = np.empty(0, dtype=extra.dtype)
    no_zq = np.empty((0, E_out.shape[1]), dtype=E_out.dtype)
    fw = fw_steps > 0 and simplex and not signed
    fw_scratch = _fw_scratch(fw_steps if fw else 0, fw_blocks, fw_width, table[:K if fw else 0])
    for n in range(lo, hi):
        r = rows[n]
        running = True
        carried = _ZERO  # (the scratch's factor is another row's)
        if fw and row_rounds[r] == 0 and row_state[r] == ROW_RUNNING:
            width = _frank_wolfe_start(table, scores[r], extra[r] if has_extra else no_extra,
                                       start[r] if has_start else -1, bonus, ridge, fw_steps, fw_blocks, fw_width,
                                       code[r], sign[r], u[r], s[r], valid[r], fw_scratch)
            need[r] = max(need[r], width)
        if row_state[r] == ROW_OUTGROWN:  # W is wide enough now: its violators enter
            row_state[r] = ROW_RUNNING
            n_add = row_add[r]
            _place_row(r, code, sign, u, s, valid, new_code[r, :n_add], new_sign[r, :n_add], violating[r, :n_add],
                       place_scratch)
            if violating[r, n_add - 1] and row_rounds[r] >= grow_after:
                running = _grow_entry(r, n_add, add_cap, wide_cap, z.shape[1], s, row_add, row_state,
                                          entry_width)
        elif row_state[r] == ROW_WIDER_ENTRY:  # the entry arrays are wide enough now
            row_state[r] = ROW_RUNNING
        while running:
            row_rounds[r] += 1
            nu, residual, state, carried = _round_row(
                E, E_out, table, scores, code, sign, z, extra, start, bonus, l1, ridge, n, r, cache_gram, cache_gram,
                cache_code, cache_gram, cache_gram, cache_code, u, s, valid, tol, n_iter, patience, simplex, max_iter,
                drop_tol, tiny, slack, refine, no_zq, round_scratch, carried)
            nu = g.dtype.type(nu)  # as the batch loop keeps it: in the systems' dtype
            row_iters[r] += state >> 2
            _table_gradient(table, scores[r], code[r], sign[r], u[r], extra[r] if has_extra else no_extra,
                            start[r] if has_start else -1, bonus, g, nz, w_nz)
            n_add = row_add[r]
            last = row_rounds[r] == max_rounds
            done, width = _finish_row(g, r, l1, signed, code, sign, valid, s, nu, residual, state, tol, allowance,
                                      broken, new_code[r, :n_add], new_sign[r, :n_add], violating[r, :n_add], u,
                                      lam, cert_scale, last, cert, finish_scratch)
            running = False
            if done:
                row_state[r] = ROW_DONE
            elif last:
                row_state[r] = ROW_OUT_OF_ROUNDS
            elif width > m:
                row_state[r] = ROW_OUTGROWN
                need[r] = max(need[r], width)
            else:
                need[r] = max(need[r], width)
                _place_row(r, code, sign, u, s, valid, new_code[r, :n_add], new_sign[r, :n_add],
                           violating[r, :n_add], place_scratch)
                running = True
                if violating[r, n_add - 1] and row_rounds[r] >= grow_after:
                    running = _grow_entry(r, n_add, add_cap, wide_cap, z.shape[1], s, row_add, row_state,
                                          entry_width)


# The parallel launchers: one row range per thread of Numba's pool (``bounds``: the ranges'
# edges). Numba's OpenMP pool, not Python threads: beside torch's own pool, whose idle threads
# spin, Python threads measured 1.4× slower (they barely overlapped).
#
# The pool runs a row kernel through its address (a first-class function, Numba's
# ``WrapperAddressProtocol``), not by name. Called by name, a kernel's machine code is linked into
# each parallel function that calls it and optimized and compiled there again, in the 4 modules
# Numba builds for one parallel loop (``table_rounds_par`` took 76 s with its kernel, against 47 s
# for the kernel alone). Called through its address, a kernel compiles once, and the loop's modules
# hold only the loop: a variant's first-use compile took a third less (float32: 86 s, from 136 s).


@njit(parallel=True, **_JIT)
def _each_range(rows, bounds, *args):
    for t in prange(bounds.shape[0] - 1):
        rows(*args, bounds[t], bounds[t + 1])


@njit(parallel=True, **_JIT)
def _each_range_own(rows, bounds, own, *args):
    # ``own[t]``: the range's own output (a per-thread partial sum), passed after ``args``.
    for t in prange(bounds.shape[0] - 1):
        rows(*args, own[t], bounds[t], bounds[t + 1])


_UINT64_FROM = 2**63  # a Python int from here on is typed uint64, below it int64


def _types_key(args) -> tuple:
    # What decides the arguments' Numba types, cheaply: Numba's own fingerprints (dtype, ndim,
    # layout, writeable: what its dispatcher keys compiled versions by; ~0.1 µs an array against
    # ~14 µs for ``typeof``), and for each Python int, whose fingerprint is one for all, whether
    # it is typed uint64 (from 2^63 on) rather than int64.
    try:
        key = tuple(map(_fingerprint, args))
    except (TypeError, ValueError, NotImplementedError):
        return tuple(map(typeof, args))
    return key, tuple(a >= _UINT64_FROM for a in args if type(a) is int)


class _Address:
    """A compiled kernel as a first-class function (Numba's wrapper-address protocol: its C
    wrapper's address and signature), with its Numba type made once: as a ``WrapperAddressProtocol``
    subclass it would be typed afresh at every call (table_rounds' kernel: 28 µs against 3.6 µs)."""

    def __init__(self, compiled):
        self._signature = compiled.signature
        self._address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_cfunc_wrapper_name)
        self._numba_type_ = types.FunctionType(compiled.signature)

    def __wrapper_address__(self) -> int:
        return self._address

    def signature(self):
        return self._signature


class InParallel:
    """``kernel``, a ``*_rows`` function, run over row ranges in parallel through its address:
    ``launch(*args, bounds)`` is ``kernel(*args, lo, hi)`` for each range (with ``own``: the last
    of ``args`` is per range, ``args[-1][t]`` for range t). The kernel is compiled once per types
    of ``args`` (Numba's on-disk cache keeps it) and its address kept here."""

    def __init__(self, kernel, own: bool = False):
        self.kernel, self.own, self._compiled = kernel, own, {}
        self.__name__ = self.__qualname__ = kernel.__name__.replace("_rows", "_par")
        self.__doc__ = f"``{kernel.__name__}`` over row ranges in parallel: ``(*its arguments but lo, hi, bounds)``."

    def _address(self, args):
        key = _types_key(args)
        found = self._compiled.get(key)
        if found is None:
            arg_types = [typeof(a) for a in args]
            if self.own:  # the kernel gets own[t]: Numba's type of that item
                own = arg_types[-1]
                arg_types[-1] = own.copy(ndim=own.ndim - 1, layout="C" if own.layout == "C" else "A")
            signature = tuple(arg_types) + (types.int64, types.int64)
            self.kernel.compile(signature)
            found = self._compiled[key] = _Address(self.kernel.overloads[signature])
        return found

    def __call__(self, *args):
        *args, bounds = args
        rows = self._address(args)
        # Called through its address (its C wrapper), a kernel cannot raise into the loop: Numba
        # hands the exception to ``sys.unraisablehook`` and the range returns. (The kernels raise
        # nothing of their own; an allocation can fail.) Taken here during the launch, it is
        # raised after it, as a call by name raised it: the caller (fused) falls back to torch.
        previous, raised = sys.unraisablehook, []

        def hook(unraisable):
            if isinstance(unraisable.object, str) and "numba" in unraisable.object:
                raised.append(unraisable.exc_value)  # (the object is Numba's context's repr)
            else:
                previous(unraisable)

        sys.unraisablehook = hook
        try:
            if self.own:
                _each_range_own(rows, bounds, args[-1], *args[:-1])
            else:
                _each_range(rows, bounds, *args)
        finally:
            if sys.unraisablehook is hook:  # (not where another launch has set its own since)
                sys.unraisablehook = previous
        if raised:
            raise raised[0]


fista_par = InParallel(fista_rows)
active_set_par = InParallel(active_set_rows)
backward_par = InParallel(backward_rows, own=True)
combine_par = InParallel(combine_rows)
combine_backward_par = InParallel(combine_backward_rows, own=True)
round_par = InParallel(round_rows)
table_rounds_par = InParallel(table_rounds_rows)
finish_par = InParallel(finish_rows)
place_par = InParallel(place_rows)
gram_par = InParallel(gram_rows)
scq_certificate_par = InParallel(scq_certificate_rows)
lasso_certificate_par = InParallel(lasso_certificate_rows)
nearest_par = InParallel(nearest_rows)
entering_par = InParallel(entering_rows)
table_entering_par = InParallel(table_entering_rows)
