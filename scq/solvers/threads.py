"""One intra-op thread for small solves on the CPU.

A working-set solve runs thousands of small ops per call (gathers, Gram products, FISTA steps,
batched Cholesky on (N, m, m) systems of m ≈ 16–64). Each op is a parallel region whose threads
wait for one another, and OpenMP's idle threads spin: on a machine shared with other busy
processes (DataLoader workers, a second job), each region waits for a descheduled thread, and a
solve at N = 512, K = 128 slowed by 8–24× beside two small torch jobs (issue #11; on one thread:
3.5×). When the batch is small (N·K ≤ ``ONE_THREAD_UP_TO``) its ops are too small to gain from
the pool anyway (idle on 2 cores: the same time at N = 512, K = 128), so the whole solve,
certificate and backward included, runs on one thread. Larger batches keep the pool (one thread
cost up to 45% idle at N = 1024, K = 1024 and 24% at N = 4096) and stay exposed to contention
(5–8× measured). With the compiled CPU kernels (tens of ops per call) the rule still pays: at
N = 512, K = 128 on the pool `pgd` took the same time idle but slowed 31× beside two torch jobs,
against 3.1× on one thread (benchmarks/results/contention.md); at N = 256, K = 1024 the pool
would save ~40% idle. Larger batches run on one thread too while the machine is oversubscribed
(its load average, :func:`machine_is_busy`). On CUDA nothing changes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

ONE_THREAD_UP_TO = 1 << 18  # N·K, elements of the batch's largest (N, K) tensors


# A machine whose 1-minute load average reaches its core count plus this is oversubscribed: other
# processes hold the cores, and every parallel region waits for a descheduled thread. At N = 4096,
# K = 1024 beside two torch jobs on 2 cores `pgd` took 3.1 s on the pool against 0.63 s on one
# thread (0.15 and 0.24 s idle; benchmarks/results/contention.md).
BUSY_LOAD_MARGIN = 1.0


def machine_is_busy() -> bool:
    """Whether the machine's load average says other processes are taking the cores."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return False
    return load >= (os.cpu_count() or 1) + BUSY_LOAD_MARGIN


def wants_one_thread(z: torch.Tensor, num_codes: int) -> bool:
    """Whether a solve of ``z`` (N, D) over ``num_codes`` codes should run on one thread: a small
    batch, or any batch on a busy machine."""
    if z.device.type != "cpu":
        return False
    return z.shape[0] * num_codes <= ONE_THREAD_UP_TO or machine_is_busy()


@contextmanager
def one_thread(active: bool):
    """Run the block on one intra-op thread when ``active``, then restore the pool."""
    before = torch.get_num_threads()
    if not active or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
