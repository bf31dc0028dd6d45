import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def cuda_devices():
    """``["cuda"]``, skipped cleanly (with a reason) on machines without a GPU."""
    return [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.fixture(params=["codebook-gram", "per-row-products"])
def codebook_gram(request, monkeypatch):
    """Runs a test on both ways the CPU's compiled rounds get the codes' products: from the
    codebook's Gram matrix EEᵀ (what they use where K ≤ N, or K ≤ 4N and K ≤ 1024) and computed per
    row with the round's GEMM (elsewhere), whatever the test's N and K."""
    from scq.solvers.engine import working_set

    use = request.param == "codebook-gram"
    monkeypatch.setattr(working_set, "uses_codebook_gram", lambda N, K: use)
    return use
