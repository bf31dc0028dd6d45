"""One intra-op thread for small solves on the CPU.

A working-set solve runs thousands of small ops per call (gathers, Gram products, FISTA steps,
batched Cholesky on (N, m, m) systems of m ≈ 16–64). Each op is a parallel region whose threads wait
for one another, and OpenMP's idle threads spin: on a machine shared with other busy processes
(DataLoader workers, a second job), each region waits for a descheduled thread, and a solve at N =
512, K = 128 slowed by 8–24× beside two small torch jobs (issue #11; on one thread: 3.5×). So a
solve runs on one thread when the machine is busy, or when the batch is small (N·K ≤
``ONE_THREAD_UP_TO``), and on the pool otherwise (idle on 2 cores the pool took N = 1024, K = 256
from 29 to 20 ms and N = 2048, K = 128 from 41 to 25 ms). Small batches stay on one thread whatever
the load: the pool saves at most ~20% there (2–3 ms at N = 512, K = 128), while one call on the pool
beside two torch jobs, let through by a lull in their load, costs ~30×
(benchmarks/results/contention.md, before the load was read per call). Busy is read at each call
from the threads that other processes have runnable right now, and from the load average
(:func:`machine_is_busy`). A module's forward takes the decision once, for its solve and the ops
around it, and its backward follows (:class:`BackwardScope`): beside two torch jobs, the ops between
a module's outputs and its solve (losses, gradient sums over N×D tensors) cost more on the pool than
the solve's own backward. A module without a solve (VQ: a few large ops) keeps the pool for small
batches but takes one thread too on a busy machine (``wants_one_thread(..., small_batches=False)``).
On CUDA nothing changes.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Optional

import torch

ONE_THREAD_UP_TO = 1 << 16  # N·K, elements of the batch's largest (N, K) tensors


# A machine whose 1-minute load average reaches its core count plus this is oversubscribed: other
# processes hold the cores, and every parallel region waits for a descheduled thread. At N = 4096,
# K = 1024 beside two torch jobs on 2 cores `pgd` took 3.1 s on the pool against 0.63 s on one
# thread (0.15 and 0.24 s idle; benchmarks/results/contention.md).
BUSY_LOAD_MARGIN = 1.0
# The load average lags by up to a minute, so the first calls under load would still run on the
# pool. Linux also says how many threads are runnable *now* (/proc/loadavg's fourth field), this
# process's own among them (/proc/self/task/*/stat): those of other processes take the cores. Idle
# on 2 cores, other processes had 0 runnable threads in 85% of samples and 1 in the rest (the
# system's own short tasks); beside two busy torch jobs, always 2 or more. Busy therefore means
# others hold at least half the cores (2 on 2 cores), and the verdict holds this long after such
# a sample, so that a momentary lull between another job's steps does not send one call back to
# the pool.
BUSY_HOLD_S = 2.0
_last_busy_sample = float("-inf")


def runnable_threads() -> Optional[int]:
    """Threads of other processes runnable right now, or None where the system does not say (not
    Linux). Costs ~35 µs with this process's few threads (a file per thread), ~14 µs where the
    system counts one runnable thread or none: the caller's own, running (what an idle machine costs
    each call; measured on 2 cores)."""
    try:
        with open("/proc/loadavg") as f:
            total = int(f.read().split()[3].split("/")[0])
        if total <= 1:
            return 0
        own = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:  # the thread ended meanwhile
                continue
            own += stat[stat.rindex(b")") + 2:][:1] == b"R"  # the state follows the name
        return max(total - own, 0)
    except (OSError, IndexError, ValueError):
        return None


def machine_is_busy() -> bool:
    """Whether other processes are taking the cores: their threads runnable right now fill half
    the cores (or did in the last ``BUSY_HOLD_S`` seconds), or some are runnable and the load
    average reaches cores + 1."""
    global _last_busy_sample
    cores = os.cpu_count() or 1
    now = time.monotonic()
    others = runnable_threads()
    if others is not None and others >= max(2, (cores + 1) // 2):
        _last_busy_sample = now
        return True
    if now - _last_busy_sample < BUSY_HOLD_S:
        return True
    if others == 0:
        # Nothing else runnable now: a load average still high is the past. It lags by a minute
        # and counts this process's own threads too: after a contention benchmark's two torch
        # jobs stopped, it kept pgd at N = 4096, K = 1024 on one thread (0.090 s against 0.047 s).
        return False
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return False
    return load >= cores + BUSY_LOAD_MARGIN


def wants_one_thread(z: torch.Tensor, num_codes: int, small_batches: bool = True) -> bool:
    """Whether a solve of ``z`` (N, D) over ``num_codes`` codes should run on one thread: a small
    batch, or any batch on a busy machine. ``small_batches=False``: on a busy machine only, for
    work without a solve (VQ: a few ops per call, each on the pool as large as it is; on a busy
    machine even N = 512, K = 128 waited 0.8–40 ms on the pool's second thread, against 0.7 idle)."""
    if z.device.type != "cpu":
        return False
    return (small_batches and z.shape[0] * num_codes <= ONE_THREAD_UP_TO) or machine_is_busy()


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


class BackwardScope:
    """One thread for a forward's backward too, from its outputs back to its inputs.

    The forward runs in :meth:`forward` (one thread where ``active``); :meth:`inputs` and
    :meth:`outputs` put a node at each end of its graph. In the backward the outputs' node sets one
    thread, and the inputs' node, reached once every gradient of the block has been computed, gives
    the pool back, so that the ops between (losses, reshapes, gradient sums over N×D tensors, each a
    parallel region of the pool) do not wait on threads that other processes hold. Measured beside
    two torch jobs on 2 cores, SCQ at N = 4096, K = 1024: backward 0.32 s on the pool, 0.14 s so.
    Should the backward stop before the inputs' node (``autograd.grad`` of part of the graph, an
    error), the pool comes back when the graph is freed, with this object."""

    # The pool's size while the scope holds one thread: a class default, so that an instance that
    # torch.compile's tracer makes without __init__ is still deleted quietly.
    _before: Optional[int] = None

    def __init__(self, active: bool):
        self.active = active

    def forward(self):
        """The forward block's thread context."""
        return one_thread(self.active)

    def inputs(self, *tensors: torch.Tensor):
        """``tensors`` as they enter the block (identity; their gradients leave it here). Only
        those that require a gradient pass the node: the others must not start to."""
        tracked = [i for i, t in enumerate(tensors) if t.requires_grad]
        if not self.active or not tracked:
            return tensors
        passed = _ScopeNode.apply(self, False, *(tensors[i] for i in tracked))
        out = list(tensors)
        for i, t in zip(tracked, passed):
            out[i] = t
        return tuple(out)

    def outputs(self, *tensors: torch.Tensor):
        """``tensors`` as they leave the block (copies: a user may change them in place)."""
        if not self.active or not any(t.requires_grad for t in tensors):
            return tensors
        return _ScopeNode.apply(self, True, *tensors)

    def _enter(self) -> None:
        if self._before is None and torch.get_num_threads() > 1:
            self._before = torch.get_num_threads()
            torch.set_num_threads(1)

    def _leave(self) -> None:
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None

    def __del__(self):
        self._leave()


class _ScopeNode(torch.autograd.Function):
    """Identity whose backward enters (at the block's outputs) or leaves (at its inputs) a
    :class:`BackwardScope`."""

    @staticmethod
    def forward(scope, outputs, *tensors):
        # Copies where the user's tensors leave the block (they may be changed in place), views
        # where the block's own enter it.
        return tuple(t.clone() if outputs else t.view_as(t) for t in tensors)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.scope, ctx.outputs = inputs[:2]  # the scope lives as long as the graph does

    @staticmethod
    def backward(ctx, *grads):
        # An identity: twice differentiable as it stands (a gradient penalty's create_graph=True).
        ctx.scope._enter() if ctx.outputs else ctx.scope._leave()
        return (None, None, *grads)
