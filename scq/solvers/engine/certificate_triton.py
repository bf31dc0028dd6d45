r"""The SCQ certificate's per-row pass in one Triton launch (CUDA), where the torch path of
:func:`scq.solvers.certificate.certify_scq` takes ~30 launches over (N, K) tensors (g + λ(p − p̃),
gᵀp, min g, μ, two scratch passes for ‖δ‖², the residual's max) and two (N, K) buffers beside p.

Per row, in one program (:func:`scq.solvers.engine.triton_kernels.scq_certificate_rows`), two
sweeps over the row's K codes in tiles, sums in float64, as the CPU's
:func:`scq.solvers.engine.cpu_kernels.scq_certificate_rows`: the same four measurements
(residual, objective gap, ‖p − p*‖ and ‖z_q − z_q*‖ bounds), nan where g or p holds a nan.
tests/test_fused.py runs it under ``TRITON_INTERPRET=1`` against the torch path.
"""

from __future__ import annotations

import torch

from .triton_launch import LAUNCH_OPTIONS, lazy_kernel, two_part

_KERNEL = None
# Codes per tile of the two sweeps.
TILE_K = 512


def _kernel():
    return lazy_kernel(globals(), "_KERNEL", "scq_certificate_rows")


def scq_certificate(G: torch.Tensor, p: torch.Tensor, nearest: "torch.Tensor | None", target: "torch.Tensor | None",
                    lam: float, scale: torch.Tensor) -> "tuple[torch.Tensor, ...]":
    """(residual, gap, error bound, quantized error bound), each (N,) in G's dtype, from G = E(z_q − z)
    (N, K), the dense weights p (N, K), p̃ the one-hot ``nearest`` (N,) codes or ``target`` (N, K),
    and the rows' scales (N,)."""
    N, K = G.shape
    out = tuple(torch.empty(N, dtype=G.dtype, device=G.device) for _ in range(4))
    if N == 0:
        return out
    G, p = G.contiguous(), p.to(G.dtype).contiguous()
    has_target = target is not None
    target_t = target.to(G.dtype).contiguous() if has_target else G
    nearest_t = nearest.contiguous() if not has_target else scale
    _kernel()[(N,)](G, p, nearest_t, target_t, scale.to(G.dtype).contiguous(), *out, K, *two_part(lam), G.stride(0),
                    p.stride(0), target_t.stride(0), HAS_TARGET=has_target, BLOCK_K=TILE_K, num_warps=4,
                    **LAUNCH_OPTIONS)
    return out
