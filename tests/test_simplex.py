import pytest
import torch
from torch.autograd import gradcheck

import scq
from scq.simplex import simplex_threshold
from tests.helpers import assert_close, numpy_projection


@pytest.mark.parametrize("method", ["sort", "bisect"])
@pytest.mark.parametrize("K", [1, 2, 7, 100])
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_matches_numpy_reference(method, K, scale):
    u = scale * torch.randn(13, K, dtype=torch.float64)
    p = scq.project_simplex(u, method=method)
    assert_close(p, torch.from_numpy(numpy_projection(u.numpy())), atol=1e-12)


def test_sort_and_bisect_agree_float32():
    u = 3 * torch.randn(64, 50)
    assert_close(scq.project_simplex(u, method="sort"), scq.project_simplex(u, method="bisect"), atol=1e-6)


def test_dim_and_leading_shapes():
    u = torch.randn(3, 5, 4, dtype=torch.float64)
    p = scq.project_simplex(u, dim=1)
    assert p.shape == u.shape
    assert_close(p.sum(1), torch.ones(3, 4, dtype=torch.float64), atol=1e-12)
    assert_close(p, scq.project_simplex(u.transpose(1, 2)).transpose(1, 2), atol=1e-14)


def test_points_on_simplex_are_fixed():
    p = torch.softmax(torch.randn(10, 6, dtype=torch.float64), -1)
    assert_close(scq.project_simplex(p), p, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_returns_input_dtype(dtype):
    p = scq.project_simplex(torch.randn(4, 9).to(dtype))
    assert p.dtype == dtype
    assert_close(p.float().sum(-1), torch.ones(4), atol=2e-2)


@pytest.mark.parametrize("method", ["sort", "bisect"])
@pytest.mark.parametrize("K", [1, 3, 10])
def test_gradcheck(method, K):
    # Away from ties between coordinates and τ the map is smooth: gradcheck applies.
    u = torch.randn(5, K, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: scq.project_simplex(x, method=method), (u,))


def test_backward_is_sparsemax_jacobian():
    u = torch.tensor([[0.5, 0.4, -1.0, 0.45]], dtype=torch.float64, requires_grad=True)
    p = scq.project_simplex(u)
    g = torch.tensor([[1.0, 2.0, 3.0, 5.0]], dtype=torch.float64)
    (grad,) = torch.autograd.grad(p, u, g)
    s = (p > 0).double()
    expected = s * (g - (g * s).sum() / s.sum())
    assert_close(grad, expected, atol=1e-14)


def test_threshold_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        simplex_threshold(torch.randn(2, 3), "quick")


def test_bad_inputs():
    with pytest.raises(TypeError, match="x"):
        scq.project_simplex([1.0, 2.0])
    with pytest.raises(TypeError, match="floating"):
        scq.project_simplex(torch.arange(3))
    with pytest.raises(ValueError, match="method"):
        scq.project_simplex(torch.randn(3), method="fast")
    with pytest.raises(ValueError, match="size 0"):
        scq.project_simplex(torch.randn(3, 0))


@pytest.mark.parametrize("method", ["sort", "bisect"])
def test_a_nan_row_comes_out_nan_and_leaves_the_others_alone(method):
    # As softmax does: a row holding a nan projects to nan (the sort path raised an index error),
    # and the other rows are projected as without it.
    u = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    clean = scq.project_simplex(u, method=method)
    u[2, 5] = float("nan")
    p = scq.project_simplex(u, method=method)
    assert p[2].isnan().all()
    assert torch.equal(p[[0, 1, 3]], clean[[0, 1, 3]])


def test_the_torch_solver_carries_a_nan_row_to_its_certificate(monkeypatch):
    # pgd's torch path (CUDA, or the CPU without its kernels) projects with simplex_threshold: a
    # nan row (the front door rejects nan inputs, but a method may be called alone, and values can
    # overflow) must reach the certificate, measured nan there, not stop the solve with an index
    # error as it did; the other rows are solved.
    from scq.solvers.certificate import certify_scq
    from scq.solvers.engine import fused
    from scq.solvers.pgd import solve_pgd
    from tests.helpers import problem

    monkeypatch.setattr(fused, "ENABLED", False)
    z, E = problem(N=6, K=10, D=3, seed=1)
    z[4, 0] = float("nan")
    weights, _ = solve_pgd(z, E, 0.3, None)
    residual = certify_scq(weights, z, E, 0.3, None).residual
    assert residual[4].isnan()
    assert float(residual[[0, 1, 2, 3, 5]].max()) < 1e-12
