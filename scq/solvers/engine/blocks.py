"""Row blocks for the solvers' (n, K) products, so that their working memory stays bounded.

Every pass over all K codes (the nearest-code search, each certificate round's gradients
G = (z_q − z)Eᵀ and entering scores, the front door's certificate) is one GEMM with an (n, K)
output: 17 GB at n = 262144, K = 16384 in float32. Run over blocks of rows, each block's output
has at most :data:`GEMM_BLOCK_ELEMENTS` entries and only (n, few) results (the nearest code,
the entering codes, the certificate's four numbers) outlive it. Below the budget there is one
block: the same GEMM as without blocks. The budget is large enough that a block's GEMM still
fills a GPU (2^26 entries: 4096 rows at K = 16384) and that no point of the CPU benchmarks is
split (the GPU sweep's are from N = 131072 at K = 1024 and N = 8192 at K = 16384).
"""

from __future__ import annotations

import torch

# Entries of one (rows, K) block buffer: 256 MB in float32. A module attribute, read at each call,
# so that a user (or a test) can set it.
GEMM_BLOCK_ELEMENTS = 1 << 26


def _budget() -> int:
    """The budget as set (read at each call, so that a setting takes effect at once), checked: a
    float such as ``1e8`` is taken as the integer it is; below one entry is an error."""
    budget = GEMM_BLOCK_ELEMENTS
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 1:
        raise ValueError(f"scq.solvers.engine.blocks.GEMM_BLOCK_ELEMENTS must be a number of entries >= 1, "
                         f"got {budget!r}")
    return int(budget)


def block_rows(n: int, K: int) -> int:
    """Rows per block for ``n`` rows against ``K`` codes: all of them where n·K fits the budget,
    else as many as fit (at least one)."""
    return max(1, min(n, _budget() // max(K, 1)))


def row_blocks(n: int, K: int) -> "list[slice]":
    """The row blocks of ``n`` rows against ``K`` codes, in order: ``[slice(0, n)]`` where the whole
    (n, K) product fits the budget."""
    step = block_rows(n, K)
    return [slice(a, min(a + step, n)) for a in range(0, max(n, 1), step)]


def cat_rows(parts):
    """The blocks' results joined: ``parts`` a list of equal-length tuples of (rows, …) tensors (or
    ``None`` in every block), one tuple a block, in order; the joined tuple, ``None`` kept."""
    return tuple(None if field[0] is None else torch.cat(field) for field in zip(*parts))


def entries_per_row(n: int) -> int:
    """The entries each of ``n`` rows may hold where together they keep within one block (at least one)."""
    return max(1, _budget() // max(n, 1))


def fits(n: int, K: int) -> bool:
    """Whether an (n, K) buffer fits in one block."""
    return n * K <= _budget()
