"""The thread rule (scq/solvers/threads.py): one intra-op thread for small batches and on a busy
machine, for a module's forward and its backward alike."""

import gc
import os

import pytest
import torch

import scq
from scq.solvers import threads


@pytest.fixture
def two_threads():
    """A pool of two threads for the test (one thread would make the scope's checks vacuous)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_large_batches_take_one_thread_on_an_oversubscribed_machine(monkeypatch):
    # Beside two busy torch jobs on 2 cores, pgd at N = 4096, K = 1024 took 3.1 s on the pool and
    # 0.63 s on one thread: the load decides for large batches; small ones always take one.
    z = torch.zeros(4096, 8)
    cores = os.cpu_count() or 1
    monkeypatch.setattr(threads, "runnable_threads", lambda: None)  # the load average alone
    monkeypatch.setattr(threads, "_last_busy_sample", float("-inf"))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (cores + 2.0, 0.0, 0.0))
    assert threads.machine_is_busy() and threads.wants_one_thread(z, 1024)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert not threads.machine_is_busy() and not threads.wants_one_thread(z, 1024)
    assert threads.wants_one_thread(z[:64], 1024)  # small: one thread whatever the load

    def unavailable():
        raise OSError("no load average here")

    monkeypatch.setattr(threads.os, "getloadavg", unavailable)
    assert not threads.machine_is_busy()


def test_the_run_queue_says_busy_at_once_and_the_verdict_holds(monkeypatch):
    # The load average lags by a minute; the threads runnable now do not. Other processes' runnable
    # threads filling half the cores (2 on 2 cores) mean busy, for BUSY_HOLD_S seconds after.
    cores = os.cpu_count() or 1
    busy_at = max(2, (cores + 1) // 2)
    clock = [1000.0]
    others = [busy_at]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads, "runnable_threads", lambda: others[0])
    monkeypatch.setattr(threads, "_last_busy_sample", float("-inf"))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.1, 0.0, 0.0))  # not yet risen
    assert threads.machine_is_busy()
    others[0] = 0  # a lull between the other jobs' steps
    clock[0] += threads.BUSY_HOLD_S / 2
    assert threads.machine_is_busy()
    clock[0] += threads.BUSY_HOLD_S
    assert not threads.machine_is_busy()
    others[0] = busy_at - 1  # one stray task (the system's own): not busy
    assert not threads.machine_is_busy()


def test_a_lagging_load_average_alone_does_not_say_busy_once_nothing_else_runs(monkeypatch):
    # After other jobs stop, the 1-minute load average stays above cores + 1 for a while (it also
    # counts this process's own threads): with nothing else runnable now, the pool is back at once;
    # with another process's thread runnable, the high load average still says busy.
    cores = os.cpu_count() or 1
    others = [0]
    monkeypatch.setattr(threads, "runnable_threads", lambda: others[0])
    monkeypatch.setattr(threads, "_last_busy_sample", float("-inf"))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (cores + 2.0, 0.0, 0.0))
    assert not threads.machine_is_busy()
    others[0] = 1
    assert threads.machine_is_busy()


def test_the_run_queue_is_read_from_the_system():
    others = threads.runnable_threads()
    if not os.path.exists("/proc/loadavg"):
        assert others is None
        return
    assert others is not None and others >= 0


class _ThreadsSeen(torch.autograd.Function):
    """Identity that records the intra-op thread count its backward runs with."""

    seen: list = []

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _ThreadsSeen.seen.append(torch.get_num_threads())
        return grad


def test_a_scope_runs_the_blocks_backward_on_one_thread_and_gives_the_pool_back(two_threads):
    x = torch.randn(5, requires_grad=True)
    w = torch.randn(5, requires_grad=True)
    frozen = torch.randn(5)
    scope = threads.BackwardScope(True)
    with scope.forward():
        assert torch.get_num_threads() == 1
        xi, wi, fi = scope.inputs(x, w, frozen)
        assert fi is frozen and not fi.requires_grad  # a tensor without gradient does not start to need one
        (y,) = scope.outputs(_ThreadsSeen.apply(xi * wi + fi).sum())
    assert torch.get_num_threads() == 2  # the forward gave the pool back
    _ThreadsSeen.seen.clear()
    y.backward()
    assert _ThreadsSeen.seen == [1] and torch.get_num_threads() == 2
    assert torch.equal(x.grad, w.detach()) and torch.equal(w.grad, x.detach())


def test_an_inactive_scope_changes_nothing(two_threads):
    x = torch.randn(5, requires_grad=True)
    scope = threads.BackwardScope(False)
    with scope.forward():
        assert torch.get_num_threads() == 2
        (xi,) = scope.inputs(x)
        (y,) = scope.outputs(_ThreadsSeen.apply(xi).sum())
    assert xi is x
    _ThreadsSeen.seen.clear()
    y.backward()
    assert _ThreadsSeen.seen == [2]


def test_a_backward_that_stops_inside_the_block_gives_the_pool_back_with_the_graph(two_threads):
    x = torch.randn(5, requires_grad=True)
    scope = threads.BackwardScope(True)
    with scope.forward():
        (xi,) = scope.inputs(x)
        middle = xi * 2
        (y,) = scope.outputs(_ThreadsSeen.apply(middle).sum())
    torch.autograd.grad(y, middle)  # never reaches the inputs' node
    assert torch.get_num_threads() == 1  # still inside the block's backward …
    del y, middle, xi, scope
    gc.collect()
    assert torch.get_num_threads() == 2  # … until the graph goes


def test_outputs_are_copies_a_user_may_change_in_place(two_threads):
    x = torch.randn(5, requires_grad=True)
    scope = threads.BackwardScope(True)
    with scope.forward():
        (xi,) = scope.inputs(x)
        (y,) = scope.outputs(xi * 2)
    y.mul_(3)  # a view made inside a custom Function would refuse this
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 6.0)) and torch.get_num_threads() == 2


@pytest.mark.parametrize("make", [
    lambda: scq.SCQ(dim=8, codebook_size=32, lam=0.1, method="pgd"),
    lambda: scq.SVQ(dim=8, codebook_size=32, solver="lasso", alpha=0.1),  # frozen codebook
    lambda: scq.VQ(dim=8, codebook_size=32),  # no solve: its large ops alone
])
def test_a_module_on_a_busy_machine_solves_on_one_thread_with_the_same_answer_and_gradients(make, two_threads,
                                                                                           monkeypatch):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(256, 8)
    monkeypatch.setattr(threads, "ONE_THREAD_UP_TO", 0)  # a "large" batch: the pool unless the machine is busy
    quantize = module._quantize

    def quantize_seen(vectors, codebook, book):  # a node inside the block, between the solve and the outputs
        part = quantize(vectors, codebook, book)
        return part._replace(quantized=_ThreadsSeen.apply(part.quantized))

    monkeypatch.setattr(module, "_quantize", quantize_seen)

    def run(busy: bool):
        monkeypatch.setattr(threads, "machine_is_busy", lambda: busy)
        _ThreadsSeen.seen.clear()
        xr = x.clone().requires_grad_()
        out = module(_ThreadsSeen.apply(xr))  # and a node before the module
        assert torch.get_num_threads() == 2
        (out.quantized.square().sum() + out.loss).backward()
        assert torch.get_num_threads() == 2
        grads = [xr.grad] + [p.grad.clone() for p in module.parameters() if p.grad is not None]
        module.zero_grad()
        return out.quantized.detach(), grads, _ThreadsSeen.seen[:]

    q_pool, g_pool, seen_pool = run(False)
    q_one, g_one, seen_one = run(True)
    # Inside the block: one thread on the busy machine; before it, the pool again.
    assert seen_pool == [2, 2] and seen_one == [1, 2]
    torch.testing.assert_close(q_one, q_pool)
    assert len(g_one) == len(g_pool)
    for a, b in zip(g_one, g_pool):
        torch.testing.assert_close(a, b)
    if isinstance(module, scq.SVQ):
        assert module.codebook.grad is None  # the frozen codebook stayed without a gradient



def test_a_module_reads_the_machines_load_once_per_forward(two_threads, monkeypatch):
    # The module decides for its forward, solve included (dispatch.solve does not read it again).
    reads = []
    monkeypatch.setattr(threads, "ONE_THREAD_UP_TO", 0)
    monkeypatch.setattr(threads, "machine_is_busy", lambda: reads.append(1) or False)
    for module in (scq.SCQ(dim=4, codebook_size=16, method="pgd"),
                   scq.SVQ(dim=4, codebook_size=16, solver="lasso", alpha=0.1)):
        reads.clear()
        module(torch.randn(64, 4))
        assert len(reads) == 1, type(module).__name__
    reads.clear()
    scq.solve_scq(torch.randn(64, 4), torch.randn(16, 4), lam=0.1)  # the functional front door decides itself
    assert len(reads) == 1


def test_vq_reads_the_load_whatever_its_batch(two_threads, monkeypatch):
    # No solve: no small-batch rule, but a busy machine holds a small batch's ops too.
    reads = []
    monkeypatch.setattr(threads, "machine_is_busy", lambda: reads.append(1) or False)
    module = scq.VQ(dim=4, codebook_size=16)
    module(torch.randn(64, 4))
    assert reads == [1]
    assert not threads.wants_one_thread(torch.randn(64, 4), 16, small_batches=False)
    assert threads.wants_one_thread(torch.randn(64, 4), 16)


def test_an_idle_system_run_queue_is_read_without_the_own_thread_scan(monkeypatch, tmp_path):
    # One runnable thread in the system is the caller itself: nobody else's, no per-thread scan.
    real_open = open
    scanned = []

    def fake_open(path, *args, **kwargs):
        if path == "/proc/loadavg":
            return real_open(tmp_path / "loadavg", *args, **kwargs)
        scanned.append(path)
        return real_open(path, *args, **kwargs)

    if not os.path.exists("/proc/self/task"):
        pytest.skip("no /proc")
    monkeypatch.setattr("builtins.open", fake_open)
    (tmp_path / "loadavg").write_text("0.00 0.01 0.05 1/300 12345\n")
    assert threads.runnable_threads() == 0 and scanned == []
    (tmp_path / "loadavg").write_text("3.00 2.01 1.05 4/300 12345\n")
    others = threads.runnable_threads()
    assert scanned and 0 <= others <= 3


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: nothing to raise the thread count to")
def test_a_process_that_asked_for_one_thread_keeps_it_after_its_solves():
    # Numba's first parallel call starts its OpenMP pool, which set the process's OpenMP thread
    # count (torch's too: one libgomp) to every core: a DataLoader worker or one of several training
    # processes asking torch for one thread ran on all of them after its first solve. A fresh
    # process, since the pool starts once per process.
    import subprocess
    import sys

    script = """
import numba, torch
torch.set_num_threads(1)
import scq
x = torch.randn(256, 8, requires_grad=True)  # N*K > 2**16: the solves run on torch's thread count
q = scq.SCQ(dim=8, codebook_size=512)
q(x).quantized.sum().backward()
scq.solve_lasso(x.detach(), torch.randn(512, 8), 0.1)
print(numba.threading_layer(), torch.get_num_threads())  # (threading_layer raises where no pool started)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1"
