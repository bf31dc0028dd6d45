"""VQ and SCQ modules: outputs, gradients, dtypes, conventions."""

import pytest
import torch

import scq
from tests.helpers import assert_close


@pytest.mark.parametrize("cls,kwargs", [(scq.VQ, {}), (scq.SCQ, {}), (scq.SCQ, {"method": "relaxed"})])
@pytest.mark.parametrize("shape", [(7, 6), (2, 3, 6), (2, 0, 6), (6,)])
def test_output_shapes_unpack(cls, kwargs, shape):
    # (6,): one vector, no batch axes, as nn.Linear takes it (it failed in the indices' reshape).
    q = cls(6, 10, **kwargs)
    x = torch.randn(*shape)
    out = q(x)
    quantized, weights, indices, loss = out
    assert isinstance(out, scq.QuantizerOutput)
    assert quantized.shape == shape
    assert weights.shape == shape[:-1] + (10,)
    assert indices.shape == shape[:-1] and indices.dtype == torch.int64
    assert loss.dim() == 0
    if weights.numel():
        assert_close(weights.sum(-1), torch.ones(shape[:-1]), atol=1e-5)
        assert torch.equal(indices, weights.argmax(-1))
    if len(shape) == 1:  # the same answer as a batch of one
        one = q(x[None])
        assert_close(one.quantized[0], quantized)
        assert torch.equal(one.indices[0], indices)


@pytest.mark.parametrize("cls,kwargs", [(scq.SCQ, {}), (scq.SVQ, {"solver": "lasso", "alpha": 0.5}),
                                        (scq.SVQ, {"solver": "mlp"})])
def test_one_vector_with_heads_and_sparse_weights(cls, kwargs):
    x = torch.randn(6, requires_grad=True)
    out = cls(6, 10, heads=2, **kwargs)(x)
    assert out.quantized.shape == (6,) and out.weights.shape == (2, 10) and out.indices.shape == (2,)
    out.quantized.sum().backward()
    assert x.grad.shape == (6,)
    sparse = cls(6, 10, return_weights="sparse", **kwargs)(x.detach())
    assert sparse.indices.shape == () and sparse.weights.values.shape[:-1] == ()


def test_backward_scope_made_without_init_is_deleted_quietly():
    # torch.compile's tracer makes the forward's BackwardScope without __init__; its __del__ then
    # raised AttributeError ("Exception ignored in ..." printed at every compiled call).
    from scq.solvers.threads import BackwardScope

    scope = BackwardScope.__new__(BackwardScope)
    scope.__del__()
    threads = torch.get_num_threads()
    scope._leave()
    assert torch.get_num_threads() == threads


def test_vq_is_nearest_code_with_straight_through():
    q = scq.VQ(3, 5)
    x = torch.randn(20, 3, requires_grad=True)
    quantized, weights, indices, loss = q(x)
    expected = torch.cdist(x.detach(), q.codebook.detach()).argmin(-1)
    assert torch.equal(indices, expected)
    assert_close(quantized, q.codebook.detach()[expected])
    (grad,) = torch.autograd.grad(quantized.sum(), x)
    assert_close(grad, torch.ones_like(x))  # straight-through: identity gradient


def test_vq_loss_is_codebook_plus_commitment():
    q = scq.VQ(3, 5, beta=0.25)
    x = torch.randn(20, 3)
    quantized, _, indices, loss = q(x)
    mse = ((q.codebook.detach()[indices] - x) ** 2).mean()
    assert_close(loss, 1.25 * mse)
    loss.backward()
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["pgd", "relaxed"])
def test_scq_gradients_flow_to_input_and_codebook(method):
    q = scq.SCQ(4, 12, lam=0.1, method=method).double()
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    quantized, weights, _, _ = q(x)
    assert_close(quantized, weights @ q.codebook)
    quantized.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.codebook.grad.abs().sum() > 0


def test_scq_pgd_module_gradients_match_dense_path():
    # The module's sparse path (z_q from the support) and the functional dense path agree.
    torch.manual_seed(1)
    q = scq.SCQ(4, 12, lam=0.1).double()
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    quantized, *_ = q(x)
    g1 = torch.autograd.grad(quantized.pow(2).sum(), (x, q.codebook))
    w = scq.solve_scq(x, q.codebook, 0.1, method="pgd")
    g2 = torch.autograd.grad((w @ q.codebook).pow(2).sum(), (x, q.codebook))
    for a, b in zip(g1, g2):
        assert_close(a, b, atol=1e-10)


def test_scq_default_method_is_pgd_and_reports_info():
    q = scq.SCQ(4, 8)
    assert q.method == "pgd"
    q(torch.randn(5, 4))
    assert q.last_info.method == "pgd" and q.last_info.converged
    assert "lam=0.1" in repr(q) and "method='pgd'" in repr(q)


@pytest.mark.parametrize("cls", [scq.VQ, scq.SCQ])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_return_input_dtype(cls, dtype):
    q = cls(4, 8)
    quantized, weights, _, loss = q(torch.randn(5, 4).to(dtype))
    assert quantized.dtype == dtype and weights.dtype == dtype
    assert torch.isfinite(quantized.float()).all()


@pytest.mark.parametrize("cls", [scq.VQ, scq.SCQ])
def test_float64_module(cls):
    q = cls(4, 8).double()
    quantized, weights, _, _ = q(torch.randn(5, 4, dtype=torch.float64))
    assert quantized.dtype == torch.float64


def test_init_from_data():
    q = scq.VQ(3, 4)
    x = torch.randn(10, 3)
    q.init_codebook_from_data(x)
    for code in q.codebook:
        assert (x - code).abs().sum(-1).min() == 0


@pytest.mark.parametrize("init", ["normal", "uniform", "kaiming"])
def test_inits(init):
    q = scq.SCQ(4, 16, init=init)
    if init == "uniform":
        assert q.codebook.abs().max() <= 1 / 16
    assert torch.isfinite(q.codebook).all()


@pytest.mark.parametrize("used", [False, True])
def test_modules_pickle_and_reload(used):
    import io

    # ``used``: after a forward and backward, whose last_info held a lambda (pgd's and the lasso's
    # hint): torch.save(model) failed on any model that had run once.
    x = torch.randn(5, 4, requires_grad=True)
    modules = (scq.VQ(4, 8), scq.SCQ(4, 8), scq.SCQ(4, 8, method="relaxed"), scq.SVQ(4, 16, solver="lasso", alpha=0.5),
               scq.SVQ(4, 16, solver="mlp"))
    for q in modules:
        if used:
            q(x).quantized.sum().backward()
        buffer = io.BytesIO()
        torch.save(q, buffer)
        buffer.seek(0)
        again = torch.load(buffer, weights_only=False)
        assert torch.equal(again.codebook, q.codebook)
        again.load_state_dict(q.state_dict())  # the codebook check runs after loading
        torch.testing.assert_close(again(x.detach()).quantized, q(x.detach()).quantized)
        assert dict(again.solver_options if hasattr(q, "solver_options") else {}) == dict(getattr(q, "solver_options", {}))


def test_hyperparameters_are_checked_when_set():
    q = scq.SCQ(4, 8)
    with pytest.raises(ValueError, match="lam must be"):
        q.lam = -1.0
    with pytest.raises(ValueError, match="unknown method"):
        q.method = "nope"
    q.method = "relaxed"
    assert q(torch.randn(3, 4)).weights.shape == (3, 8) and q.last_info.method == "relaxed"
    s = scq.SVQ(4, 16, solver="lasso", alpha=0.5)
    with pytest.raises(ValueError, match="lasso_method"):
        s.lasso_method = "nope"


@pytest.mark.parametrize("make", [lambda: scq.SCQ(8, 32), lambda: scq.SCQ(8, 32, method="relaxed"),
                                  lambda: scq.SVQ(8, 32, solver="lasso", alpha=0.3, freeze_codebook=False),
                                  lambda: scq.VQ(8, 32)], ids=["pgd", "relaxed", "lasso", "vq"])
def test_gradient_checkpointing_from_the_first_forward(make):
    # torch.utils.checkpoint (non-reentrant) recomputes the forward in the backward and needs the
    # same tensors saved both times. A fresh module checks x for NaN on its first forward only, and
    # that check (isfinite, an abs() underneath) saved x in the graph: the recomputation saved one
    # tensor fewer and the backward raised CheckpointError.
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    q, layer = make(), torch.nn.Linear(8, 8)
    x = torch.randn(64, 8)

    def loss(out):
        return out.quantized.square().sum() + out.loss

    loss(checkpoint(lambda v: q(layer(v)), x, use_reentrant=False)).backward()
    grads = [p.grad.clone() for p in (layer.weight, q.codebook) if p.grad is not None]
    for p in (layer.weight, layer.bias, q.codebook):
        p.grad = None
    loss(q(layer(x))).backward()
    for got, want in zip(grads, [p.grad for p in (layer.weight, q.codebook) if p.grad is not None]):
        assert_close(got, want)
