r"""The batched active-set solve of :mod:`scq.solvers.engine.active_set`, fused into one Triton
kernel (CUDA): every iteration of every row in one launch, with no host sync.

The torch path runs the batch in lockstep, ~130 launches per iteration and a host sync every
``check_every`` iterations to learn which rows are done. Here one program per row keeps H_n
(m×m), b_n and the iterate in registers and loops until its own row is done (or ``max_iter``):

1. the equality solve on the support S: Gauss–Jordan elimination of [H_SS | b_S, 1_S] (identity
   off S; no pivoting, as Cholesky: a non-positive pivot means H_SS is not numerically positive
   definite, and the row stops as broken down);
2. the same ratio test, face optimum, multipliers, multi-add / single-add anti-cycling and
   degenerate-face acceptance as :func:`scq.solvers.engine.active_set._iterate`, line for line.

The two paths agree to rounding (tests/test_fused.py runs the kernel under ``TRITON_INTERPRET=1``
on the CPU against the torch solve). Used where :func:`scq.solvers.engine.fista_triton.wanted` says
(CUDA, m ≤ ``MAX_SLOTS``, Triton installed, fused kernels not switched off).
"""

from __future__ import annotations

import torch

from .active_set import DEGENERATE_SLACK, ActiveSetResult
from .fista_triton import LAUNCH_OPTIONS, num_warps

_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import triton
        import triton.language as tl

        @triton.jit
        def active_set_rows(H, b, p0, s0, valid, tol, out_p, out_s, out_nu, out_state, out_res, m, max_iter,
                            max_support, drop_tol, tiny, slack,
                            s_hn, s_hi, s_hj, s_bn, s_pn, s_sn, s_vn, s_op, s_os,
                            SIMPLEX: tl.constexpr, CAP_SUPPORT: tl.constexpr, BLOCK: tl.constexpr):
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
                sf = s.to(p.dtype)
                A = Hn * (sf[:, None] * sf[None, :]) + tl.where(eye, 1.0 - sf[:, None], 0.0)
                r1 = bn * sf
                r2 = sf
                failed = izero
                # A loop, not unrolled: unrolling BLOCK = 64 steps of 64×64 tile ops made ~5 MB of
                # PTX (8 MB in float64) and a compile of ~1 min (4 min in float64) at the first call
                # with m > 32; and only the m live slots need a step (the padding is identity).
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
                x = r1 / diag
                if SIMPLEX:
                    y = r2 / diag
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
                           max_support: "int | None" = None, max_iter: int = 100) -> ActiveSetResult:
    """:func:`scq.solvers.engine.active_set.solve_active_set` in one launch. ``iterations`` is a
    0-d tensor (the most any row ran), so that reading it costs no sync here."""
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
        _kernel()[(N,)](H, b, weights, s8, v8, tol, out_p, out_s, out_nu, state, out_res, m, int(max_iter),
                        int(max_support or 0), 16 * finfo.eps, finfo.tiny, DEGENERATE_SLACK,
                        H.stride(0), H.stride(1), H.stride(2), b.stride(0), weights.stride(0), s8.stride(0),
                        v8.stride(0), out_p.stride(0), out_s.stride(0),
                        SIMPLEX=simplex, CAP_SUPPORT=max_support is not None, BLOCK=block,
                        num_warps=num_warps(block), **LAUNCH_OPTIONS)
    done, broken = (state & 1) != 0, (state & 2) != 0
    iterations = (state >> 2).amax() if N else torch.zeros((), dtype=torch.int32, device=b.device)
    return ActiveSetResult(out_p, out_s != 0, out_nu, done & ~broken, iterations, out_res, broken)
