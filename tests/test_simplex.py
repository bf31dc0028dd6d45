import pytest
import torch
from torch.autograd import gradcheck

import scq
from scq import simplex
from scq.simplex import simplex_threshold
from tests.conftest import cuda_devices
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


@pytest.mark.parametrize("first", [64, 4])
@pytest.mark.parametrize("scale", [0.001, 0.1, 100.0])
def test_the_sort_method_looks_past_its_first_entries_where_the_support_fills_them(first, scale, monkeypatch):
    # K > 2·TOP_FIRST: "sort" sorts only each row's largest TOP_FIRST entries, then 4× as many for
    # the rows whose support filled them, then the whole row. Small scales give supports of
    # hundreds (two looks again), large ones of one; rows of one batch differ (some look again).
    monkeypatch.setattr(simplex, "TOP_FIRST", first)
    g = torch.Generator().manual_seed(3)
    u = scale * torch.randn(12, 700, dtype=torch.float64, generator=g) * torch.logspace(-2, 1, 12, dtype=torch.float64
                                                                                         ).unsqueeze(1)
    looks = []
    topk = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda t, k, **kw: looks.append((t.shape[0], k)) or topk(t, k, **kw))
    p = scq.project_simplex(u)
    assert_close(p, torch.from_numpy(numpy_projection(u.numpy())), atol=1e-12)
    # each look takes exactly the rows whose support filled the one before (the whole row sorted
    # once k ≥ K/2)
    support, k, rows, expected = (p > 0).sum(-1), first, 12, []
    while rows and 2 * k < 700:
        expected.append((rows, k))
        rows, k = int((support >= k).sum()), 4 * k
    assert looks == expected and len(expected) >= (3 if first == 4 and scale < 1 else 1), looks


def test_the_sort_method_on_wide_rows_keeps_shapes_ties_and_nan_rows():
    u = torch.randn(3, 5, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    u[0, 1] = 0.25  # a tie across the whole row: the support is all of it
    u[2, 3, 7] = float("nan")
    p = scq.project_simplex(u)
    assert p.shape == u.shape
    assert p[2, 3].isnan().all()
    assert_close(p[0, 1], torch.full((300,), 1 / 300, dtype=torch.float64), atol=1e-15)
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[2, 3] = False
    assert_close(p[keep], torch.from_numpy(numpy_projection(u[keep].numpy())), atol=1e-12)


@pytest.mark.parametrize("device", cuda_devices())
def test_the_sort_method_on_cuda_matches_the_cpu(device):
    # torch.topk on CUDA, the look again at the rows whose support filled the first 64 entries
    # (small scales: hundreds of codes), and the backward, against the CPU.
    g = torch.Generator().manual_seed(5)
    u = torch.randn(48, 3000, dtype=torch.float64, generator=g) * torch.logspace(-3, 1, 48, dtype=torch.float64
                                                                                   ).unsqueeze(1)
    grad = torch.randn(48, 3000, dtype=torch.float64, generator=g)
    x_cpu, x_gpu = u.clone().requires_grad_(True), u.to(device).requires_grad_(True)
    p_cpu, p_gpu = scq.project_simplex(x_cpu), scq.project_simplex(x_gpu)
    (p_cpu * grad).sum().backward()
    (p_gpu * grad.to(device)).sum().backward()
    assert int((p_cpu > 0).sum(-1).max()) > 64
    assert_close(p_gpu.cpu(), p_cpu, atol=1e-12)
    assert_close(x_gpu.grad.cpu(), x_cpu.grad, atol=1e-12)
