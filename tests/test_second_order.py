"""Second derivatives through the solvers and the modules (``create_graph=True``: a gradient
penalty, a Hessian-vector product, a meta-learning step), checked in float64 against finite
differences of the backward (gradgradcheck) and, for the modules, of a gradient penalty itself.

The solution is piecewise smooth: its support is constant near these inputs, so the backward's
formula is differentiated as it stands (scq.solvers.engine.working_set.WorkingSetFunction)."""

import pytest
import torch
from torch.autograd import gradgradcheck

import scq
from tests.conftest import cuda_devices
from tests.helpers import problem


@pytest.mark.parametrize("lam", [0.05, 2.0])
@pytest.mark.parametrize("target", [False, True], ids=["nearest-code-target", "soft-target"])
def test_pgd_is_twice_differentiable(lam, target, codebook_gram):
    z, E = problem(N=4, K=9, D=3, seed=6)
    p_tilde = torch.softmax(torch.randn(4, 9, dtype=torch.float64), -1)
    if target:
        args = tuple(t.clone().requires_grad_() for t in (z, E, p_tilde))
        assert gradgradcheck(lambda a, b, c: scq.solve_scq(a, b, lam, target=c, method="pgd"), args)
    else:
        args = tuple(t.clone().requires_grad_() for t in (z, E))
        assert gradgradcheck(lambda a, b: scq.solve_scq(a, b, lam, method="pgd"), args)


@pytest.mark.parametrize("lam", [0.05, 2.0])
def test_relaxed_is_twice_differentiable(lam):
    z, E = problem(N=4, K=9, D=3, seed=6)
    target = torch.softmax(torch.randn(4, 9, dtype=torch.float64), -1)
    args = tuple(t.clone().requires_grad_() for t in (z, E, target))
    assert gradgradcheck(lambda a, b, c: scq.solve_scq(a, b, lam, target=c, method="relaxed"), args)


@pytest.mark.parametrize("nonneg", [False, True])
def test_lasso_is_twice_differentiable(nonneg, codebook_gram):
    z, E = problem(N=3, K=10, D=4, seed=14)
    args = (z.clone().requires_grad_(), E.clone().requires_grad_())
    assert gradgradcheck(lambda a, b: scq.solve_lasso(a, b, 0.2, nonneg=nonneg), args)


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("solve", ["scq-pgd", "scq-relaxed", "lasso"])
def test_second_derivatives_on_cuda(solve, device):
    # The forward runs the Triton rounds there; the backward that builds a graph, torch ops.
    z, E = problem(N=4, K=9, D=3, seed=6, device=device)
    args = (z.clone().requires_grad_(), E.clone().requires_grad_())
    if solve == "lasso":
        assert gradgradcheck(lambda a, b: scq.solve_lasso(a, b, 0.2), args)
    else:
        assert gradgradcheck(lambda a, b: scq.solve_scq(a, b, 0.3, method=solve[4:]), args)


def _penalty(module, x):
    """A gradient penalty ‖∂‖z_q‖²/∂x‖², kept on the graph. (Not of the commitment loss: its
    stop-gradients, as any ``detach``, are constants to autograd's second derivative but not to a
    finite difference of the penalty's value.)"""
    (g,) = torch.autograd.grad(module(x).quantized.pow(2).sum(), x, create_graph=True)
    return g.pow(2).sum()


@pytest.mark.parametrize("build", [
    lambda: scq.SCQ(dim=3, codebook_size=9, method="pgd", lam=0.3),
    lambda: scq.SCQ(dim=3, codebook_size=9, method="relaxed", lam=0.3),
    lambda: scq.SVQ(dim=3, codebook_size=9, solver="lasso", alpha=0.2),
], ids=["scq-pgd", "scq-relaxed", "svq-lasso"])
def test_a_gradient_penalty_trains_through_the_soft_quantizers(build):
    # The penalty's gradient (a second derivative) against its central difference along a direction,
    # for the input and, where it learns, the codebook. (VQ's straight-through output has no second
    # derivative to compare: its value is piecewise constant in x, its gradient the identity.)
    module = build().double().eval()
    x = problem(N=5, K=9, D=3, seed=3)[0].requires_grad_()
    _penalty(module, x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    direction = [torch.randn_like(t) for t in [x] + params]
    analytic = sum((g * d).sum() for g, d in zip([x.grad] + grads, direction))
    eps = 1e-6

    def shifted(sign):
        with torch.no_grad():
            for t, d in zip([x] + params, direction):
                t.add_(sign * eps * d)
        value = _penalty(module, x).item()
        with torch.no_grad():
            for t, d in zip([x] + params, direction):
                t.sub_(sign * eps * d)
        return value

    numeric = (shifted(1) - shifted(-1)) / (2 * eps)
    assert abs(analytic.item() - numeric) <= 1e-5 * max(1.0, abs(numeric))
