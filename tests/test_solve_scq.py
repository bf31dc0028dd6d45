"""solve_scq: every method against independent references, shapes, gradients."""

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import scq
from scq.reference import reference_scq, reference_scq_grads
from scq.problems import resolve_target
from tests.helpers import assert_close, numpy_relaxed, on_simplex, problem

LAMS = [0.01, 0.1, 1.0, 10.0]


def test_registry_lists_methods():
    assert {"exact", "relaxed", "pgd"} <= set(scq.available_methods())
    assert "approximate" in scq.describe_method("relaxed")
    with pytest.raises(ValueError, match="unknown method"):
        scq.describe_method("nope")


@pytest.mark.parametrize("lam", LAMS)
def test_exact_matches_cvxpy_reference(lam):
    z, E = problem(N=6, K=12, D=4, seed=1)
    w = scq.solve_scq(z, E, lam, method="exact")
    assert_close(w, reference_scq(z, E, lam), atol=1e-7)


@pytest.mark.parametrize("lam", LAMS)
def test_relaxed_matches_numpy_algorithm(lam):
    for K, D in [(16, 4), (6, 10)]:  # the Woodbury path (D < K) and the K×K path
        z, E = problem(N=7, K=K, D=D, seed=2)
        target = resolve_target(z, E, None)
        w = scq.solve_scq(z, E, lam, method="relaxed")
        expected = numpy_relaxed(z.numpy(), E.numpy(), lam, target.numpy())
        assert_close(w, torch.from_numpy(expected), atol=1e-9)


def test_relaxed_is_not_the_exact_solution_for_small_lambda():
    # Documented: the relaxation is approximate; a test that can tell them apart.
    z, E = problem(N=8, K=16, D=4, seed=3)
    gap = (scq.solve_scq(z, E, 0.1, method="relaxed") - reference_scq(z, E, 0.1)).abs().max()
    assert gap > 1e-2


@pytest.mark.parametrize("method", ["exact", "relaxed", "pgd"])
def test_outputs_on_simplex_with_leading_dims(method):
    z, E = problem(N=6, K=10, D=3, seed=4)
    w = scq.solve_scq(z.reshape(2, 3, 3), E, 0.5, method=method)
    assert w.shape == (2, 3, 10)
    assert w.dtype == z.dtype
    assert on_simplex(w, 1e-7)


@pytest.mark.parametrize("method", ["exact", "relaxed", "pgd"])
def test_empty_batch(method):
    z, E = problem(N=0, K=10, D=3)
    w = scq.solve_scq(z, E, 0.5, method=method)
    assert w.shape == (0, 10)
    w2 = scq.solve_scq(z.reshape(0, 4, 3), E, 0.5, method=method)
    assert w2.shape == (0, 4, 10)


@pytest.mark.parametrize("method", ["exact", "relaxed", "pgd"])
def test_given_target(method):
    z, E = problem(N=5, K=8, D=3, seed=5)
    target = torch.softmax(torch.randn(5, 8, dtype=torch.float64), -1)
    w = scq.solve_scq(z, E, 0.3, target=target, method=method)
    if method == "relaxed":
        expected = torch.from_numpy(numpy_relaxed(z.numpy(), E.numpy(), 0.3, target.numpy()))
        assert_close(w, expected, atol=1e-9)
    else:
        assert_close(w, reference_scq(z, E, 0.3, target), atol=1e-7)


@pytest.mark.parametrize("method", ["relaxed", "pgd"])
@pytest.mark.parametrize("lam", [0.05, 2.0])
def test_gradcheck(method, lam):
    z, E = problem(N=4, K=9, D=3, seed=6)
    target = torch.softmax(torch.randn(4, 9, dtype=torch.float64), -1)
    args = tuple(t.clone().requires_grad_() for t in (z, E, target))
    assert gradcheck(lambda a, b, c: scq.solve_scq(a, b, lam, target=c, method=method), args)


@pytest.mark.slow
def test_gradcheck_exact():
    z, E = problem(N=2, K=6, D=3, seed=7)
    target = torch.softmax(torch.randn(2, 6, dtype=torch.float64), -1)
    args = tuple(t.clone().requires_grad_() for t in (z, E, target))
    f = lambda a, b, c: scq.solve_scq(a, b, 0.3, target=c, method="exact", solver_args={"eps": 1e-12})
    assert gradcheck(f, args, atol=1e-5)


@pytest.mark.parametrize("method", ["exact", "pgd"])
def test_gradients_match_dense_kkt_formulas(method):
    z, E = problem(N=5, K=12, D=4, seed=8)
    lam = 0.2
    target = resolve_target(z, E, None)
    zz, EE = z.clone().requires_grad_(), E.clone().requires_grad_()
    tt = target.clone().requires_grad_()
    w = scq.solve_scq(zz, EE, lam, target=tt, method=method)
    g = torch.randn_like(w)
    grads = torch.autograd.grad((w * g).sum(), (zz, EE, tt))
    ref = reference_scq(z, E, lam)
    expected = reference_scq_grads(z, E, lam, target, ref, g)
    for got, exp, name in zip(grads, expected, ("z", "codebook", "target")):
        rel = (got - exp).abs().max() / exp.abs().max()
        assert rel < 1e-6, f"{method}: d/d{name} off by {rel:.2e} relative"


def test_half_precision_inputs_computed_in_float32():
    z, E = problem(N=6, K=10, D=3, seed=9, dtype=torch.float32)
    w16 = scq.solve_scq(z.half(), E.half(), 0.5, method="pgd")
    assert w16.dtype == torch.float16
    w32 = scq.solve_scq(z.half().float(), E.half().float(), 0.5, method="pgd")
    assert_close(w16.float(), w32, atol=2e-3)


def test_return_info():
    z, E = problem(N=6, K=10, D=3, seed=10)
    w, info = scq.solve_scq(z, E, 0.5, method="pgd", return_info=True)
    assert isinstance(info, scq.SolverInfo) and info.method == "pgd" and info.converged


def test_register_method_is_used_by_solve_scq():
    from scq.solvers import registry

    @scq.register_method("_uniform_for_test", exact=False)
    def uniform(z, codebook, lam, target):
        return torch.full((z.shape[0], codebook.shape[0]), 1.0 / codebook.shape[0], dtype=z.dtype), scq.SolverInfo("_uniform_for_test")

    try:
        z, E = problem(N=3, K=4, D=2)
        w, info = scq.solve_scq(z, E, 1.0, method="_uniform_for_test", return_info=True)
        assert_close(w, torch.full((3, 4), 0.25, dtype=torch.float64))
        # The front door certifies a user's method too: uniform weights are not the solution.
        assert not info.converged and info.residual > 1e-3 and info.error_bound > 0
        with pytest.raises(ValueError, match="already registered"):
            scq.register_method("_uniform_for_test")(uniform)
    finally:
        registry.SCQ_METHODS.unregister("_uniform_for_test")


def test_the_reference_falls_back_to_scs_where_clarabel_fails(monkeypatch):
    # Clarabel failed numerically on 4096 codes close to the inputs (runtime benchmark): the
    # reference then takes SCS, polished and certified as before, and says so when both fail.
    import cvxpy as cp

    from scq import reference

    z, E = problem(N=3, K=12, D=4, seed=8)
    expected = reference.reference_scq(z, E, 0.3)
    real_solve = cp.Problem.solve
    tried = []

    def clarabel_fails(self, *args, solver=None, **kwargs):
        tried.append(solver)
        if solver == cp.CLARABEL:
            raise cp.error.SolverError("Solver 'CLARABEL' failed.")
        return real_solve(self, *args, solver=solver, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", clarabel_fails)
    got = reference.reference_scq(z, E, 0.3)
    assert tried == [cp.CLARABEL, cp.SCS] * 3
    assert torch.allclose(got, expected, atol=1e-9)

    def every_solver_fails(self, *args, solver=None, **kwargs):
        raise cp.error.SolverError(f"{solver} failed")

    monkeypatch.setattr(cp.Problem, "solve", every_solver_fails)
    with pytest.raises(RuntimeError, match="reference solve failed: CLARABEL.*SCS"):
        reference.reference_scq(z, E, 0.3)


def test_the_reference_is_finished_by_an_active_set_where_its_support_cannot_be_read_off(monkeypatch):
    # 200 codes on a line (D = 1): Clarabel's answer was too loose for any support guess to certify
    # (KKT residual ~1e-3, 0.012 from the solution) and was returned as it was. A textbook active
    # set now finishes it: the reference certifies, as judged by an independent dense KKT check,
    # and agrees with pgd's certified answer; a loose answer that nothing can finish is flagged.
    from scq import reference
    from tests.helpers import scq_kkt_violation

    g = torch.Generator().manual_seed(740438986)
    E = torch.randn(200, 1, generator=g, dtype=torch.float64)
    z = torch.randn(11, 1, generator=g, dtype=torch.float64)
    target = resolve_target(z, E, None)
    ref = reference.reference_scq(z, E, 0.107)
    assert max(scq_kkt_violation(r[None], zr[None], E, 0.107, t[None]) for r, zr, t in zip(ref, z, target)) < 1e-12
    assert_close(scq.solve_scq(z, E, 0.107, method="pgd"), ref, atol=1e-10)

    H, b = (E @ E.T + 0.107 * torch.eye(200, dtype=torch.float64)).numpy(), (E @ z[0] + 0.107 * target[0]).numpy()
    exact = reference._active_set_simplex(H, b, 0, 1e-12)
    assert_close(torch.from_numpy(exact), ref[0], atol=1e-12)
    assert reference._active_set_simplex(H, b, 0, 1e-12, max_iter=1) is None  # too few steps: not an answer
    loose = ref[0].numpy() + 1e-3 * np.abs(np.random.default_rng(0).standard_normal(200))
    monkeypatch.setattr(reference, "_active_set_simplex", lambda *a, **k: None)
    with pytest.warns(RuntimeWarning, match="failed its KKT certificate"):
        kept = reference._polish_simplex(loose / loose.sum(), z[0].numpy(), E.numpy(), 0.107, target[0].numpy())
    assert np.allclose(kept, loose / loose.sum())
