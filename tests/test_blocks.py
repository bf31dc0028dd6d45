"""Row blocks (scq/solvers/engine/blocks.py): past the budget, the solvers' (n, K) passes (the
nearest-code search, the rounds' gradients and entering codes, the certificate) run a block of rows
at a time, and give the answers of one pass over all rows. The budget is made small here so that
small problems are split into many blocks; tests/test_memory.py checks what it saves."""

import pytest
import torch

import scq
from scq.problems import code_scores, nearest_code
from scq.solvers import certificate as C
from scq.solvers.engine import blocks, fused
from scq.solvers.solution import to_sparse

from .conftest import cuda_devices


@pytest.mark.parametrize("n, K, budget", [(10, 7, 1000), (10, 7, 21), (10, 7, 20), (10, 7, 3), (0, 7, 21), (5, 0, 8)])
def test_row_blocks_cover_the_rows_in_order_within_the_budget(n, K, budget, monkeypatch):
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", budget)
    parts = blocks.row_blocks(n, K)
    covered = [i for b in parts for i in range(b.start, b.stop)]
    assert covered == list(range(n))
    assert all(b.stop > b.start for b in parts) or n == 0
    # Each block within the budget (a single row may exceed it: the least a block can be).
    assert all((b.stop - b.start) * K <= budget or b.stop - b.start == 1 for b in parts)
    assert (len(parts) == 1) == blocks.fits(n, K) or n <= 1


def _run(layer, dtype, z, E, target=None):
    """Weights, gradients (z, E and, for SCQ, the target) and info of a solve with a backward."""
    inputs = [t.clone().requires_grad_(True) for t in (z, E) + (() if target is None else (target,))]
    if layer == "scq":
        p, info = scq.solve_scq(inputs[0], inputs[1], 0.1, target=None if target is None else inputs[2],
                                method="pgd", return_info=True)
    else:
        p, info = scq.solve_lasso(inputs[0], inputs[1], 0.05, method="pgd", nonneg=layer == "lasso-nonneg",
                                  return_info=True)
    weigh = torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(p.device, dtype)
    (p * weigh).sum().backward()
    return p.detach(), [t.grad for t in inputs], info


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", ["compiled", "torch"])
@pytest.mark.parametrize("layer", ["scq", "scq-target", "lasso", "lasso-nonneg"])
def test_pgd_in_row_blocks_gives_the_answer_of_one_pass(layer, path, dtype, monkeypatch):
    # K > 4N: the rounds make (n, K) gradients (no codebook Gram matrix). Blocks of 7 rows: the
    # first round's blocks, and the later rounds' (compacted to the rows left) cut rows apart.
    monkeypatch.setattr(fused, "ENABLED", path == "compiled")
    g = torch.Generator().manual_seed(0)
    N, K, D = 40, 600, 6
    z = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    E = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
    target = torch.softmax(torch.randn(N, K, generator=g, dtype=torch.float64), -1).to(dtype) \
        if layer == "scq-target" else None
    layer = "scq" if layer == "scq-target" else layer
    whole, whole_grads, whole_info = _run(layer, dtype, z, E, target)
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 7 * K)
    split, split_grads, split_info = _run(layer, dtype, z, E, target)
    assert whole_info.converged and split_info.converged
    assert split_info.extra["rounds"] == whole_info.extra["rounds"] > 2
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(split, whole, atol=tol, rtol=0)
    for a, b in zip(split_grads, whole_grads):
        assert torch.allclose(a, b, atol=10 * tol, rtol=tol)
    assert abs(split_info.residual - whole_info.residual) <= tol


def test_the_block_budget_turns_the_codebook_gram_path_off(monkeypatch):
    # Its rounds read ZEᵀ (N, K) whole: past the budget the per-row products' path runs instead.
    from scq.solvers.engine.working_set import uses_codebook_gram

    assert uses_codebook_gram(512, 256)
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 511 * 256)
    assert not uses_codebook_gram(512, 256)
    g = torch.Generator().manual_seed(1)
    z, E = torch.randn(512, 8, generator=g, dtype=torch.float64), torch.randn(256, 8, generator=g, dtype=torch.float64)
    p, info = scq.solve_scq(z, E, 0.1, method="pgd", return_info=True)
    monkeypatch.undo()
    assert info.converged and torch.allclose(p, scq.solve_scq(z, E, 0.1, method="pgd"), atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_certificates_in_row_blocks_match_one_pass(form, compiled, monkeypatch):
    # Answers a little off the optimum (so that the measurements are not all zero), certified whole and
    # in blocks of 5 rows: SCQ with the default target (its nearest codes found per block, or handed
    # on), with a target, and the lasso.
    monkeypatch.setattr(fused, "ENABLED", compiled)
    g = torch.Generator().manual_seed(2)
    N, K, D = 23, 50, 4
    z, E = torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(K, D, generator=g, dtype=torch.float64)
    target = torch.softmax(torch.randn(N, K, generator=g, dtype=torch.float64), -1)
    nearest = nearest_code(code_scores(z, E), E)
    p = scq.solve_scq(z, E, 0.1)
    p = (p + 0.01 * torch.rand(N, K, generator=g, dtype=torch.float64) * (p > 0)).div(1.001)
    w = scq.solve_lasso(z, E, 0.05)
    w = w + 0.01 * (w != 0)
    as_form = (lambda t: t) if form == "dense" else to_sparse
    checks = [lambda: C.certify_scq(as_form(p), z, E, 0.1, None),
              lambda: C.certify_scq(as_form(p), z, E, 0.1, None, nearest=nearest),
              lambda: C.certify_scq(as_form(p), z, E, 0.1, target),
              lambda: C.certify_lasso(as_form(w), z, E, 0.05, False, ridge=0.01)]
    whole = [check() for check in checks]
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 5 * K)
    for check, expected in zip(checks, whole):
        got = check()
        assert all(float(field.max()) > 0 for field in expected)  # (something to compare)
        for a, b in zip(got, expected):
            assert a.shape == (N,) and torch.allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("layer", ["scq", "lasso"])
def test_pgd_in_row_blocks_on_cuda_gives_the_answer_of_one_pass(layer, device, monkeypatch):
    # The CUDA rounds (Triton) with blocks of 7 rows against one pass, and against the CPU.
    g = torch.Generator().manual_seed(0)
    N, K, D = 40, 600, 6
    z, E = torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(K, D, generator=g, dtype=torch.float64)
    cpu, cpu_grads, _ = _run(layer, torch.float64, z, E)
    whole, whole_grads, whole_info = _run(layer, torch.float64, z.to(device), E.to(device))
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 7 * K)
    split, split_grads, split_info = _run(layer, torch.float64, z.to(device), E.to(device))
    assert whole_info.converged and split_info.converged
    assert split_info.extra["rounds"] == whole_info.extra["rounds"]
    for a, b, c in zip([split] + split_grads, [whole] + whole_grads, [cpu] + cpu_grads):
        assert torch.allclose(a, b, atol=1e-12) and torch.allclose(a.cpu(), c, atol=1e-10)


@pytest.mark.parametrize("path", ["compiled", "torch"])
@pytest.mark.parametrize("layer", ["scq", "lasso"])
def test_torch_func_grad_through_row_blocks_matches_autograd(layer, path, monkeypatch):
    # The blocks' buffers (matmul's out=) and slices under torch.func's grad transform, with no
    # kernel failure (a warning would switch every later call to the torch path: an error here).
    import warnings

    monkeypatch.setattr(fused, "ENABLED", path == "compiled")
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 7 * 200)
    g = torch.Generator().manual_seed(0)
    z, E = torch.randn(30, 4, generator=g, dtype=torch.float64), torch.randn(200, 4, generator=g, dtype=torch.float64)
    weigh = torch.linspace(-1, 1, 200, dtype=torch.float64)
    solve = (lambda x: scq.solve_scq(x, E, 0.1, method="pgd")) if layer == "scq" else \
        (lambda x: scq.solve_lasso(x, E, 0.05, method="pgd"))
    f = lambda x: (solve(x) * weigh).square().sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = torch.func.grad(f)(z)
    x = z.clone().requires_grad_(True)
    f(x).backward()
    assert x.grad.abs().max() > 1e-3
    torch.testing.assert_close(got, x.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("budget, message", [(0, ">= 1"), (-5, ">= 1"), ("big", ">= 1"), (True, ">= 1")])
def test_a_budget_that_is_not_a_number_of_entries_is_named(budget, message, monkeypatch):
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", budget)
    with pytest.raises(ValueError, match="GEMM_BLOCK_ELEMENTS must be a number of entries " + message):
        scq.solve_scq(torch.randn(4, 3), torch.randn(8, 3), 0.1, method="pgd")


def test_a_float_budget_is_taken_as_its_integer(monkeypatch):
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 1e3)
    assert blocks.block_rows(100, 30) == 33 and blocks.entries_per_row(10) == 100 and not blocks.fits(34, 30)
