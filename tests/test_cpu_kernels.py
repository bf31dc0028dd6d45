"""The Numba CPU kernels (scq/solvers/engine/cpu_kernels.py) against the torch code they replace:
FISTA, the active set and the backward's support solve, each alone and inside the engine."""

import os
import warnings

import numpy as np
import pytest
import torch

import scq
from scq.solvers.engine import active_set as A
from scq.solvers.engine import fista as F
from scq.solvers.engine import fused
from scq.solvers.engine import working_set as ws

from .helpers import small_qps

pytestmark = pytest.mark.skipif(not fused.cpu_available(), reason="needs numba")

f32, f64 = torch.float32, torch.float64


def _tol(dtype):
    return 2e-5 if dtype == f32 else 1e-12


@pytest.mark.parametrize("N,m,n_iter,dtype,simplex", [
    (50, 3, 6, f32, True), (40, 19, 10, f64, True), (20, 64, 3, f32, True), (10, 90, 4, f64, True),
    (50, 3, 6, f64, False), (40, 19, 10, f32, False), (10, 90, 4, f64, False)])
def test_fista_kernel_matches_the_torch_loop(N, m, n_iter, dtype, simplex):
    H, b, valid, u0 = small_qps(N, m, dtype, simplex, seed=m + n_iter)
    ref = F.fista_torch(H, b, u0, valid, simplex=simplex, ridge=0.1, n_iter=n_iter)
    step, beta = F.step_and_momentum(H, 0.1)
    got = fused.fista(H, b, u0, valid, step, beta, simplex=simplex, n_iter=n_iter)
    assert got.dtype == dtype and got.shape == ref.shape
    assert (ref - u0).abs().max() > 1e-3  # the steps moved: there is something to compare
    assert (got - ref).abs().max() <= _tol(dtype) * 10
    assert (got >= 0).all() and (got[~valid] == 0).all()
    if simplex:
        assert (got.sum(-1) - 1).abs().max() < _tol(dtype) * 10


@pytest.mark.parametrize("dtype", [f32, f64])
def test_fista_kernel_ends_on_nan_and_on_ties(dtype):
    # The simplex threshold stops when its set stops shrinking: a NaN (which empties the set) or
    # values tied at the threshold must end it, not loop (run in a thread, to fail rather than hang).
    import threading

    N, m = 6, 8
    H = torch.eye(m, dtype=dtype).expand(N, m, m).contiguous()
    b = torch.ones(N, m, dtype=dtype)  # every slot tied
    b[1, 3] = float("nan")
    b[2] = torch.tensor([1e-7 * i for i in range(m)], dtype=dtype)  # near-ties
    b[3, :4] = float("inf")
    valid = torch.ones(N, m, dtype=torch.bool)
    valid[4, 2:] = False
    u0 = torch.zeros(N, m, dtype=dtype)
    u0[:, 0] = 1
    step, beta = F.step_and_momentum(H, 0.1)
    out = []
    worker = threading.Thread(target=lambda: out.append(fused.fista(H, b, u0, valid, step, beta, simplex=True,
                                                                    n_iter=20)), daemon=True)
    worker.start()
    worker.join(timeout=120)  # a cold Numba cache compiles first
    assert not worker.is_alive() and out, "the simplex threshold did not end"
    rows = [0, 2, 4, 5]  # the finite ones (the torch path's sort-based threshold fails on NaN)
    ref = F.fista_torch(H[rows], b[rows], u0[rows], valid[rows], simplex=True, ridge=0.1, n_iter=20)
    assert (out[0][rows] - ref).abs().max() <= _tol(dtype) * 10
    assert (out[0][0] - 1 / m).abs().max() <= _tol(dtype) * 10  # ties share the mass evenly


@pytest.mark.parametrize("N,m,simplex,cap,dtype", [
    (60, 5, True, None, f64), (60, 12, True, None, f64), (60, 12, True, None, f32), (30, 40, True, None, f64),
    (60, 12, False, None, f64), (60, 9, False, 4, f32), (30, 40, False, 6, f64)])
def test_active_set_kernel_matches_the_torch_solve(N, m, simplex, cap, dtype):
    H, b, valid, u0 = small_qps(N, m, dtype, simplex, seed=m, b_scale=3.0)
    tol = torch.full((N,), 1e-5 if dtype == f32 else 1e-10, dtype=dtype)
    ref = A.solve_active_set(H, b, u0, u0 > 0, valid, tol, simplex=simplex, max_support=cap, compact=False)
    got = fused.active_set(H, b, u0, u0 > 0, valid, tol, simplex=simplex, max_support=cap, max_iter=100)
    assert torch.equal(got.converged, ref.converged) and got.converged.all()
    assert torch.equal(got.support, ref.support)
    assert (got.weights - ref.weights).abs().max() <= _tol(dtype) * 10
    assert (got.nu - ref.nu).abs().max() <= _tol(dtype) * 100
    assert isinstance(got.iterations, int) and 1 <= got.iterations <= ref.iterations
    assert (got.weights >= 0).all() and (got.weights[~got.support] == 0).all()


def test_active_set_kernel_flags_a_singular_support_as_broken_down():
    # Two identical codes and no ridge: H_SS is singular once both are in the support.
    H = torch.ones(1, 2, 2, dtype=f64)
    b = torch.tensor([[2.0, 2.0]], dtype=f64)
    u0 = torch.tensor([[0.5, 0.5]], dtype=f64)
    s0 = torch.tensor([[True, True]])
    tol = torch.full((1,), 1e-10, dtype=f64)
    ref = A.solve_active_set(H, b, u0, s0, torch.ones_like(s0), tol, simplex=True, compact=False)
    got = fused.active_set(H, b, u0, s0, torch.ones_like(s0), tol, simplex=True, max_support=None, max_iter=10)
    assert ref.broken.all() and got.broken.all() and not got.converged.any()
    assert torch.equal(got.weights, u0)  # frozen at its last feasible iterate


def _factor_of(A, k):
    """L from the kernels' storage of a Cholesky factor (the diagonal holds 1/L_jj)."""
    L = np.tril(A[:k, :k]).astype(np.float64)
    L[np.diag_indices(k)] = 1 / np.diag(A[:k, :k])
    return L


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_support_factor_follows_codes_in_and_out(dtype):
    # The active set carries H_SS's Cholesky factor from step to step: codes leaving it (a rank-one
    # update of the rows below), codes entering (a row appended). After every change it must be
    # the factor of H on exactly the support, as accurate as a fresh one.
    from scq.solvers.engine import cpu_kernels as ck

    rng = np.random.default_rng(0)
    tol = 1e-13 if dtype == np.float64 else 2e-6
    removed = appended = 0
    for _ in range(40):
        m, D = int(rng.integers(2, 30)), int(rng.integers(1, 40))
        C = rng.standard_normal((m, D))
        H = (C @ C.T + 0.1 * np.eye(m)).astype(dtype)
        idx, A = np.zeros(m, np.int64), np.zeros((m, m), dtype)
        in_factor, scratch = np.zeros(m, bool), np.zeros(m, dtype)
        k = 0
        for _ in range(15):
            s = rng.random(m) < rng.random()
            before = set(idx[:k].tolist())
            k, ok = ck._factor_update(H, s, idx, A, k, in_factor, scratch)
            assert ok and sorted(idx[:k].tolist()) == np.flatnonzero(s).tolist()
            removed += len(before - set(idx[:k].tolist()))
            appended += len(set(idx[:k].tolist()) - before)
            if k:
                L, H_SS = _factor_of(A, k), H[np.ix_(idx[:k], idx[:k])].astype(np.float64)
                assert np.abs(L @ L.T - H_SS).max() <= tol * np.abs(H_SS).max()
    assert removed > 500 and appended > 500  # both paths ran, many times


def test_the_support_factor_refactors_when_a_pivot_fails():
    # Two identical codes, no ridge: code 1 cannot be appended to code 0's factor. The update then
    # refactors the support in slot order, whose verdict (not positive definite) is the answer.
    from scq.solvers.engine import cpu_kernels as ck

    H = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    idx, A = np.zeros(3, np.int64), np.zeros((3, 3))
    in_factor, scratch = np.zeros(3, bool), np.zeros(3)
    k, ok = ck._factor_update(H, np.array([True, False, True]), idx, A, 0, in_factor, scratch)
    assert ok and k == 2
    k, ok = ck._factor_update(H, np.array([True, True, False]), idx, A, k, in_factor, scratch)
    assert not ok
    k, ok = ck._factor_update(H, np.array([False, True, True]), idx, A, 0, in_factor, scratch)
    assert ok and k == 2 and idx[:2].tolist() == [1, 2]  # a fresh factor, in slot order
    assert np.allclose(_factor_of(A, 2) @ _factor_of(A, 2).T, H[np.ix_([1, 2], [1, 2])])


def test_active_set_kernel_stops_at_max_iter_unconverged():
    H, b, valid, u0 = small_qps(8, 30, f64, True, seed=3, b_scale=3.0)
    tol = torch.full((8,), 1e-10, dtype=f64)
    got = fused.active_set(H, b, u0, u0 > 0, valid, tol, simplex=True, max_support=None, max_iter=1)
    assert got.iterations == 1 and not got.converged.all()


def _engine(method_call, enabled, monkeypatch):
    monkeypatch.setattr(fused, "ENABLED", enabled)
    return method_call()


@pytest.mark.parametrize("lam", [0.01, 0.1, 2.0])
def test_pgd_with_the_cpu_kernels_equals_the_torch_path_forward_and_backward(lam, monkeypatch, codebook_gram):
    g = torch.Generator().manual_seed(7)
    E = torch.randn(96, 6, generator=g, dtype=f64)
    x = torch.randn(40, 6, generator=g, dtype=f64)

    def run():
        z, C = x.clone().requires_grad_(), E.clone().requires_grad_()
        p, info = scq.solve_scq(z, C, lam=lam, method="pgd", return_info=True)
        (p * torch.arange(96, dtype=f64)).sum().backward()
        return p.detach(), info, z.grad, C.grad

    p0, info0, gz0, gE0 = _engine(run, False, monkeypatch)
    p1, info1, gz1, gE1 = _engine(run, True, monkeypatch)
    assert info0.converged and info1.converged
    assert (p1 - p0).abs().max() < 1e-12
    assert (gz1 - gz0).abs().max() < 1e-9 and (gE1 - gE0).abs().max() < 1e-9


def test_lasso_with_the_cpu_kernels_equals_the_torch_path(monkeypatch, codebook_gram):
    g = torch.Generator().manual_seed(8)
    E = torch.randn(64, 8, generator=g, dtype=f64)
    x = torch.randn(30, 8, generator=g, dtype=f64)

    def run():
        z = x.clone().requires_grad_()
        w, info = scq.solve_lasso(z, E, alpha=0.3, method="pgd", return_info=True)
        w.square().sum().backward()
        return w.detach(), info, z.grad

    w0, info0, g0 = _engine(run, False, monkeypatch)
    w1, info1, g1 = _engine(run, True, monkeypatch)
    assert info0.converged and info1.converged
    assert (w1 - w0).abs().max() < 1e-12 and (g1 - g0).abs().max() < 1e-9


@pytest.mark.parametrize("case", ["scq-grows", "scq-target", "scq-lockstep", "lasso", "scq-float32"])
def test_the_compiled_rounds_take_the_torch_loops_steps(case, monkeypatch, codebook_gram):
    # The CPU's compiled rounds (working_set._rounds_on_cpu) against the torch loop they replace:
    # the same answer in the same number of rounds, W grown to the same width (a small initial W
    # and few entries per round make it grow and double its entries), with a target, in lockstep.
    g = torch.Generator().manual_seed(11)
    dtype = f32 if case == "scq-float32" else f64
    E = torch.randn(200, 6, generator=g, dtype=dtype)
    x = torch.randn(60, 6, generator=g, dtype=dtype) * 0.3  # inside the hull: large supports
    opts = dict(working_set=4, add_per_round=2, max_rounds=60)
    if case != "lasso":  # (step for step: without the row-by-row rounds' Frank–Wolfe start, the torch loop's too)
        opts["fw_steps"] = 0
    if case == "scq-lockstep":
        opts["compact"] = False
    target = torch.softmax(torch.randn(60, 200, generator=g, dtype=dtype), -1) if case == "scq-target" else None

    def run():
        z = x.clone().requires_grad_()
        if case == "lasso":
            w, info = scq.solve_lasso(z, E, alpha=0.05, method="pgd", return_info=True, ridge=1e-3, **opts)
        else:
            w, info = scq.solve_scq(z, E, lam=0.05, target=target, method="pgd", return_info=True, **opts)
        w.square().sum().backward()
        return w.detach(), info, z.grad

    w0, info0, g0 = _engine(run, False, monkeypatch)
    w1, info1, g1 = _engine(run, True, monkeypatch)
    assert info0.converged and info1.converged
    for key in ("rounds", "working_set"):
        assert info1.extra[key] == info0.extra[key], key
    assert info0.extra["working_set"] > 4 and info0.extra["rounds"] > 4  # W grew, over many rounds
    tol = 1e-5 if dtype == f32 else 1e-12
    assert (w1 - w0).abs().max() < tol and (g1 - g0).abs().max() < 1e3 * tol


@pytest.mark.parametrize("case", ["scq-grows", "scq-target", "lasso", "scq-float32", "out-of-rounds"])
def test_rows_run_to_the_end_one_by_one_as_the_batch_loop_runs_them(case, monkeypatch):
    # Where the codebook's Gram matrix serves the rounds, each row runs its rounds back to back in
    # one call (working_set._rounds_row_by_row) instead of the batch loop's round by round: the
    # same answer, gradients, certificate and flags. A W of 1 slot and 2 entries a round make rows
    # outgrow W's arrays (the kernel is called again for them) and double their entries.
    from scq.solvers.engine import cpu_kernels as ck

    g = torch.Generator().manual_seed(12)
    dtype = f32 if case == "scq-float32" else f64
    E = torch.randn(120, 8, generator=g, dtype=dtype)
    x = torch.randn(150, 8, generator=g, dtype=dtype) * 0.3  # inside the hull: large supports
    opts = dict(working_set=1, add_per_round=2, max_rounds=8 if case == "out-of-rounds" else 60)
    if case != "lasso":  # (the batch loop has no Frank–Wolfe start: tested apart)
        opts["fw_steps"] = 0
    target = torch.softmax(torch.randn(150, 120, generator=g, dtype=dtype), -1) if case == "scq-target" else None
    calls = []
    launch = ck.table_rounds_par
    monkeypatch.setattr(ck, "table_rounds_par", lambda *a: calls.append(len(a[34])) or launch(*a))  # a[34]: its rows
    monkeypatch.setattr(ws, "uses_codebook_gram", lambda N, K: True)

    def run(row_by_row):
        monkeypatch.setattr(ws, "ROW_BY_ROW", row_by_row)
        z = x.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # out-of-rounds: flagged, as both must
            if case == "lasso":
                w, info = scq.solve_lasso(z, E, alpha=0.05, method="pgd", return_info=True, ridge=1e-3, **opts)
            else:
                w, info = scq.solve_scq(z, E, lam=0.05, target=target, method="pgd", return_info=True, **opts)
        w.square().sum().backward()
        return w.detach(), info, z.grad

    w0, info0, g0 = run(False)
    assert not calls
    w1, info1, g1 = run(True)
    assert len(calls) > 1 and calls[0] == 150 and calls[-1] < 150  # rows outgrew W and ran on
    assert info1.extra["rounds"] == info0.extra["rounds"] > 2
    assert info1.extra["working_set"] <= info0.extra["working_set"]
    assert torch.equal(info1.extra["converged_mask"], info0.extra["converged_mask"])
    assert info0.converged == (case != "out-of-rounds") and info0.extra["converged_mask"].any()
    tol = 1e-5 if dtype == f32 else 1e-12
    assert (w1 - w0).abs().max() < tol and (g1 - g0).abs().max() < 1e3 * tol
    assert (info1.extra["residuals"] - info0.extra["residuals"]).abs().max() < 1e2 * tol


def test_rows_are_split_over_torch_threads_and_give_the_same_answer_as_one_thread(codebook_gram):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert fused._bounds(5000).tolist() == [0, 5000]
        g = torch.Generator().manual_seed(9)
        E = torch.randn(64, 8, generator=g, dtype=f64)
        x = torch.randn(600, 8, generator=g, dtype=f64)

        def run():
            z, C = x.clone().requires_grad_(), E.clone().requires_grad_()
            p = scq.solve_scq(z, C, lam=0.1, method="pgd")
            (p * torch.arange(64, dtype=f64)).sum().backward()
            return p.detach(), z.grad, C.grad

        one = run()
        torch.set_num_threads(2)
        assert fused._bounds(5000).tolist() == [0, 2500, 5000]
        assert fused._bounds(100).tolist() == [0, 100]  # too few rows to split
        two = run()
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert (one[2] - two[2]).abs().max() < 1e-12  # ∂E: per-thread buffers summed in another order


@pytest.mark.parametrize("dtype", [f32, f64])
def test_combine_kernel_matches_the_torch_path_forward_and_backward(dtype, monkeypatch):
    from scq.solvers.solution import SparseWeights

    g = torch.Generator().manual_seed(11)
    E = torch.randn(20, 7, generator=g, dtype=dtype)
    idx = torch.randint(0, 20, (30, 6), generator=g)
    idx[:, 1] = idx[:, 0]  # a code twice in a row: both slots add into it
    vals = torch.rand(30, 6, generator=g, dtype=dtype) * (torch.rand(30, 6, generator=g) < 0.6)
    w = torch.randn(30, 7, generator=g, dtype=dtype)

    def run(enabled):
        monkeypatch.setattr(fused, "ENABLED", enabled)
        v, C = vals.clone().requires_grad_(), E.clone().requires_grad_()
        out = SparseWeights(idx, v, 20).combine(C)
        (out * w).sum().backward()
        return out.detach(), v.grad, C.grad

    ref, got = run(False), run(True)
    tol = 1e-5 if dtype == f32 else 1e-12
    for r, c in zip(ref, got):
        assert c.dtype == dtype and (r - c).abs().max() <= tol
    assert got[1][vals == 0].abs().max() > 0  # zero weights still get their gradient


def test_combine_kernel_passes_gradcheck():
    from scq.solvers.solution import SparseWeights

    g = torch.Generator().manual_seed(12)
    E = torch.randn(9, 4, generator=g, dtype=f64, requires_grad=True)
    vals = torch.rand(5, 3, generator=g, dtype=f64, requires_grad=True)
    idx = torch.randint(0, 9, (5, 3), generator=g)
    assert fused.backend(E.unsqueeze(0)) == "cpu"
    assert torch.autograd.gradcheck(lambda v, C: SparseWeights(idx, v, 9).combine(C), (vals, E))


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("with_target", [False, True])
def test_certificate_kernel_matches_the_torch_certificate(dtype, with_target, monkeypatch):
    from scq.solvers.certificate import certify_scq

    g = torch.Generator().manual_seed(13)
    E = torch.randn(40, 5, generator=g, dtype=dtype)
    z = torch.randn(25, 5, generator=g, dtype=dtype)
    target = torch.softmax(torch.randn(25, 40, generator=g, dtype=dtype), -1) if with_target else None
    exact = scq.solve_scq(z, E, lam=0.3, target=target, method="pgd")
    # An optimum, a perturbed point and one with a negative weight: small and large residuals alike.
    noisy = exact + 1e-3 * torch.rand(25, 40, generator=g, dtype=dtype) * (exact > 0)
    off = exact.clone()
    off[:, 0] -= 1e-2
    for p in (exact, noisy, off):
        monkeypatch.setattr(fused, "ENABLED", False)
        ref = certify_scq(p, z, E, 0.3, target)
        monkeypatch.setattr(fused, "ENABLED", True)
        got = certify_scq(p, z, E, 0.3, target)
        eps = torch.finfo(dtype).eps
        # Residual and gap differ by rounding (sums in another order); the error bounds are square
        # roots of the gap, so at an optimum their rounding is √ε-sized.
        for r, c, atol in zip(ref, got, (100 * eps, 100 * eps, 30 * eps ** 0.5, 30 * eps ** 0.5)):
            assert c.dtype == dtype and c.shape == (25,)
            assert torch.allclose(c, r, rtol=1e-4 if dtype == f32 else 1e-9, atol=atol), (r - c).abs().max()
    assert got.residual.min() > 1e-3  # the last point is far from optimal, and measured so


@pytest.mark.parametrize("dtype", [f32, f64])
def test_nearest_code_kernel_matches_the_formula_with_ties_and_nan(dtype):
    from scq.problems import code_scores, nearest_code

    g = torch.Generator().manual_seed(5)
    # Integer entries: every norm and score exact, so that the repeated codes tie exactly.
    z = torch.randint(-2, 3, (300, 8), generator=g).to(dtype)
    E = torch.randint(-1, 2, (700, 8), generator=g).to(dtype)
    E[350:] = E[:350]  # every code twice: ties, which go to the lower code
    scores = code_scores(z, E)
    scores[7, 123] = float("nan")  # torch's argmin picks a nan
    scores[9, 5] = scores[9, 600] = float("nan")  # the first one
    got = fused.nearest(scores, E)
    assert got is not None and torch.equal(got, nearest_code(scores, E))
    assert got[7] == 123 and got[9] == 5 and (got[10:] < 350).all()


def test_certificate_kernel_carries_a_nan_to_every_measurement():
    from scq.solvers.certificate import certify_scq

    z, E = torch.randn(3, 4, dtype=f64), torch.randn(10, 4, dtype=f64)
    p = scq.solve_scq(z, E, lam=0.3)
    p[1, 2] = float("nan")
    cert = certify_scq(p, z, E, 0.3, None)
    for t in cert:
        assert torch.isnan(t[1]) and not torch.isnan(t[0]) and not torch.isnan(t[2])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("K,n_add", [(30, 1), (30, 5), (30, 30), (300, 8), (301, 19)])
def test_entering_codes_kernel_matches_the_torch_scoring(signed, K, n_add, monkeypatch):
    # K = 300, 301: the kernel's floor from its blocks' tops (K/16 ≥ n_add), a partial last block.
    from scq.solvers.engine.working_set import QPForm, _entering

    g = torch.Generator().manual_seed(14)
    N, m = 50, 6
    G = torch.randn(N, K, generator=g, dtype=f64)
    code = torch.stack([torch.randperm(K, generator=g)[:m] for _ in range(N)])
    sign = torch.where(torch.rand(N, m, generator=g) < 0.5, -1.0, 1.0).to(f64)
    valid = torch.rand(N, m, generator=g) < 0.8
    form = QPForm(simplex=not signed, signed=signed, ridge=0.1, l1=0.0)
    monkeypatch.setattr(fused, "ENABLED", False)
    ref = _entering(G.clone(), code, sign, valid, n_add, form)
    monkeypatch.setattr(fused, "ENABLED", True)
    got = _entering(G.clone(), code, sign, valid, n_add, form)
    assert torch.equal(got[0], ref[0])  # the scores, in descending order
    finite = torch.isfinite(ref[0])
    assert torch.equal(got[1][finite], ref[1][finite]) and torch.equal(got[2][finite], ref[2][finite])
    if n_add == K:  # every code ranked: those in W (with their sign) last, at -inf
        assert (~finite).any()


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("linear", ["none", "start-bonus", "extra"])
@pytest.mark.parametrize("dtype", [f32, f64])
def test_entering_from_the_codebook_gram_matches_the_gemms_gradients(signed, linear, dtype):
    # The rows' gradients made from EEᵀ and ZEᵀ (Σ_j u_j σ_j (EEᵀ)[k_j] − ZEᵀ, with the linear
    # term) rank the same codes as those of the GEMM E(z_q − z), the torch path's formula.
    from scq.solvers.engine.working_set import _gradients

    g = torch.Generator().manual_seed(15)
    N, K, D, m, n_add = 40, 70, 5, 6, 9
    E = torch.randn(K, D, generator=g, dtype=f64)
    z = torch.randn(N, D, generator=g, dtype=f64)
    code = torch.stack([torch.randperm(K, generator=g)[:m] for _ in range(N)])
    flip = torch.rand(N, m, generator=g) < 0.5
    sign = torch.where(flip, -1.0, 1.0).to(f64) if signed else torch.ones(N, m, dtype=f64)
    u = torch.rand(N, m, generator=g, dtype=f64) * (torch.rand(N, m, generator=g) < 0.6)  # some zero weights
    valid = torch.rand(N, m, generator=g) < 0.9
    start = code[:, 0] if linear == "start-bonus" else None
    extra = torch.randn(N, K, generator=g, dtype=f64) if linear == "extra" else None
    bonus = 0.3 if linear == "start-bonus" else 0.0
    zq = torch.einsum("nm,nm,nmd->nd", u, sign, E[code])
    G = _gradients(zq, z, E, extra, start, bonus)
    if signed:
        G_ref = G.clone()
    E, z, u, sign, G = E.to(dtype), z.to(dtype), u.to(dtype), sign.to(dtype), G.to(dtype)
    ref = fused.entering(G.clone(), code, sign, valid, n_add, signed=signed)
    got = fused.table_entering(E @ E.T, z @ E.T, None if extra is None else extra.to(dtype), start, bonus, u, code,
                               sign, valid, n_add, signed=signed)
    assert got is not None and got[0].dtype == dtype
    eps = torch.finfo(dtype).eps
    assert (got[0] - ref[0]).abs().max() < 200 * eps * (1 + float(G.abs().max()))
    if dtype == f64:  # random scores, no near-ties: the same codes and signs in the same order
        assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])
        if signed:  # the entering sign is −sign(g_k)
            assert torch.equal(got[2], torch.where(G_ref.gather(1, got[1]) > 0, -1.0, 1.0).to(f64))


@pytest.mark.parametrize("N,K,table", [(300, 64, True), (40, 64, True), (40, 200, False)])
def test_with_the_codebook_gram_a_solve_runs_two_gemms_whatever_its_rounds(N, K, table):
    # With EEᵀ (K ≤ N, or K ≤ 4N and K ≤ 1024), EEᵀ and ZEᵀ are the forward's only GEMMs (no
    # (n, K) GEMM per round); without (K > 4N), the scores' GEMM, one for the start's gradients and
    # one per round.
    from torch.utils._python_dispatch import TorchDispatchMode

    from scq.solvers.engine.working_set import uses_codebook_gram

    assert uses_codebook_gram(N, K) == table
    assert not uses_codebook_gram(512, 2048) and uses_codebook_gram(4096, 2048)  # EEᵀ out of the cache

    class CountMM(TorchDispatchMode):
        mm = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountMM.mm += func.overloadpacket.__name__ in ("mm", "addmm", "bmm")
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(16)
    E = torch.randn(K, 8, generator=g, dtype=f64)
    x = 0.3 * torch.randn(N, 8, generator=g, dtype=f64)  # inside the hull: supports need several rounds
    with CountMM():
        p, info = scq.solve_scq(x, E, lam=0.05, method="pgd", return_info=True)
    rounds = info.extra["rounds"]
    assert info.converged and rounds >= 3
    assert CountMM.mm == (2 if table else 2 + rounds), (CountMM.mm, rounds)


@pytest.mark.parametrize("K,n_add", [(30, 8), (300, 8), (1024, 16)])
def test_entering_codes_above_a_floor_are_those_of_the_full_ranking(K, n_add):
    # The end of a round asks only for codes scoring at least l1 + ν + tol (the violators): with
    # that floor the kernel must list exactly the full ranking's codes above it, in its order (ties
    # included), and −inf after them; floors from none to all of the candidates.
    from scq.solvers.engine import cpu_kernels as ck

    rng = np.random.default_rng(K + n_add)
    m = 6
    for _ in range(20):
        g = (rng.standard_normal(K) * 4).round() / 4  # a coarse grid: ties at the floor
        code = rng.permutation(K)[:m]
        sign, valid = np.ones(m), rng.random(m) < 0.8
        scratch = ck._entering_scratch(n_add, g.reshape(1, -1))
        full_score, full_code = np.empty(n_add), np.empty(n_add, dtype=np.int64)
        ck._entering_row(g, code, sign, valid, False, *scratch, full_score, full_code, -np.inf)
        for floor in (np.inf, full_score[0], full_score[n_add // 2], full_score[-1], -np.inf):
            score, codes = np.empty(n_add), np.empty(n_add, dtype=np.int64)
            ck._entering_row(g, code, sign, valid, False, *scratch, score, codes, floor)
            wanted = full_score >= floor
            assert np.array_equal(score[wanted], full_score[wanted])
            assert np.array_equal(codes[wanted], full_code[wanted])
            assert np.all(score[~wanted] == -np.inf)


@pytest.mark.parametrize("signed", [False, True])
def test_entering_codes_kernel_breaks_ties_by_the_lower_code(signed):
    # Scores on a coarse grid tie often: the kernel must give the n_add largest, ties in code
    # order, exactly as a stable sort of the scores would.
    from scq.solvers.engine.working_set import QPForm, _entering

    g = torch.Generator().manual_seed(3)
    N, K, m, n_add = 40, 400, 10, 12
    G = (torch.randn(N, K, generator=g, dtype=f32) * 2).round() / 2
    code = torch.stack([torch.randperm(K, generator=g)[:m] for _ in range(N)])
    sign = torch.where(torch.rand(N, m, generator=g) < 0.5, -1.0, 1.0) if signed else torch.ones(N, m)
    valid = torch.ones(N, m, dtype=torch.bool)
    form = QPForm(simplex=not signed, signed=signed, ridge=0.1, l1=0.0)
    score, codes, _ = _entering(G.clone(), code, sign, valid, n_add, form)
    for n in range(N):
        ref = G[n].abs() if signed else -G[n]
        enter_sign = torch.where(G[n] > 0, -1.0, 1.0) if signed else torch.ones(K)
        for j in range(m):
            if enter_sign[code[n, j]] == sign[n, j]:
                ref[code[n, j]] = float("-inf")
        order = torch.sort(-ref, stable=True).indices[:n_add]
        assert torch.equal(codes[n], order) and torch.equal(score[n], ref[order])


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("max_width", [None, 7])
def test_gram_kernel_reuses_the_last_rounds_products_exactly(dtype, signed, max_width):
    # Three rounds as the engine runs them: W keeps some codes, takes in others, a row subset
    # continues, and W grows. Each round's H and Cz must equal the products computed from scratch
    # (the torch path's), whatever the cache held; with ``max_width`` 7 the cache keeps nothing
    # once W is 9 wide (and the products are all computed).
    from scq.solvers.engine.working_set import _code_rows, _gram

    g = torch.Generator().manual_seed(21)
    N, K, D = 40, 30, 7
    E = torch.randn(K, D, generator=g, dtype=dtype)
    z = torch.randn(N, D, generator=g, dtype=dtype)
    cache = fused.GramCache(N, dtype, max_width=max_width)
    code = torch.stack([torch.randperm(K, generator=g)[:6] for _ in range(N)])
    rows = None
    for step, m in enumerate((6, 6, 9)):
        if step:  # keep a random half of each row's codes (shuffled), draw the rest anew
            n = code.shape[0]
            kept = torch.stack([code[i, torch.randperm(code.shape[1], generator=g)] for i in range(n)])[:, :m // 2]
            code = torch.cat([kept, torch.randint(0, K, (n, m - m // 2), generator=g)], 1)
        n = code.shape[0]
        sign = torch.where(torch.rand(n, m, generator=g) < 0.5, -1.0, 1.0).to(dtype) if signed else \
            torch.ones(n, m, dtype=dtype)
        zr = z if rows is None else z[rows]
        H, cz = fused.gram(E, code, sign, zr, ridge=0.3, sys_dtype=dtype, cache=cache, rows=rows)
        C = _code_rows(E, code, sign, True)
        tol = 1e-5 if dtype == f32 else 1e-12
        torch.testing.assert_close(H, _gram(C, 0.3), atol=tol, rtol=tol)
        torch.testing.assert_close(cz, torch.bmm(C, zr.unsqueeze(-1)).squeeze(-1), atol=tol, rtol=tol)
        if step == 0:  # a third of the rows finish; the others go on, as the engine's compaction
            rows = torch.arange(0, N, 3)
            code = code[rows]
        if step == 1:
            assert cache.code.shape == (N, 6) and torch.equal(cache.code[rows], code)
        if step == 2:
            assert cache.gram.shape == ((N, 45) if max_width is None else (N, 0))  # 9·10/2 packed


def test_the_gram_cache_is_never_larger_than_an_n_by_k_buffer():
    # The products, packed (N, m(m+1)/2): the last round's and this one's, when W widens, fit one
    # (N, K) buffer of the inputs' dtype together; past that the cache keeps none.
    for dtype, budget_dtype, widest in [(f32, f32, 9), (f64, f64, 9), (f64, f32, 6)]:
        cache = fused.GramCache.within(5, 100, dtype, budget_dtype)
        assert 2 * widest * (widest + 1) // 2 * dtype.itemsize <= 100 * budget_dtype.itemsize
        assert cache.slots(widest)[0].shape == (5, widest * (widest + 1) // 2)
        assert cache.slots(widest + 1)[0].shape == (5, 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("ridge", [0.0, 0.05])
@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_lasso_certificate_kernel_matches_the_torch_path(dtype, nonneg, ridge, form, monkeypatch):
    # cpu_kernels.lasso_certificate_rows (one pass over K) against certificate._lasso_sweep's torch
    # ops, on solutions perturbed so that every measurement is nonzero, and a nan row. Sparse
    # weights are read as they are: rows of different widths (padding), and a code twice in a row
    # (summed, as SparseWeights.to_dense does).
    from scq.solvers.certificate import certify_lasso
    from scq.solvers.solution import SparseWeights, to_sparse

    g = torch.Generator().manual_seed(7)
    z = torch.randn(30, 6, generator=g, dtype=torch.float64).to(dtype)
    E = torch.randn(200, 6, generator=g, dtype=torch.float64).to(dtype)
    w = scq.solve_lasso(z, E, alpha=0.3, nonneg=nonneg, method="pgd", **({"ridge": ridge} if ridge else {}))
    w = w + 1e-3 * torch.randn(w.shape, generator=g, dtype=torch.float64).to(dtype) * (w.abs() < 0.5)
    w[3, 5] = float("nan")
    w[7, 50:] = 0  # a narrower row: padded in the sparse form
    given = w
    if form == "sparse":
        sw = to_sparse(w)
        assert bool((sw.values[7] == 0).any())  # padding
        # code 9 of row 0 split in two entries
        idx = torch.cat([sw.indices, torch.full((30, 1), 9)], 1)
        val = torch.cat([sw.values, torch.zeros(30, 1, dtype=dtype)], 1)
        j = int((sw.indices[0] == 9).nonzero())
        val[0, -1] = val[0, j] / 2  # (halves: the sum is exact)
        val[0, j] -= val[0, -1]
        given = SparseWeights(idx, val, 200)
        assert torch.allclose(given.to_dense(), w, equal_nan=True)
    swept = []
    sweep = fused.lasso_certificate
    monkeypatch.setattr(fused, "lasso_certificate", lambda *a: swept.append(type(a[1])) or sweep(*a))
    got = certify_lasso(given, z, E, 0.3, nonneg, ridge)
    assert swept == [torch.Tensor if form == "dense" else SparseWeights]
    monkeypatch.setattr(fused, "lasso_certificate", lambda *a: None)  # the torch sweep; the same z_q
    ref = certify_lasso(given, z, E, 0.3, nonneg, ridge)
    tol = 1e-12 if dtype == torch.float64 else 3e-6
    keep = torch.arange(30) != 3
    assert got.residual[3].isnan() and got.objective_gap[3].isnan()
    for a, b in zip(got, ref):
        assert bool(a[3].isnan()) == bool(b[3].isnan())  # (the error bound without a ridge is inf)
        a, b = a[keep], b[keep]
        if b.isinf().all():  # the error bound without a ridge
            assert a.isinf().all()
            continue
        assert float((a - b).abs().max()) <= tol * float(b.abs().max()), (a, b)
    assert float(ref.residual[keep].max()) > 0 and float(ref.objective_gap[keep].max()) > 0


def test_a_first_compile_is_announced_and_a_cached_one_is_not(tmp_path, caplog):
    # The first solve on a machine compiles for 1-2 minutes on 2 cores: said beforehand, once, where
    # Numba's on-disk cache holds none of the kernels (here: an empty cache folder).
    import logging
    import subprocess
    import sys

    from scq.solvers.engine import cpu_kernels, fused

    script = "from scq.solvers.engine import cpu_kernels, fused; fused._compile_notice(cpu_kernels)"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "scq: compiling the CPU kernels with Numba" in done.stderr
    scq.solve_scq(torch.randn(4, 3), torch.randn(8, 3), 0.1)  # compiled (and cached) in this process
    fused._compile_notice.cache_clear()  # (once per process: asked again here)
    with caplog.at_level(logging.WARNING, logger="scq"):
        fused._compile_notice(cpu_kernels)
    assert "compiling" not in caplog.text


def test_a_factor_carried_to_the_next_round_points_at_its_codes_new_slots_or_is_dropped():
    # A row's next round starts its active set from the last round's Cholesky factor, on the slots
    # its codes hold after W was rearranged; where one of them left W the factor is not used.
    from scq.solvers.engine import cpu_kernels as ck

    fact_code, fact_sign = np.array([7, 3, 9, 0]), np.array([1.0, -1.0, 1.0, 1.0])
    row_code, row_sign = np.array([3, 5, 9, 7, 3]), np.array([1.0, 1.0, 1.0, 1.0, -1.0])
    idx = np.full(4, -1)
    assert ck._carried_factor(row_code, row_sign, fact_code, fact_sign, 3, idx) == 3
    assert idx[:3].tolist() == [3, 4, 2]  # code 3 with its sign −1: slot 4, not slot 0
    assert ck._carried_factor(row_code, row_sign, fact_code, fact_sign, 4, idx) == 0  # code 0 left W
    assert ck._carried_factor(row_code, row_sign, fact_code, fact_sign, 0, idx) == 0


def _plain_frank_wolfe(H, b, start, n_steps, width, n_blocks=1):
    """Frank–Wolfe on ½pᵀHp − bᵀp over the simplex from one_hot(start), exact line search, written
    plainly (dense H, NumPy), in blocks of ``n_steps`` steps: a block more (up to ``n_blocks``)
    after one whose steps each picked a code not picked before. Returns the codes given weight in
    the order they were first picked, their weights, then the codes of most negative gradient
    outside them (ties: the lower code), up to ``width`` codes and one more per step past the
    first block; and the steps taken."""
    K = b.shape[0]
    p = np.zeros(K)
    p[start] = 1.0
    order = [start]
    steps, limit, repeated = 0, n_steps, False
    while steps < limit:
        g = H @ p - b
        j = int(np.argmin(g))
        d = -p.copy()
        d[j] += 1.0
        if not g @ d < 0:
            break
        p += min(1.0, -(g @ d) / (d @ H @ d)) * d
        repeated |= j in order
        order += [j] if j not in order else []
        steps += 1
        if steps == limit and limit < n_steps * n_blocks and not repeated:
            limit += n_steps
    g = H @ p - b
    picked = [c for c in order if p[c] > 0]
    width += max(steps - n_steps, 0)
    rest = [int(k) for k in np.argsort(g, kind="stable") if int(k) not in picked][: max(0, width - len(picked))]
    return picked, p[picked], rest, steps


@pytest.mark.parametrize("linear", ["start-bonus", "target"])
@pytest.mark.parametrize("n_steps, n_blocks", [(0, 1), (1, 1), (5, 1), (25, 1), (1, 3), (5, 3), (8, 4)])
@pytest.mark.parametrize("K, D", [(70, 5), (300, 5), (300, 40)])  # 70: fewer codes than the sweep's 64 lanes
def test_the_frank_wolfe_start_is_plain_frank_wolfe(linear, n_steps, n_blocks, K, D):
    # The row-by-row rounds' first W (cpu_kernels._frank_wolfe_start) against Frank–Wolfe written
    # plainly: the same codes in the same order, the same weights (a feasible start), the same
    # codes of most negative gradient after them; as many steps, blocks of them run on where
    # each step found a new code (D = 40: supports of many codes, so the blocks run on).
    from scq.solvers.engine import cpu_kernels as ck

    rng = np.random.default_rng(n_steps + K + D)
    lam, width, m = 0.1, 16, 72  # (m: W's slots, room for all of 32 steps' codes and the widest W)
    E = rng.standard_normal((K, D))
    z = 0.5 * rng.standard_normal(D)
    table, scores = E @ E.T, E @ z
    start = int(np.argmin((E * E).sum(1) - 2 * scores))
    extra = lam * rng.dirichlet(np.ones(K)) if linear == "target" else np.empty(0)
    b = scores + (extra if linear == "target" else lam * (np.arange(K) == start))
    picked, weights, rest, steps = _plain_frank_wolfe(table + lam * np.eye(K), b, start, n_steps, width, n_blocks)
    if D == 40 and n_steps and n_blocks > 1:  # (the case is there for this)
        assert steps > n_steps

    code, sign, u = np.full(m, 7, dtype=np.int64), np.zeros(m), np.full(m, 0.5)
    s, valid = np.ones(m, dtype=np.bool_), np.ones(m, dtype=np.bool_)
    code[0] = start
    n = ck._frank_wolfe_start(table, scores, extra, start if linear == "start-bonus" else -1, lam, lam, n_steps,
                              n_blocks, width, code, sign, u, s, valid, ck._fw_scratch(n_steps, n_blocks, width, table))
    wider = width + max(steps - n_steps, 0)
    assert n == len(picked) + len(rest) == max(wider, len(picked))  # FW's codes all kept, past width
    assert code[:n].tolist() == picked + rest
    assert np.allclose(u[:len(picked)], weights, rtol=0, atol=1e-12) and abs(u.sum() - 1) < 1e-12
    assert s.tolist() == [True] * len(picked) + [False] * (m - len(picked))
    assert valid.tolist() == [True] * n + [False] * (m - n) and not u[len(picked):].any()
    assert (n_steps > 1) <= (len(picked) > 1)  # FW moved off the start


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("with_target", [False, True])
def test_the_frank_wolfe_start_gives_the_same_answer_in_fewer_rounds(dtype, with_target, monkeypatch):
    # The rounds with and without the Frank–Wolfe start (option fw_steps): the same answer,
    # gradients and certificate, and rows needing fewer rounds on the whole (random codes, D = 8:
    # supports of several codes that the one-hot start ranks badly).
    from scq.solvers.engine import cpu_kernels as ck

    g = torch.Generator().manual_seed(21)
    E = torch.randn(256, 8, generator=g, dtype=f64).to(dtype)
    x = torch.randn(300, 8, generator=g, dtype=f64).to(dtype)
    target = torch.softmax(3 * torch.randn(300, 256, generator=g, dtype=f64), -1).to(dtype) if with_target else None
    row_rounds = []
    launch = ck.table_rounds_par
    monkeypatch.setattr(ck, "table_rounds_par", lambda *a: row_rounds.append(a[35]) or launch(*a))  # a[35]: rounds

    def run(steps, dtype=dtype):
        # (a fresh leaf each run: x.to(x's dtype) is x, and its .grad would gather every run's)
        z = x.to(dtype).clone().requires_grad_()
        p, info = scq.solve_scq(z, E.to(dtype), lam=0.1, target=None if target is None else target.to(dtype),
                                method="pgd", return_info=True, fw_steps=steps)
        (p * torch.arange(256, dtype=dtype)).sum().backward()
        return p.detach().double(), info, z.grad.double(), float(row_rounds[-1].mean())

    exact, _, exact_grad, _ = run(0, f64)
    p0, info0, g0, rounds0 = run(0)
    p1, info1, g1, rounds1 = run(ws.FW_STEPS)  # (the default)
    assert info0.converged and info1.converged
    # float32: certified to a relative KKT residual of 1e-6, within ~1e-5 of the exact weights
    # (docs/math.md §7; 1.7e-6 here, with the start and without).
    tol = 1e-5 if dtype == f32 else 1e-11
    for p, grad in ((p0, g0), (p1, g1)):
        assert (p - exact).abs().max() < tol
        if dtype == f64:  # (float32's supports may differ by a code of weight ~1e-6: its Jacobian with them)
            assert (grad - exact_grad).abs().max() < 1e3 * tol
    assert rounds1 < 0.7 * rounds0, (rounds1, rounds0)


@pytest.mark.parametrize("dtype", [f32, f64])
def test_frank_wolfe_blocks_that_run_on_give_the_same_answer_in_fewer_rounds(dtype, monkeypatch):
    # Random codes at D = 96: supports of ~21 codes, more than 10 FW steps reach, so rows whose
    # steps each found a new code run more blocks (working_set.FW_BLOCKS) with a wider first W:
    # the same answer and gradients as one block, in fewer rounds.
    from scq.solvers.engine import cpu_kernels as ck

    g = torch.Generator().manual_seed(22)
    E = torch.randn(256, 96, generator=g, dtype=f64)
    x = torch.randn(256, 96, generator=g, dtype=f64)
    row_rounds = []
    launch = ck.table_rounds_par
    monkeypatch.setattr(ck, "table_rounds_par", lambda *a: row_rounds.append(a[35]) or launch(*a))  # a[35]: rounds

    def run(blocks, dtype=dtype):
        monkeypatch.setattr(ws, "FW_BLOCKS", blocks)
        z = x.to(dtype).clone().requires_grad_()
        p, info = scq.solve_scq(z, E.to(dtype), lam=0.1, method="pgd", return_info=True)
        (p * torch.arange(256, dtype=dtype)).sum().backward()
        return p.detach().double(), info, z.grad.double(), float(row_rounds[-1].mean())

    exact, _, exact_grad, _ = run(1, f64)
    p1, info1, g1, rounds1 = run(1)
    p3, info3, g3, rounds3 = run(3)
    assert info1.converged and info3.converged
    tol = 1e-5 if dtype == f32 else 1e-11
    for p, grad in ((p1, g1), (p3, g3)):
        assert (p - exact).abs().max() < tol
        if dtype == f64:
            assert (grad - exact_grad).abs().max() < 1e3 * tol
    assert rounds3 < 0.8 * rounds1, (rounds3, rounds1)  # (1.75 → 1.16 a row)


def test_the_kernels_pass_no_literal_constants_to_one_another():
    # Numba compiles a callee once per argument type, and a constant 0 (or −1, False) is a type of
    # its own, Literal[int](0): a call with a literal where the same argument elsewhere is a
    # variable compiled the callee, and everything it calls with that argument, twice. So did a
    # counter that starts at 0 and is passed on (typed Literal in its first iteration, int64 after):
    # 10 kernels had a second version (_round_row, the active set and its Cholesky helpers, …),
    # and an empty float32 certificate scale beside the float64 one doubled the rounds' kernels.
    # Such values are the module's typed constants instead (_ZERO, _NO, _NO_CAP).
    import ast
    import inspect

    from scq.solvers.engine import cpu_kernels as ck

    tree = ast.parse(inspect.getsource(ck))
    kernels = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    literal = lambda a: isinstance(a, ast.Constant) and isinstance(a.value, (int, bool)) or (
        isinstance(a, ast.UnaryOp) and isinstance(a.operand, ast.Constant))
    found = []
    for f in (f for f in tree.body if isinstance(f, ast.FunctionDef)):
        starts_literal = {t.id for node in ast.walk(f) if isinstance(node, ast.Assign) and literal(node.value)
                          for t in node.targets if isinstance(t, ast.Name)}
        for call in (n for n in ast.walk(f) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
            if call.func.id not in kernels:
                continue
            for a in call.args:
                if literal(a) or (isinstance(a, ast.Name) and a.id in starts_literal):
                    found.append(f"{f.name} → {call.func.id}({ast.unparse(a)})")
    assert not found, found


@pytest.mark.parametrize("problem", ["scq", "lasso"])
def test_the_rounds_kernels_get_the_same_argument_types_with_a_certificate_or_without(problem, monkeypatch):
    # An empty float32 certificate scale (the lasso's, which the rounds do not certify) beside SCQ's
    # float64 one compiled the rounds' kernels a second time, ~50 s each on 2 cores.
    import inspect

    k = fused.round_kernels(torch.zeros(1))
    names = {kernel: list(inspect.signature(getattr(k, kernel).kernel.py_func).parameters)
             for kernel in ("table_rounds_par", "finish_par")}
    seen = {}
    for kernel in names:
        launch = getattr(k, kernel)

        def spy(*args, kernel=kernel, launch=launch):
            seen[kernel] = args[names[kernel].index("cert_scale")].dtype
            return launch(*args)

        monkeypatch.setattr(k, kernel, spy)
    g = torch.Generator().manual_seed(5)
    E = torch.randn(16, 4, generator=g, dtype=f32)
    for N in (64, 2):  # K ≤ N: the row-by-row rounds on EEᵀ; K > 4N: the batch loop's finish
        z = torch.randn(N, 4, generator=g, dtype=f32)
        scq.solve_scq(z, E, 0.1) if problem == "scq" else scq.solve_lasso(z, E, 0.3)
    assert seen == {"table_rounds_par": np.float64, "finish_par": np.float64}, seen


def _scaled_row_sums(x, out, c, lo, hi):
    for i in range(lo, hi):
        out[i] = c * x[i].sum()


def _row_sums_per_range(x, acc, lo, hi):
    for i in range(lo, hi):
        acc += x[i]


def test_the_parallel_launcher_runs_a_kernel_once_compiled_for_each_argument_types():
    # InParallel keys the kernel's compiled versions by the arguments' types: dtype, layout and
    # writeability (Numba's fingerprint) and a Python int's value range. A wrong key would call a
    # version compiled for other types through its address: wrong answers, not an error.
    from numba import njit

    from scq.solvers.engine import cpu_kernels as ck

    launch = ck.InParallel(njit(_scaled_row_sums))
    bounds = np.array([0, 3, 7, 7, 10])  # (an empty range too)
    x64 = np.random.default_rng(0).standard_normal((10, 6))
    readonly = x64.copy()
    readonly.setflags(write=False)
    cases = [(x64, 2.0), (x64.astype(np.float32), 2.0), (x64[:, ::2], 2.0), (readonly, 2.0), (x64, 3),
             (x64, 2**63), (x64, 2.0)]
    for x, c in cases:
        out = np.zeros(10, x.dtype)
        launch(x, out, c, bounds)
        np.testing.assert_allclose(out, c * x.astype(np.float64).sum(1), rtol=1e-6)
    # One version each but the last (the first's types again): f64, f32, strided, read-only, int64, uint64.
    assert len(launch._compiled) == len(launch.kernel.signatures) == 6


def test_the_parallel_launcher_gives_each_range_its_own_output():
    from numba import njit

    from scq.solvers.engine import cpu_kernels as ck

    launch = ck.InParallel(njit(_row_sums_per_range), own=True)
    x = np.random.default_rng(1).standard_normal((9, 4))
    bounds = np.array([0, 2, 5, 9])
    for acc in (np.zeros((3, 4)), np.zeros((3, 4, 2))[..., 0]):  # contiguous, and strided ("A" layout)
        launch(x, acc, bounds)
        np.testing.assert_allclose(acc, [x[0:2].sum(0), x[2:5].sum(0), x[5:9].sum(0)])


def test_the_parallel_loop_calls_its_kernel_by_address_not_as_linked_code():
    # Linked into each parallel loop that calls it, a kernel is optimized and compiled again in
    # each of the loop's modules: a third of every variant's first-use compile. Through its address
    # (what InParallel passes), the loop's code holds no copy of the kernel. (Fresh dispatchers of
    # the loop, without Numba's cache: a cached module cannot be read back as LLVM IR.)
    from numba import njit, typeof

    from scq.solvers.engine import cpu_kernels as ck

    kernel = njit(_scaled_row_sums)
    x, out, bounds = np.ones((4, 3)), np.zeros(4), np.array([0, 2, 4])
    launch = ck.InParallel(kernel)
    by_address = launch._address((x, out, 1.0))
    assert isinstance(typeof(by_address), ck.types.FunctionType)

    def loop_ir(rows):
        loop = njit(parallel=True)(ck._each_range.py_func)
        loop(rows, bounds, x, out, 1.0)
        return "\n".join(loop.inspect_llvm().values())

    assert "_scaled_row_sums" not in loop_ir(by_address)
    assert "_scaled_row_sums" in loop_ir(kernel)  # (called by name: linked in, as the launchers once were)
    np.testing.assert_allclose(out, x.sum(1))


def _rows_refusing_negatives(x, out, lo, hi):
    for i in range(lo, hi):
        if x[i] < 0:
            raise ValueError("a negative row")
        out[i] = x[i]


def test_an_error_in_a_kernel_run_through_its_address_is_raised_by_the_launch():
    # Numba's C wrapper of a kernel hands its exception to sys.unraisablehook and returns: without
    # the launch taking it there, a failed range would leave its rows unwritten and say nothing.
    import sys

    from numba import njit

    from scq.solvers.engine import cpu_kernels as ck

    launch = ck.InParallel(njit(_rows_refusing_negatives))
    hook = sys.unraisablehook
    out = np.zeros(4)
    launch(np.array([1.0, 2.0, 3.0, 4.0]), out, np.array([0, 2, 4]))
    np.testing.assert_array_equal(out, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="a negative row"):
        launch(np.array([1.0, -1.0, 2.0, 3.0]), out, np.array([0, 2, 4]))
    assert sys.unraisablehook is hook
