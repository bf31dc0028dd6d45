"""SVQ: the MLP is the documented formula, frozen/learnable codebooks, the lasso solver."""

import pytest
import torch

import scq
from tests.helpers import assert_close


def test_mlp_output_is_the_documented_formula():
    q = scq.SVQ(8, 300, hidden=16)
    x = torch.randn(2, 5, 8)
    quantized, weights, indices, loss = q(x)
    lin1, lin2 = q.mlp[0], q.mlp[2]
    w = torch.relu(x @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias
    assert_close(weights, w, atol=1e-5)
    assert_close(quantized, w @ q.codebook, atol=1e-4)
    assert torch.equal(indices, w.abs().argmax(-1))
    assert loss.item() == 0
    assert lin1.out_features == 16 and lin2.out_features == 300


def test_hidden_width_is_capped_at_codebook_size():
    assert scq.SVQ(4, 10, hidden=128).mlp[0].out_features == 10


def test_relu_output():
    q = scq.SVQ(4, 50, relu_output=True)
    assert (q(torch.randn(20, 4)).weights >= 0).all()


@pytest.mark.parametrize("solver", ["mlp", "lasso"])
def test_frozen_codebook_gets_no_gradient_learnable_does(solver):
    kwargs = dict(solver=solver, alpha=0.5) if solver == "lasso" else dict(solver=solver)
    frozen = scq.SVQ(6, 40, **kwargs)
    x = torch.randn(10, 6, requires_grad=True)
    frozen(x).quantized.pow(2).sum().backward()
    assert not frozen.codebook.requires_grad and frozen.codebook.grad is None
    assert x.grad is not None and x.grad.abs().sum() > 0
    learnable = scq.SVQ(6, 40, freeze_codebook=False, **kwargs)
    learnable(torch.randn(10, 6)).quantized.pow(2).sum().backward()
    assert learnable.codebook.grad is not None and learnable.codebook.grad.abs().sum() > 0


def test_lasso_solver_equals_solve_lasso():
    q = scq.SVQ(6, 40, solver="lasso", alpha=0.5, nonneg=True).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    quantized, weights, _, _ = q(x)
    assert_close(weights, scq.solve_lasso(x, q.codebook, 0.5, nonneg=True))
    assert_close(quantized, weights @ q.codebook)
    assert q.last_info.converged


@pytest.mark.parametrize("init", ["normal", "kaiming"])
def test_inits_and_repr(init):
    q = scq.SVQ(4, 20, init=init)
    assert "solver='mlp'" in repr(q) and "frozen=True" in repr(q)


def test_bad_arguments():
    with pytest.raises(ValueError, match="solver must be one of"):
        scq.SVQ(4, 10, solver="ista")
    with pytest.raises(ValueError, match="alpha must be"):
        scq.SVQ(4, 10, solver="lasso", alpha=-1)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\)"):
        scq.SVQ(4, 10)(torch.randn(3, 5))


def test_mlp_keeps_its_dtype_for_other_input_dtypes():
    q = scq.SVQ(4, 30)
    out = q(torch.randn(5, 4, dtype=torch.float64))
    assert out.quantized.dtype == torch.float64 and q.mlp[0].weight.dtype == torch.float32
    assert q(torch.randn(5, 4).half()).quantized.dtype == torch.float16
