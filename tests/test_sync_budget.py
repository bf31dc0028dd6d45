"""The host-sync budget of the fast solvers (issue #12): none in the backward, and one per
certificate round plus one for the certificate in the forward where compiled kernels run (the
torch path adds its active-set checks: asserted as a ceiling, so that a change adding syncs fails)."""

import pytest
import torch

import scq
from scq.solvers.engine import fused

from .helpers import count_syncs


def _module(kind):
    torch.manual_seed(0)
    if kind == "scq":
        return scq.SCQ(16, 64, lam=0.1)
    return scq.SVQ(16, 64, solver="lasso", alpha=0.5)


@pytest.mark.parametrize("kind", ["scq", "svq-lasso"])
def test_backward_has_no_host_sync(kind):
    q = _module(kind)
    x = torch.randn(256, 16, requires_grad=True)
    out = q(x)
    loss = out.quantized.square().mean() + out.loss
    assert count_syncs(loss.backward) == 0
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", ["scq", "svq-lasso"])
def test_torch_path_forward_syncs(kind, monkeypatch):
    monkeypatch.setattr(fused, "ENABLED", False)
    q = _module(kind)
    x = torch.randn(256, 16)
    q(x)  # warm
    syncs = count_syncs(lambda: q(x))
    rounds, inner = q.last_info.extra["rounds"], q.last_info.iterations
    # The torch path (no compiled kernels): one per certificate round (convergence, working-set
    # width and compaction in one read), one per active-set check (every 2 iterations, counted per
    # round: at most (inner + rounds) / 2 in all), the certificate, and the lasso's default ridge.
    assert syncs <= rounds + (inner + rounds + 1) // 2 + 2, (syncs, rounds, inner)


@pytest.mark.skipif(fused.backend(torch.zeros(1, 1, 1)) is None, reason="no compiled kernels on this machine")
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("lam", [0.1, 1e-7])
def test_scq_forward_backward_makes_one_sync_per_round_and_the_certificate(train, lam):
    # The budget: rounds + 1. No input check up front (dispatch.solve looks for NaN only
    # where a certificate fails) and no read of max‖e‖² of its own (it comes with round 1's counts).
    # λ = 1e-7 in float32 needs float64 systems: round 1 runs again, counted as a round.
    q = _module("scq")
    q.lam = lam
    q.train(train)
    x = torch.randn(256, 16, requires_grad=True)
    q(x)  # warm (a first training forward reads the ``initted`` flag)

    def step():
        out = q(x)
        (out.quantized.square().mean() + out.loss).backward()

    syncs = count_syncs(step)
    info = q.last_info
    assert info.converged
    assert info.extra["systems"][0] == (torch.float64 if lam < 1e-6 else torch.float32)
    assert syncs <= info.extra["rounds"] + 1, (syncs, info.extra["rounds"])


@pytest.mark.skipif(fused.backend(torch.zeros(1, 1, 1)) is None, reason="no compiled kernels on this machine")
@pytest.mark.parametrize("ridge", [None, 1e-3])
def test_lasso_forward_syncs(ridge):
    # The default ridge (1e-6·max‖e‖² in float32) reads max‖e‖² once, and the engine reuses it.
    q = scq.SVQ(16, 64, solver="lasso", alpha=0.5, **({} if ridge is None else {"ridge": ridge}))
    x = torch.randn(256, 16)
    q(x)
    syncs = count_syncs(lambda: q(x))
    assert syncs <= q.last_info.extra["rounds"] + (2 if ridge is None else 1), (syncs, q.last_info.extra["rounds"])


@pytest.mark.parametrize("K", [64, 1024])
def test_relaxed_syncs_once_for_its_certificate_and_once_for_a_wide_projection(K):
    # The certificate's read, and where K > 2·TOP_FIRST the projection's look at which rows'
    # support filled their largest entries; none for its expected miss of the tolerance, none in
    # the backward.
    q = scq.SCQ(16, K, lam=0.1, method="relaxed")
    x = torch.randn(256, 16, requires_grad=True)
    q(x)
    out = []
    assert count_syncs(lambda: out.append(q(x))) == (1 if K <= 128 else 2)
    assert not q.last_info.converged
    loss = out[0].quantized.square().mean() + out[0].loss
    assert count_syncs(loss.backward) == 0


@pytest.mark.parametrize("path", ["compiled", "torch"])
def test_row_blocks_add_no_host_sync(path, monkeypatch):
    # Past the block budget (scq/solvers/engine/blocks.py: here blocks of 16 of the 128 rows) the
    # nearest-code search, each round's gradients and entering codes and the certificate run a block
    # at a time: the same syncs as one pass, none a block. (K > 4N: no codebook Gram path either way.)
    from scq.solvers.engine import blocks

    monkeypatch.setattr(fused, "ENABLED", path == "compiled")
    torch.manual_seed(0)
    q = scq.SCQ(16, 1024, lam=0.1)
    x = torch.randn(128, 16, requires_grad=True)

    def step():
        out = q(x)
        (out.quantized.square().mean() + out.loss).backward()

    step()
    whole = count_syncs(step)
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 16 * 1024)
    split = count_syncs(step)
    assert q.last_info.converged and split == whole, (split, whole)
