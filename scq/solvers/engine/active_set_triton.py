r"""The batched active-set solve of :mod:`scq.solvers.engine.active_set`, fused into one Triton
kernel (CUDA): every iteration of every row in one launch, with no host sync.

The torch path runs the batch in lockstep, ~130 launches per iteration and a host sync every
``check_every`` iterations to learn which rows are done. Here one program per row keeps H_n
(m×m), b_n and the iterate in registers and loops until its own row is done (or ``max_iter``):

1. the equality solve on the support S: Gauss–Jordan elimination of [H_SS | b_S, 1_S] (identity
   off S; no pivoting, as Cholesky: a non-positive pivot means H_SS is not numerically positive
   definite, and the row stops as broken down);
2. the same ratio test, face optimum, multipliers, multi-add / single-add anti-cycling and
   degenerate-face acceptance as :func:`scq.solvers.engine.active_set._iterate`, line for line;
3. with ``refine`` (float32 systems), one step of iterative refinement of a finished row on its
   support, as :func:`scq.solvers.engine.working_set._refine`: the residual summed in float64 from
   the codes themselves (gathered from E in tiles of D), the correction by the same elimination.

The two paths agree to rounding (tests/test_fused.py runs the kernel under ``TRITON_INTERPRET=1``
on the CPU against the torch solve). Used where :func:`scq.solvers.engine.fista_triton.wanted` says
(CUDA, m ≤ ``MAX_SLOTS``, Triton installed, fused kernels not switched off).
"""

from __future__ import annotations

import torch

from dataclasses import dataclass

from .active_set import DEGENERATE_SLACK, ActiveSetResult
from .fista_triton import LAUNCH_OPTIONS, num_warps

_KERNEL = None


# Columns of D per tile of the refinement's gather: 8 keeps the kernel at the registers it has
# without a refinement (ptxas for sm_90, float32: 72/124/217 at 16/32/64 slots against 71/123/219;
# tiles of 32 took 168/196/254, i.e. fewer rows resident per SM).
REFINE_TILE_D = 8


@dataclass(frozen=True)
class Refinement:
    """What the refinement's residual is summed from: the codes E (K, D), each row's slots
    ``code`` and ``sign`` (N, m), inputs ``z`` (N, D) and linear term ``linear`` (N, m) (b = Cz +
    linear), and the ridge ρ, all in the inputs' dtype."""

    E: torch.Tensor
    code: torch.Tensor
    sign: torch.Tensor
    z: torch.Tensor
    linear: torch.Tensor
    ridge: float


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl

        @triton.jit
        def eliminate(Hn, sf, rhs, m, i, eye):
            """H_SS⁻¹rhs and H_SS⁻¹1_S (0 off S) by Gauss–Jordan on H restricted to S (``sf`` 0/1),
            identity off it; and 1 where a pivot was not positive (not numerically definite)."""
            A = Hn * (sf[:, None] * sf[None, :]) + tl.where(eye, 1.0 - sf[:, None], 0.0)
            r1 = rhs * sf
            r2 = sf
            failed = m * 0
            # A loop, not unrolled: unrolling BLOCK = 64 steps of 64×64 tile ops made ~5 MB of PTX
            # (8 MB in float64) and a compile of ~1 min (4 min in float64) at the first call with
            # m > 32; and only the m live slots need a step (the padding is identity).
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

        # Triton looks a called @jit function up among the caller's module globals, not its closure.
        globals()["eliminate"] = eliminate

        @triton.jit
        def active_set_rows(H, b, p0, s0, valid, tol, out_p, out_s, out_nu, out_state, out_res, m, max_iter,
                            max_support, drop_tol, tiny, slack,
                            s_hn, s_hi, s_hj, s_bn, s_pn, s_sn, s_vn, s_op, s_os,
                            E, code, sign, z, lin, D, ridge_hi, ridge_lo, s_en, s_cn, s_gn, s_zn, s_ln,
                            SIMPLEX: tl.constexpr, CAP_SUPPORT: tl.constexpr, BLOCK: tl.constexpr,
                            REFINE: tl.constexpr, BLOCK_D: tl.constexpr):
            # Flags are int32 0/1 (scalars and vectors alike): the interpreter cannot mix a
            # scalar bool with a vector bool in & and |.
            row = tl.program_id(0)
            i = tl.arange(0, BLOCK)
            inside = i < m
            Hn = tl.load(H + row * s_hn + i[:, None] * s_hi + i[None, :] * s_hj,
                         mask=inside[:, None] & inside[None, :], other=0.0)
            bn = tl.load(b + row * s_bn + i, mask=inside, other=0.0)
            p = tl.load(p0 + row * s_pn + i, mask=inside, other=0.0)
            s = tl.load(s0 + row * s_sn + i, mask=inside, other=0).to(tl.int32)
            ok = tl.load(valid + row * s_vn + i, mask=inside, other=0).to(tl.int32)
            dual_tol = tl.load(tol + row)
            eye = i[:, None] == i[None, :]
            zero = tl.sum(p * 0.0, 0)  # a scalar of p's dtype
            nu = zero
            residual = zero
            izero = m * 0  # a scalar int32
            done = izero
            broken = izero
            single_add = izero
            progress = izero + 1
            iters = izero
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
                degenerate = stalled & single_add & (worst <= slack * dual_tol).to(tl.int32)
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
            if REFINE:
                # 3. One refinement step on the finished row's support S = {p > 0}: r_S = b_S −
                # H_SS p_S − ν1 summed in float64 as C(z − Cᵀp) + linear − ρp − ν, not from H.
                support = (p > 0.0).to(tl.int32) & done & (1 - broken)
                sf64 = support.to(tl.float64)
                codes = tl.load(code + row * s_cn + i, mask=support != 0, other=0)
                sg = tl.load(sign + row * s_gn + i, mask=inside, other=0.0).to(tl.float64)
                p64 = p.to(tl.float64) * sf64
                r = p64 * 0.0
                for d0 in range(0, D, BLOCK_D):  # z − Cᵀp and its products with the codes, a tile of D at a time
                    dd = d0 + tl.arange(0, BLOCK_D)
                    tile = tl.load(E + codes[:, None] * s_en + dd[None, :],
                                   mask=(support != 0)[:, None] & (dd < D)[None, :], other=0.0).to(tl.float64)
                    v = tl.load(z + row * s_zn + dd, mask=dd < D, other=0.0).to(tl.float64)
                    v = v - tl.sum((p64 * sg)[:, None] * tile, 0)
                    r += tl.sum(tile * v[None, :], 1)
                ridge = (tl.sum(r, 0) * 0.0 + ridge_hi) + ridge_lo  # ρ in float64, from its two float32 parts
                r = sg * r + tl.load(lin + row * s_ln + i, mask=inside, other=0.0).to(tl.float64) - ridge * p64
                if SIMPLEX:
                    r = r - nu.to(tl.float64)
                dx, dy, bad = eliminate(Hn, support.to(p.dtype), (r * sf64).to(p.dtype), m, i, eye)
                step = dx.to(tl.float64)
                d_nu = tl.sum(step, 0) * 0.0
                if SIMPLEX:  # the correction's sum is the constraint's residual 1 − 1ᵀp
                    d_nu = (tl.sum(step, 0) - (1.0 - tl.sum(p64, 0))) / tl.sum(dy.to(tl.float64), 0)
                    step = step - d_nu * dy.to(tl.float64)
                refined = p64 + step * sf64
                positive = tl.min(tl.where(support != 0, refined, 1.0), 0) > 0.0
                take = (tl.max(support, 0) > 0).to(tl.int32) & (bad == 0).to(tl.int32) & positive.to(tl.int32)
                p = tl.where((support & take) != 0, refined.to(p.dtype), p)
                nu = tl.where(take != 0, (nu.to(tl.float64) + d_nu).to(p.dtype), nu)
            tl.store(out_p + row * s_op + i, p, mask=inside)
            tl.store(out_s + row * s_os + i, s.to(tl.int8), mask=inside)
            tl.store(out_nu + row, nu)
            tl.store(out_res + row, residual)
            # state: bit 0 done, bit 1 broken; the rest: iterations run
            tl.store(out_state + row, done + 2 * broken + 4 * iters)

        _KERNEL = active_set_rows
    return _KERNEL


def solve_active_set_fused(H: torch.Tensor, b: torch.Tensor, weights: torch.Tensor, support: torch.Tensor,
                           valid: torch.Tensor, dual_tol: torch.Tensor, *, simplex: bool = True,
                           max_support: "int | None" = None, max_iter: int = 100,
                           refine: "Refinement | None" = None) -> ActiveSetResult:
    """:func:`scq.solvers.engine.active_set.solve_active_set` in one launch. ``iterations`` is a
    0-d tensor (the most any row ran), so that reading it costs no sync here. ``refine``: refine
    each finished row once on its support (``refined`` True in the result)."""
    import triton

    N, m = b.shape
    out_p = torch.empty_like(weights)
    out_s = torch.empty(N, m, dtype=torch.int8, device=b.device)
    out_nu = torch.empty(N, dtype=b.dtype, device=b.device)
    out_res = torch.empty(N, dtype=b.dtype, device=b.device)
    state = torch.zeros(N, dtype=torch.int32, device=b.device)
    if N:
        H, b, weights = H.contiguous(), b.contiguous(), weights.contiguous()
        s8, v8 = support.to(torch.int8).contiguous(), valid.to(torch.int8).contiguous()
        tol = dual_tol.reshape(N).to(b.dtype).contiguous()
        block = max(16, triton.next_power_of_2(m))
        finfo = torch.finfo(b.dtype)
        if refine is None:  # unused arguments: any tensor, zero sizes
            E = code = sign = z = lin = b
            D, ridge_hi, ridge_lo, block_d = 0, 0.0, 0.0, 16
        else:
            E, z = refine.E.contiguous(), refine.z.contiguous()
            code, sign, lin = refine.code.contiguous(), refine.sign.contiguous(), refine.linear.contiguous()
            D = E.shape[1]
            ridge_hi = float(torch.tensor(refine.ridge, dtype=torch.float32))  # ρ as two float32 scalars
            ridge_lo = float(refine.ridge - ridge_hi)
            block_d = REFINE_TILE_D
        _kernel()[(N,)](H, b, weights, s8, v8, tol, out_p, out_s, out_nu, state, out_res, m, int(max_iter),
                        int(max_support or 0), 16 * finfo.eps, finfo.tiny, DEGENERATE_SLACK,
                        H.stride(0), H.stride(1), H.stride(2), b.stride(0), weights.stride(0), s8.stride(0),
                        v8.stride(0), out_p.stride(0), out_s.stride(0),
                        E, code, sign, z, lin, D, ridge_hi, ridge_lo, E.stride(0), code.stride(0), sign.stride(0),
                        z.stride(0), lin.stride(0),
                        SIMPLEX=simplex, CAP_SUPPORT=max_support is not None, BLOCK=block,
                        REFINE=refine is not None, BLOCK_D=block_d, num_warps=num_warps(block), **LAUNCH_OPTIONS)
    done, broken = (state & 1) != 0, (state & 2) != 0
    iterations = (state >> 2).amax() if N else torch.zeros((), dtype=torch.int32, device=b.device)
    return ActiveSetResult(out_p, out_s != 0, out_nu, done & ~broken, iterations, out_res, broken,
                           refined=refine is not None)
