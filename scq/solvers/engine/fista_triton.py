r"""FISTA's inner loop fused into one Triton kernel (CUDA): the warm start of
:func:`scq.solvers.engine.fista.fista` in one launch instead of ~30 launches per iteration.

One program per row n keeps H_n (m×m), b_n and the iterates in registers and runs every step

    u ← Π_C(y − (H_n y − b_n)/L_n),   y ← u + β_n (u − u_prev)

with Π_C the simplex projection (sort, cumulative sum, threshold: the same formula as
:func:`scq.simplex.simplex_threshold`'s ``"sort"``) or the orthant clamp, invalid slots held at 0.
The step 1/L_n and momentum β_n come in computed by the torch path, so both paths take the same
steps; they agree to rounding (tests/test_fused.py runs the kernel under ``TRITON_INTERPRET=1`` on
the CPU against the torch loop).

Used for CUDA tensors with m ≤ ``MAX_SLOTS`` when Triton is installed (the choice is
:mod:`scq.solvers.engine.fused`'s); everything else takes the torch loop or the CPU kernels.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import torch

# H_n lives in registers: 64×64 is 4,096 values per program, the most that stays cheap.
MAX_SLOTS = 64


# Both kernels' launch options beside the warps: fused multiply-adds, Triton's default so far, asked
# for by name (Triton 3.9 warns at each first launch where it is left to that default, which is to
# change).
LAUNCH_OPTIONS = dict(enable_fp_fusion=True)


def num_warps(block: int) -> int:
    """Warps per row for a BLOCK×BLOCK tile: one per 8 slots (2, 4, 8 for 16, 32, 64). Compiled for
    sm_90 (tests/test_triton_build.py), fewer spilled registers: at BLOCK = 64 the active set
    spilled 372 bytes per thread on 4 warps (float32) and none on 8, FISTA 824 bytes on 4 warps
    (float64) and none on 8; at 32 the active set spilled 268 bytes on 2 warps (float64), none on 4."""
    return max(2, block // 8)


def two_part(x: float) -> "tuple[float, float]":
    """x as float32 hi + lo, for a kernel argument: Triton passes Python floats as float32, and a
    float64 kernel adds the two back exactly (to float64's ~1e-16). NumPy's rounding, not a torch
    scalar's (whose read counts as a host sync)."""
    hi = float(np.float32(x))
    return hi, float(x - hi)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Triton is installed (looked up once: this is asked on every solve round)."""
    return importlib.util.find_spec("triton") is not None


def fits(H: torch.Tensor) -> bool:
    """The fused kernels can take these systems: CUDA, m ≤ ``MAX_SLOTS``, float32/64, Triton."""
    return H.is_cuda and H.shape[-1] <= MAX_SLOTS and H.dtype in (torch.float32, torch.float64) and available()


_KERNEL = None


def lazy_kernel(owner: dict, slot: str, name: str):
    """The kernel ``name`` of :mod:`~scq.solvers.engine.triton_kernels`, kept in the module global
    ``slot`` of ``owner`` (a launcher's ``globals()``): imported at the first launch, so Triton is
    imported only where a kernel is asked for; a module global so that
    ``benchmarks/cuda_launches.py`` can put a counting wrapper in its place."""
    if owner[slot] is None:
        from . import triton_kernels

        owner[slot] = getattr(triton_kernels, name)
    return owner[slot]


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
