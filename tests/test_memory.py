"""(N, K) buffer budgets of a forward+backward (issue #12: at N = K = 16384 in float32 every (N, K)
temporary is a gigabyte), counted exactly as the bytes the step's tensors hold at once
(tests/helpers.peak_tensor_bytes), in units of one (N, K) float32 buffer."""

import pytest
import torch

import scq
from scq.bench.common import CODEBOOKS

from .helpers import fresh_tensor_bytes, peak_tensor_bytes


def _training_step(module, N: int, K: int, D: int, codebook: str = "random"):
    """A training step (forward+backward) of ``module`` on a batch of the benchmark's ``codebook``
    kind, its codes copied in; run once already (a first training forward initializes)."""
    x, E = CODEBOOKS[codebook](N, K, D, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    with torch.no_grad():
        module.codebook.copy_(E)

    def step():
        z = x.clone().requires_grad_(True)
        out = module(z)
        (out.quantized.square().sum() + out.loss).backward()

    step()
    return step


def _peak_buffers(module, N: int, K: int, D: int, codebook: str = "random") -> float:
    return peak_tensor_bytes(_training_step(module, N, K, D, codebook)) / (N * K * 4)


def test_relaxed_and_vq_buffer_budgets():
    # relaxed: p_u, then the projection's output p (kept for the backward), and in the backward
    # the incoming gradient and the one returned: 3 and a bool mask. The projection sorts only each
    # row's largest entries (sorting whole rows held their values and int64 indices too: 4.1).
    # VQ: its one-hot weights, made in the input's dtype at once (one_hot's int64 and its float
    # copy held 3.1).
    N, K, D = 256, 1024, 16
    relaxed = _peak_buffers(scq.SCQ(D, K, lam=0.1, method="relaxed"), N, K, D)
    vq = _peak_buffers(scq.VQ(D, K), N, K, D)
    assert relaxed <= 3.5, relaxed
    assert vq <= 1.3, vq


@pytest.mark.parametrize("codebook", ["data_like", "random"])
@pytest.mark.parametrize("return_weights", ["none", "dense"])
def test_pgd_holds_one_gradient_buffer_at_a_time(codebook, return_weights):
    # K > 4N: pgd's CPU rounds make G = (z_q − z)Eᵀ (n, K) a round with one GEMM. The scores of the
    # nearest-code search go once the start is found, and each round's G before the next is made
    # (3.3 buffers before: the scores and two Gs); sparse or no weights asked for make no dense
    # copy. (N ≫ D and K ≫ m², so that the O(K·D) and O(N·m²) terms stay small here.)
    N, K, D = 128, 8192, 16
    peak = _peak_buffers(scq.SCQ(D, K, lam=0.1, method="pgd", return_weights=return_weights), N, K, D, codebook)
    assert peak <= 2.0, peak


@pytest.mark.parametrize("codebook", ["data_like", "random"])
def test_pgds_rounds_write_their_gradients_into_the_scores_buffer(codebook):
    # K > 4N: the compiled CPU rounds' G (n, K) a round, and the first W's, go into the buffer of
    # the nearest-code search's scores, done with by then. A fresh (N, K) buffer each (~6 buffers'
    # worth a forward+backward here, 9 rounds) was fresh pages: 12.6k page faults a forward at
    # N = 1024, K = 4096, D = 64; 0.87–1.0× the time without them at K > N. Only the scores' GEMM allocates.
    N, K, D = 128, 4096, 16
    module = scq.SCQ(D, K, lam=0.1, method="pgd", return_weights="none")
    step = _training_step(module, N, K, D, codebook)
    assert module.last_info.extra["rounds"] > 3  # rounds enough that a buffer each would show
    fresh = fresh_tensor_bytes(step, N * K // 2) / (N * K * 4)
    assert fresh <= 1.0, fresh


@pytest.mark.parametrize("return_weights", ["sparse", "none"])
@pytest.mark.parametrize("layer", ["scq", "svq-lasso"])
def test_sparse_or_no_weights_make_no_dense_copy(return_weights, layer, monkeypatch):
    # The front door densified every answer (with autograd) and the module then dropped the copy;
    # the lasso's certificate densified its weights too (its rounds do not certify on their own).
    from scq.solvers import solution

    made = []
    to_dense = solution.SparseWeights.to_dense
    monkeypatch.setattr(solution.SparseWeights, "to_dense", lambda self, *a, **k: made.append(1) or to_dense(self, *a, **k))
    q = scq.SCQ(8, 64, lam=0.1, method="pgd", return_weights=return_weights) if layer == "scq" else \
        scq.SVQ(8, 64, solver="lasso", return_weights=return_weights)
    out = q(torch.randn(32, 8, requires_grad=True))
    (out.quantized.square().sum() + out.loss).backward()
    assert made == [] and q.last_info.converged
    assert (out.weights is None) == (return_weights == "none")


def test_the_mlps_sparse_weights_cost_no_more_than_its_dense_ones():
    # The MLP's weights have every code: their sparse form, as top-k indices (int64) and gathered
    # values, held 3 buffers more (6.1 against 3.1); it is now the weights and a stride-0 view of
    # the codes 0..K−1.
    N, K, D = 256, 4096, 16
    sparse = _peak_buffers(scq.SVQ(D, K, return_weights="sparse"), N, K, D)
    dense = _peak_buffers(scq.SVQ(D, K), N, K, D)
    assert sparse <= dense + 0.1, (sparse, dense)
    w = scq.SVQ(D, K, return_weights="sparse")(torch.randn(5, D)).weights
    assert w.indices.stride() == (0, 1) and torch.equal(w.indices[3], torch.arange(K))


def test_pgds_gram_cache_is_as_wide_as_the_working_set():
    # The CPU rounds cache each row's products of codes between rounds: m the widest row's W, not
    # the capacity W's arrays were grown to (up to 2m). On a random codebook in D = 16, W reached
    # ~80 slots and the cache held 4× the products it had to (5.6 buffers, then 2.8); with fewer
    # codes entering a round W reaches ~39-41 slots (1.44 buffers; 1.30 with the products packed).
    N, K, D = 256, 4096, 16
    q = scq.SCQ(D, K, lam=0.1, method="pgd", return_weights="none")
    peak = _peak_buffers(q, N, K, D, "random")
    assert q.last_info.extra["working_set"] > 32  # wider than a power of two: capacity 64
    assert peak <= 1.7, peak


def test_the_lassos_gram_cache_keeps_within_one_buffer_when_supports_fill_d():
    # Supports of D codes (α small against N(0, 1) codes and inputs) widen W to ~1.5D, and the lasso's
    # float32 inputs get float64 systems (its ridge is 1e-6·‖e‖²). The round that widens W holds the
    # last round's cached products and its own: sized for one (N, K) float64 buffer each, they took
    # the peak to 2.84 (3.87 with W near 2D); the two together now fit one float32 buffer (the cache
    # keeps none past W ≈ √(K/2) here: 2.38).
    N, K, D = 256, 4000, 32
    g = torch.Generator().manual_seed(0)
    z, E = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    q = scq.SVQ(D, K, solver="lasso", return_weights="none")
    with torch.no_grad():
        q.codebook.copy_(E)
    peak = peak_tensor_bytes(lambda: q(z)) / (N * K * 4)
    assert q.last_info.converged and q.last_info.extra["systems"][0] == torch.float64
    # the regime: W wider than the cache keeps float64 products for at K = 4000 (m(m+1)/2 ≤ K/4: 44)
    assert q.last_info.extra["working_set"] > 44
    assert peak <= 2.6, peak


def test_the_scq_certificate_of_sparse_weights_holds_one_buffer():
    # Where a method's rounds did not measure it (CUDA's pgd, the torch path), the front door
    # certifies sparse weights on their support: g alone (1.15 buffers), where densifying them
    # held 2.06 (compiled pass) to 3.31 (torch ops).
    from scq.problems import code_scores, nearest_code
    from scq.solvers.certificate import certify_scq
    from scq.solvers.solution import to_sparse

    N, K, D = 512, 4096, 16
    g = torch.Generator().manual_seed(0)
    z, E = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    weights = to_sparse(scq.solve_scq(z, E, 0.1))
    nearest = nearest_code(code_scores(z, E), E)
    cert = []
    peak = peak_tensor_bytes(lambda: cert.append(certify_scq(weights, z, E, 0.1, None, nearest=nearest))) / (N * K * 4)
    assert float(cert[0].residual.max()) <= 1e-5
    assert peak <= 1.3, peak


@pytest.mark.parametrize("sweep,bound", [("compiled", 1.3), ("torch", 1.3), ("torch-dense", 4.3)])
def test_the_lasso_certificate_of_sparse_weights_holds_one_buffer(sweep, bound, monkeypatch):
    # The lasso's rounds never measure its certificate: the front door does, on sparse weights
    # read on their support, G alone (1.07 compiled, 1.10 as torch ops, CUDA's path); densified
    # they held 2.07 and 8.05 buffers. Dense weights through the torch sweep: 4.04 (8.05 before
    # its two scratch buffers).
    from scq.solvers.certificate import certify_lasso
    from scq.solvers.engine import fused
    from scq.solvers.solution import to_sparse

    N, K, D = 512, 4096, 16
    g = torch.Generator().manual_seed(0)
    z, E = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    w, info = scq.solve_lasso(z, E, 0.5, return_info=True)
    weights = w if sweep == "torch-dense" else to_sparse(w)
    del w
    if sweep != "compiled":
        monkeypatch.setattr(fused, "lasso_certificate", lambda *a: None)
    cert = []
    peak = peak_tensor_bytes(lambda: cert.append(certify_lasso(weights, z, E, 0.5, False, info.extra["ridge"])))
    assert float(cert[0].residual.max()) <= 1e-5
    assert peak / (N * K * 4) <= bound, peak / (N * K * 4)


@pytest.mark.parametrize("layer", ["scq", "svq-lasso"])
def test_pgds_working_memory_past_the_block_budget_is_a_block(layer, monkeypatch):
    # Issue #12: the solver's working memory O(N·m + K·D) beside the GEMM's output. Past the block
    # budget (scq/solvers/engine/blocks.py) every (n, K) pass (the nearest-code search, each round's
    # gradients and entering codes, the certificate) runs a block of rows at a time: here blocks of
    # 16 rows, 1/32 of the batch. What is left is W's arrays (N, 2m), the codes' copies and
    # gradients (K, D) and the Gram cache (capped at a block's worth): 0.13–0.29 buffers, against
    # 1.2–1.6 in one pass.
    from scq.solvers.engine import blocks

    N, K, D = 512, 4096, 8

    def peak():
        q = scq.SCQ(D, K, lam=0.1, method="pgd", return_weights="none") if layer == "scq" else \
            scq.SVQ(D, K, solver="lasso", return_weights="none")
        buffers = _peak_buffers(q, N, K, D, "data_like")
        assert q.last_info.converged
        return buffers

    whole = peak()
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 16 * K)
    split = peak()
    assert whole > 1.1 and split <= 0.35, (whole, split)


@pytest.mark.parametrize("codebook", ["data_like", "random"])
def test_pgds_blocks_share_one_fresh_buffer(codebook, monkeypatch):
    # Past the block budget (blocks of 32 rows here) the nearest-code search, the first W's
    # gradients and every round's go into one block's buffer, made once a forward (fresh pages
    # each time otherwise: see the test above); the search's own buffer made a second one before.
    # (D small, so that no codebook-sized tensor is as large as half a block.)
    from scq.solvers.engine import blocks

    N, K, D = 256, 4096, 4
    monkeypatch.setattr(blocks, "GEMM_BLOCK_ELEMENTS", 32 * K)
    module = scq.SCQ(D, K, lam=0.1, method="pgd", return_weights="none")
    step = _training_step(module, N, K, D, codebook)
    assert module.last_info.extra["rounds"] > 3
    block = 32 * K
    fresh = fresh_tensor_bytes(step, block // 2) / (block * 4)
    assert fresh <= 1.0, fresh
