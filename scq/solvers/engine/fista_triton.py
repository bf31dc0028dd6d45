r"""FISTA's inner loop fused into one Triton kernel (CUDA): the warm start of
:func:`scq.solvers.engine.fista.fista` in one launch instead of ~30 launches per iteration.

One program per row n keeps H_n (m×m), b_n and the iterates in registers and runs every step

    u ← Π_C(y − (H_n y − b_n)/L_n),   y ← u + β_n (u − u_prev)

with Π_C the simplex projection (sort, cumulative sum, threshold: the same formula as
:func:`scq.simplex.simplex_threshold`'s ``"sort"``) or the orthant clamp, invalid slots held at 0.
The step 1/L_n and momentum β_n come in computed by the torch path, so both paths take the same
steps; they agree to rounding (tests/test_fused.py runs the kernel under ``TRITON_INTERPRET=1`` on
the CPU against the torch loop).

Used for CUDA tensors with m ≤ :data:`~scq.solvers.engine.triton_launch.MAX_SLOTS` when Triton is installed (the choice is
:mod:`scq.solvers.engine.fused`'s); everything else takes the torch loop or the CPU kernels.
"""

from __future__ import annotations

import torch

from .triton_launch import LAUNCH_OPTIONS, lazy_kernel, num_warps

_KERNEL = None


def _kernel():
    return lazy_kernel(globals(), "_KERNEL", "fista_rows")


def fista_fused(H: torch.Tensor, b: torch.Tensor, u0: torch.Tensor, valid: torch.Tensor, step: torch.Tensor,
                beta: torch.Tensor, *, simplex: bool, n_iter: int) -> torch.Tensor:
    """``n_iter`` FISTA steps per row in one launch; ``step``, ``beta`` (N, 1) as the torch path
    computes them. Returns the last iterate (N, m)."""
    import triton

    N, m = b.shape
    out = torch.empty_like(u0)
    if N == 0:
        return out
    H, b, u0 = H.contiguous(), b.contiguous(), u0.contiguous()
    valid = valid.to(torch.int8).contiguous()
    step = step.reshape(N).to(H.dtype).contiguous()
    beta = beta.reshape(N).to(H.dtype).contiguous()
    block = max(16, triton.next_power_of_2(m))
    _kernel()[(N,)](H, b, u0, valid, step, beta, out, m,
                    H.stride(0), H.stride(1), H.stride(2), b.stride(0), u0.stride(0), valid.stride(0), out.stride(0),
                    N_ITER=n_iter, SIMPLEX=simplex, BLOCK=block, num_warps=num_warps(block), **LAUNCH_OPTIONS)
    return out
