r"""What every Triton launcher of the engine shares (CUDA): which systems the kernels take
(:func:`fits`, :data:`MAX_SLOTS`), the launch options and warps per row, float64 scalars passed in
two parts, and the lazy import of a kernel (Triton is imported only where a kernel is asked for).

The launchers: :mod:`~scq.solvers.engine.fista_triton`, :mod:`~scq.solvers.engine.active_set_triton`,
:mod:`~scq.solvers.engine.round_triton`, :mod:`~scq.solvers.engine.backward_triton`; the kernels
live in :mod:`~scq.solvers.engine.triton_kernels`.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import torch

# H_n lives in registers: 64×64 is 4,096 values per program, the most that stays cheap.
MAX_SLOTS = 64


# Every kernel's launch options beside the warps: fused multiply-adds, Triton's default so far, asked
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


def lazy_kernel(owner: dict, slot: str, name: str):
    """The kernel ``name`` of :mod:`~scq.solvers.engine.triton_kernels`, kept in the module global
    ``slot`` of ``owner`` (a launcher's ``globals()``): imported at the first launch, so Triton is
    imported only where a kernel is asked for; a module global so that
    ``benchmarks/cuda_launches.py`` can put a counting wrapper in its place."""
    if owner[slot] is None:
        from . import triton_kernels

        owner[slot] = getattr(triton_kernels, name)
    return owner[slot]
