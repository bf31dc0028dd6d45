r"""k-means for codebook initialization (Lloyd's algorithm; spherical with ``cosine=True``;
docs/math.md §8).

    min_{c_1..c_K} Σ_n min_k ‖x_n − c_k‖²        (cosine: max Σ_n max_k ⟨x̂_n, ĉ_k⟩, unit vectors)

Seeds are drawn by k-means++ (each next seed with probability ∝ its squared distance to the
seeds so far, Arthur & Vassilvitskii 2007), which keeps Lloyd out of the local minima where two
seeds share a cluster; with fewer vectors than K, seeds repeat. A cluster that empties keeps its
previous centre. Under ``torch.distributed`` the vectors of every
rank are gathered, rank 0 runs k-means on their union and broadcasts the centres: the result is
identical on every rank and equal to one process running on the union (same seed, same order).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from . import _validation as v
from . import distributed as dist_utils
from .problems import nearest_codes


class KMeansResult(NamedTuple):
    """``centres`` (K, D) and ``counts`` (K,): how many vectors the last assignment gave each."""

    centres: torch.Tensor
    counts: torch.Tensor


def sample_rows(x: torch.Tensor, k: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``k`` rows of ``x``: distinct when ``x`` has at least ``k`` rows, with replacement otherwise."""
    n = x.shape[0]
    idx = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(n, (k,), generator=generator)
    return x[idx.to(x.device)]


def _assign(x: torch.Tensor, centres: torch.Tensor, cosine: bool) -> torch.Tensor:
    if cosine:
        return (x @ centres.transpose(0, 1)).argmax(-1)
    return nearest_codes(x, centres)


def _distance(x: torch.Tensor, centre: torch.Tensor, cosine: bool) -> torch.Tensor:
    if cosine:
        return (1 - x @ centre).clamp_min(0)
    diff = x - centre
    return (diff * diff).sum(-1)


def _plus_plus_seeds(x: torch.Tensor, k: int, cosine: bool, generator) -> torch.Tensor:
    """k-means++ seeding: K draws, each a few kernels and no host sync (on the default
    generator; a CPU ``generator`` with inputs elsewhere draws on the CPU)."""
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator).to(x.device)
    seeds = x.new_empty(k, x.shape[1])
    seeds[0] = x[first[0]]
    d2 = _distance(x, seeds[0], cosine)
    for i in range(1, k):
        # All-zero distances (every vector is a seed already) fall back to uniform draws.
        weights = d2 + (d2.sum() <= 0).to(d2.dtype)
        if generator is not None and weights.device != generator.device:
            pick = torch.multinomial(weights.cpu(), 1, generator=generator).to(x.device)
        else:
            pick = torch.multinomial(weights, 1, generator=generator)
        seeds[i] = x[pick[0]]
        d2 = torch.minimum(d2, _distance(x, seeds[i], cosine))
    return seeds


def _lloyd(x: torch.Tensor, k: int, iters: int, cosine: bool, generator) -> KMeansResult:
    if cosine:
        x = F.normalize(x, dim=-1)
    centres = _plus_plus_seeds(x, k, cosine, generator)
    counts = x.new_zeros(k)
    for _ in range(max(iters, 1)):
        assign = _assign(x, centres, cosine)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = x.new_zeros(k, x.shape[1]).index_add_(0, assign, x)
        means = sums / counts.clamp_min(1).unsqueeze(-1)
        if cosine:
            means = F.normalize(means, dim=-1)
        # An emptied cluster keeps its centre rather than collapsing to 0.
        centres = torch.where(counts.unsqueeze(-1) > 0, means, centres)
    return KMeansResult(centres, counts)


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    iters: int = 10,
    *,
    cosine: bool = False,
    generator: Optional[torch.Generator] = None,
    sync_distributed: Optional[bool] = None,
) -> KMeansResult:
    """k-means centres of the rows of ``x`` (N, D).

    Args:
        x: the vectors, (N, D), floating point.
        num_clusters: K.
        iters: Lloyd iterations (assignment + mean), ≥ 1.
        cosine: spherical k-means on l2-normalized vectors (centres of unit norm).
        generator: for the seeds (a CPU ``torch.Generator``).
        sync_distributed: run over the union of every rank's ``x`` (default: when a process group
            of more than one process is running). Every rank must call it then.

    Returns: :class:`KMeansResult` ``(centres, counts)`` in ``x``'s dtype and device. Raises a
    ValueError if there are no vectors (on every rank together).
    """
    v.check_tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N, D), got shape {tuple(x.shape)}")
    num_clusters = v.check_positive_int("num_clusters", num_clusters)
    iters = v.check_positive_int("iters", iters)
    sync = dist_utils.resolve_sync(sync_distributed)
    union = dist_utils.gather_rows(x.detach(), sync)
    if union.shape[0] == 0:
        raise ValueError("x holds no vectors to run k-means on")
    if dist_utils.is_rank_zero() or not sync:
        centres, counts = _lloyd(union, num_clusters, iters, cosine, generator)
    else:
        centres, counts = union.new_zeros(num_clusters, union.shape[1]), union.new_zeros(num_clusters)
    dist_utils.broadcast_(centres, sync)
    dist_utils.broadcast_(counts, sync)
    return KMeansResult(centres, counts)
