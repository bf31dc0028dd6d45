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

The kernel is :func:`scq.solvers.engine.triton_kernels.active_set_rows`. The two paths agree to
rounding (tests/test_fused.py runs the kernel under ``TRITON_INTERPRET=1`` on the CPU against the
torch solve). Used where :func:`scq.solvers.engine.triton_launch.fits` says
(CUDA, m ≤ ``MAX_SLOTS``, Triton installed, fused kernels not switched off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .active_set import DEGENERATE_SLACK, ActiveSetResult
from .triton_launch import LAUNCH_OPTIONS, lazy_kernel, num_warps, two_part

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
    return lazy_kernel(globals(), "_KERNEL", "active_set_rows")


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
            ridge_hi, ridge_lo = two_part(refine.ridge)
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
