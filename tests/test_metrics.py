import math

import pytest
import torch

import scq


def test_indices_metrics():
    idx = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    m = scq.codebook_usage(idx, 8)
    assert m["perplexity"] == pytest.approx(4.0)
    assert m["soft_perplexity"] == pytest.approx(4.0)
    assert m["usage"] == 0.5 and m["dead_codes"] == 4
    assert m["support_size"] == 1.0 and m["normalized_perplexity"] == pytest.approx(0.5)


def test_weights_metrics():
    w = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    m = scq.codebook_usage(w, 4)
    # argmax counts: code 0 and code 2 -> perplexity 2; mean weights (.25,.25,.5,0)
    assert m["perplexity"] == pytest.approx(2.0)
    assert m["soft_perplexity"] == pytest.approx(math.exp(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))))
    assert m["support_size"] == pytest.approx(1.5)
    assert m["dead_codes"] == 2


def test_uniform_usage_has_perplexity_K():
    idx = torch.arange(16).repeat(3)
    assert scq.codebook_usage(idx, 16)["perplexity"] == pytest.approx(16.0)


def test_streaming_equals_one_shot():
    w = torch.softmax(torch.randn(100, 10) * 3, -1)
    acc = scq.CodebookUsage(10)
    for chunk in w.split(7):
        acc.update(chunk)
    streamed, one_shot = acc.compute(), scq.codebook_usage(w, 10)
    # perp_2/perp_3 standardize per batch, as the released SVQ code does: they depend on batching
    for key in ("perp_2", "perp_3"):
        streamed.pop(key), one_shot.pop(key)
    assert streamed == pytest.approx(one_shot)
    acc.reset()
    assert acc.compute()["vectors"] == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"weights must have shape \(\.\.\., 4\)"):
        scq.codebook_usage(torch.rand(3, 5), 4)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        scq.codebook_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(TypeError, match="weights_or_indices"):
        scq.codebook_usage([0, 1], 4)
    with pytest.raises(ValueError, match="codebook_size"):
        scq.CodebookUsage(0)


def test_usage_counts_weights_beyond_two_and_three_sigma_as_float64_does():
    # update() takes the batch's mean and σ from per-row sums combined in float64 and compares
    # |w − mean| with kσ (no division): the same codes counted as by the float64 z-scores.
    g = torch.Generator().manual_seed(3)
    w = torch.softmax(5 * torch.randn(300, 64, generator=g), -1) * (torch.rand(300, 64, generator=g) > 0.5)
    usage = scq.CodebookUsage(64).update(w)
    z = ((w.double() - w.double().mean()) / w.double().std()).abs()
    assert torch.equal(usage.beyond_2sigma, (z > 2).sum(0).double())
    assert torch.equal(usage.beyond_3sigma, (z > 3).sum(0).double())
    assert usage.beyond_3sigma.sum() > 0
