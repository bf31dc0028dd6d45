"""torch.func's transforms through the solvers: grad, vjp and jacrev give autograd's gradients
(the autograd Functions keep forward and context apart, as torch.func requires); vmap is refused
with a clear error (each solve decides on its data; the solvers are batched already)."""

import warnings

import pytest
import torch

import scq
from scq.solvers.engine import fused
from tests.conftest import cuda_devices

f64 = torch.float64


def _problem(dtype=f64, seed=0, N=6, K=12, D=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g, dtype=dtype), torch.randn(K, D, generator=g, dtype=dtype)


def _autograd_grad(f, x):
    x = x.detach().clone().requires_grad_()
    f(x).backward()
    return x.grad


@pytest.fixture
def no_kernel_failures():
    # A kernel handed a transform's wrapper (no storage) would fail, warn and switch every later
    # call to the torch path: the transforms must route such work to the torch path up front (the
    # warning, an error here, fails the test).
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


@pytest.mark.parametrize("path", ["compiled", "torch"])
@pytest.mark.parametrize("method", ["pgd", "relaxed"])
@pytest.mark.parametrize("wrt", ["z", "codebook"])
def test_func_grad_matches_autograd(path, method, wrt, monkeypatch, no_kernel_failures):
    monkeypatch.setattr(fused, "ENABLED", path == "compiled")
    z, E = _problem()
    weigh = torch.linspace(-1, 1, E.shape[0], dtype=f64)
    if wrt == "z":
        f = lambda x: (scq.solve_scq(x, E, 0.1, method=method) * weigh).square().sum()
        x = z
    else:
        f = lambda x: (scq.solve_scq(z, x, 0.1, method=method) * weigh).square().sum()
        x = E
    got = torch.func.grad(f)(x)
    expected = _autograd_grad(f, x)
    assert expected.abs().max() > 1e-3  # a gradient to compare
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_func_grad_matches_autograd_on_cuda(device, dtype, no_kernel_failures):
    # The Triton rounds inside the Function, the certificate on the wrapped outputs in torch ops.
    z, E = (t.to(device) for t in _problem(dtype, N=300, K=64, D=16))
    f = lambda x: scq.solve_scq(z, x, 0.1).square().sum()
    got = torch.func.grad(f)(E)
    expected = _autograd_grad(f, E)
    tol = 1e-10 if dtype == f64 else 1e-4
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * float(expected.abs().max()))


def test_func_jacrev_matches_autograds_jacobian(no_kernel_failures):
    z, E = _problem(N=3, K=8)
    solve = lambda x: scq.solve_scq(x, E, 0.1)
    got = torch.func.jacrev(solve)(z)
    expected = torch.autograd.functional.jacobian(solve, z)
    assert got.shape == (3, 8, 3, 4) and expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_func_grad_through_the_lasso_and_a_module(no_kernel_failures):
    z, E = _problem()
    f = lambda x: scq.solve_lasso(x, E, alpha=0.1).square().sum()
    torch.testing.assert_close(torch.func.grad(f)(z), _autograd_grad(f, z), rtol=1e-10, atol=1e-12)

    # A module's parameters through functional_call, as meta-learning code does.
    torch.manual_seed(0)
    q = scq.SCQ(4, 12, lam=0.1).double()
    q(z)  # its k-means init on a first batch, outside the transform
    params = {k: v.detach() for k, v in q.named_parameters()}
    loss = lambda p: torch.func.functional_call(q, p, (z,))[0].square().sum()
    got = torch.func.grad(loss)(params)["codebook"]
    q.zero_grad()
    q(z)[0].square().sum().backward()
    torch.testing.assert_close(got, q.codebook.grad, rtol=1e-10, atol=1e-12)


def test_the_solve_reports_its_certificate_under_a_transform(no_kernel_failures):
    # The engine's counters reach the caller (torch.func would pass a copy of a plain dict).
    z, E = _problem()
    seen = {}

    def f(x):
        p, info = scq.solve_scq(x, E, 0.1, return_info=True)
        seen.update(converged=info.converged, rounds=info.extra["rounds"])
        return p.square().sum()

    torch.func.grad(f)(z)
    assert seen["converged"] and seen["rounds"] >= 1


def test_vmap_is_refused_with_a_clear_error():
    z, E = _problem()
    with pytest.raises(RuntimeError, match=r"z comes from torch.vmap.*\(\.\.\., D\)"):
        torch.func.vmap(lambda x: scq.solve_scq(x, E, 0.1))(z.unsqueeze(1))
    with pytest.raises(RuntimeError, match="codebook comes from torch.vmap"):
        torch.func.vmap(lambda c: scq.solve_scq(z, c, 0.1))(E.unsqueeze(0).expand(2, -1, -1))


def test_the_exact_layer_says_it_does_not_run_under_a_transform():
    pytest.importorskip("cvxpylayers")
    z, E = _problem(N=2, K=5)
    with pytest.raises(RuntimeError, match=r"method='exact' \(cvxpylayers\) does not run under torch.func"):
        torch.func.grad(lambda c: scq.solve_scq(z, c, 0.1, method="exact").sum())(E)
    with pytest.raises(RuntimeError, match=r"solve_lasso\(method='exact'\).*torch.func"):
        torch.func.grad(lambda x: scq.solve_lasso(x, E, alpha=0.1, method="exact").sum())(z)
