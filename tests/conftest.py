import sys

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


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(session, config, items):
    """Start the Triton-interpreter checks' subprocess (tests/test_fused.py) as soon as a selected
    test needs it, and run that module last, so that the subprocess's ~2 minutes of mostly
    single-threaded work overlaps the other tests instead of being waited for."""
    for item in items:
        if "interpreted" in getattr(item, "fixturenames", ()):
            if item.module.triton_launch.available():
                item.module.start_interpreted()
                mine = [getattr(i, "module", None) is item.module for i in items]
                items[:] = [i for i, m in zip(items, mine) if not m] + [i for i, m in zip(items, mine) if m]
            return


def pytest_sessionfinish(session, exitstatus):
    """Stop that subprocess where the session ended (-x, Ctrl-C) before its tests waited on it."""
    module = sys.modules.get("tests.test_fused")
    for started in getattr(module, "_STARTED", ()):
        started.stop()
