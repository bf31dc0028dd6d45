r"""The engine's backward in one Triton launch (CUDA), where the torch path takes ~30: the gather
of the codes C (N, m, D), their Gram matrices (N, m, m), a batched Cholesky, its solves, three
batched products and an ``index_add_`` into ∂E.

Per row, in one program (:func:`scq.solvers.engine.triton_kernels.backward_rows`), on the
forward's last support S (docs/math.md §4–5), with c_j = σ_j e_{k_j}:

1. H_SS = C_S C_Sᵀ + ρI from the codes in place (``tl.dot`` at IEEE precision), in float64
   whatever the inputs' dtype: one elimination a row, where float32 had put up to 2e-4 of the
   gradient's scale into ∂z (the torch path's float32 Cholesky 7e-5); in float64 what is left
   is the inputs' own rounding (≤ 1.3e-5 in the same cases);
2. v = M g on S by Gauss–Jordan elimination (M = H_SS⁻¹, less the rank-one term
   H_SS⁻¹11ᵀH_SS⁻¹/(1ᵀH_SS⁻¹1) of the simplex's 1ᵀu = 1);
3. ∂z = Σ_j v_j c_j and, where E needs a gradient, σ_j(v_j (z − z_q) − u_j ∂z) added into code
   k_j's row of ∂E by atomics: no (N, m, D) tensor, memory O(N·m + K·D).

The same arithmetic as the torch path of
:meth:`scq.solvers.engine.working_set.WorkingSetFunction.backward`, up to the order of sums
and of the systems' dtype (tests/test_fused.py runs it under ``TRITON_INTERPRET=1`` against that
path and against float64 gradients). No host sync.
Atomic float adds make ∂E's last bits depend on the order rows finish in: under
``torch.use_deterministic_algorithms(True)`` the torch path runs instead
(:func:`scq.solvers.engine.fused.backward`).
"""

from __future__ import annotations

import torch

from .round_triton import GRAM_TILE_D, _unit_stride
from .triton_launch import LAUNCH_OPTIONS, lazy_kernel, num_warps, two_part

_KERNEL = None
# Columns of D per tile of ∂z and ∂E. Built for sm_90 (tests/test_triton_build.py), registers per
# thread at 16/32/64 slots: 72/96/128 (float32 inputs) and 96/96/181 (float64) with tiles of 8,
# 96/126/162 and 96/128/190 with 16, 124/128/176 and 148/154/206 with 32.
TILE_D = 8


def _kernel():
    return lazy_kernel(globals(), "_KERNEL", "backward_rows")


def backward(z: torch.Tensor, E: torch.Tensor, code: torch.Tensor, sign: torch.Tensor, u: torch.Tensor,
             support: torch.Tensor, grad_u: torch.Tensor, *, ridge: float, simplex: bool, need_E: bool
             ) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]":
    """``(v (N, m) float64, ∂z (N, D), ∂E (K, D) or None)`` for the rows of ``code`` (N, m),
    ``sign`` the codes' signs (ones where the problem is unsigned), all in the inputs' dtype but
    ``code`` and ``support``. The solve runs in float64 whatever the forward's systems' dtype (see
    the module doc)."""
    import triton
    import triton.language as tl

    N, m = code.shape
    D = E.shape[1]
    dev = z.device
    v = torch.empty(N, m, dtype=torch.float64, device=dev)
    grad_z = torch.empty(N, D, dtype=z.dtype, device=dev)
    grad_E = torch.zeros_like(E) if need_E else None
    if N == 0:
        return v, grad_z.zero_(), grad_E
    E, z, code, sign, u = (_unit_stride(t) for t in (E, z, code, sign, u))
    s8 = _unit_stride(support).view(torch.int8)
    g = _unit_stride(grad_u)
    target = grad_E if need_E else grad_z  # (never written without NEED_E)
    block = max(16, triton.next_power_of_2(m))
    _kernel()[(N,)](E, z, code, sign, u, s8, g, v, grad_z, target, m, D, *two_part(ridge),
                    E.stride(0), z.stride(0), code.stride(0), sign.stride(0), u.stride(0),
                    s8.stride(0), g.stride(0), v.stride(0), grad_z.stride(0), target.stride(0),
                    SIMPLEX=simplex, NEED_E=need_E, SYS_DTYPE=tl.float64, BLOCK=block, GRAM_D=GRAM_TILE_D,
                    BLOCK_D=TILE_D, num_warps=num_warps(block), **LAUNCH_OPTIONS)
    return v, grad_z, grad_E
