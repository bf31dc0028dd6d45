"""Collectives the quantizers use under ``torch.distributed`` (one process or many, same code).

Every function here is a no-op on one process, and on many processes every rank must call it, in
the same order, whatever its batch size (an empty batch included): that is what keeps the
training features from hanging under DDP. Results are identical on every rank: sums are
all-reduced, and anything random is drawn on rank 0 and broadcast (docs/math.md §8).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one process is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def resolve_sync(sync: "bool | None") -> bool:
    """``sync_distributed`` of the modules: None means "when a process group is running"."""
    return is_distributed() if sync is None else (bool(sync) and is_distributed())


def _backend_device(t: torch.Tensor) -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves both. Keep the tensor where it is unless NCCL
    # needs it on the GPU (the quantizer's buffers are on the model's device already).
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_sum(t: torch.Tensor, sync: bool) -> torch.Tensor:
    """Sum of ``t`` over all ranks (``t`` itself when ``sync`` is False)."""
    if not sync:
        return t
    device = _backend_device(t)
    out = t.detach().to(device).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def broadcast_(t: torch.Tensor, sync: bool, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` in place with rank ``src``'s copy."""
    if not sync:
        return t
    device = _backend_device(t)
    buf = t.detach().to(device).contiguous()
    dist.broadcast(buf, src=src)
    if buf.data_ptr() != t.data_ptr():
        t.copy_(buf)
    return t


def gather_rows(x: torch.Tensor, sync: bool) -> torch.Tensor:
    """Concatenate the ``(n_r, D)`` rows of every rank, in rank order (ranks may hold different
    numbers of rows, zero included). Every rank gets the same ``(Σ n_r, D)`` tensor."""
    if not sync:
        return x
    device = _backend_device(x)
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    widest = max(sizes)
    if widest == 0:
        return x.new_zeros((0,) + tuple(x.shape[1:]))
    padded = x.new_zeros((widest,) + tuple(x.shape[1:]), device=device)
    padded[: x.shape[0]] = x.detach().to(device)
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)


def is_rank_zero() -> bool:
    return not is_distributed() or dist.get_rank() == 0
