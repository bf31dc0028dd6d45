"""The study (`scq bench study`): its rate accounting checked against hand computations, and its
quick mode end to end (files, columns, every contender trained; numbers are not asserted)."""

import csv
import math

import pytest
import torch

import scq
from scq.bench import rate, study


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# -- rounding weights and counting bits --------------------------------------------------------------


def test_simplex_rounding_lands_on_the_grid_and_sums_to_one():
    w = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25]])
    q = rate.round_weights(w, 2, "simplex")  # grid {0, 1/3, 2/3, 1}
    assert torch.allclose(q.sum(-1), torch.ones(3))
    # Row 0 rounds to (2/3, 1/3, 1/3, 0) (1.5 steps round to 2), then sums to 1.
    assert torch.allclose(q[0], torch.tensor([0.5, 0.25, 0.25, 0.0]))
    # Weights below half a step vanish: the row becomes one code.
    assert torch.equal(q[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # 0.25 rounds to 1/3: renormalized, still uniform.
    assert torch.allclose(q[2], torch.full((4,), 0.25))


def test_simplex_rounding_keeps_the_largest_weight_when_everything_rounds_to_zero():
    w = torch.full((1, 16), 1 / 16)  # every weight below half a step of a 2-bit grid (1/6)
    q = rate.round_weights(w, 2, "simplex")
    assert q.sum() == 1 and (q != 0).sum() == 1


def test_real_rounding_uses_symmetric_levels_and_clamps():
    w = torch.tensor([[-2.0, -0.4, 0.05, 0.6, 1.0]])
    q = rate.round_weights(w, 3, "real", scale=1.0)  # 3 levels each side: multiples of 1/3 in [-1, 1]
    assert torch.allclose(q, torch.tensor([[-1.0, -1 / 3, 0.0, 2 / 3, 1.0]]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=4, kind="soft"), "kind must be one of"),
    (dict(bits=0, kind="simplex"), "bits must be a positive int"),
    (dict(bits=4, kind="real"), "positive scale"),
    (dict(bits=4, kind="real", scale=0.0), "positive scale"),
])
def test_rounding_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rate.round_weights(torch.rand(2, 3), **kwargs)


def test_soft_bits_count_nonzero_weights():
    w = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert torch.equal(rate.soft_bits(w, 4), torch.tensor([2 * (2 + 4), 1 * (2 + 4)], dtype=torch.float64))


def test_encode_at_hard_codes_costs_log2k_per_stage_and_matches_the_forward():
    x = torch.randn(50, 8)
    vq = scq.VQ(8, 32).eval()
    zq, bits = rate.encode_at(vq, x, None)
    assert torch.allclose(zq, vq(x).quantized) and torch.all(bits == 5)
    rvq = scq.ResidualQuantizer(8, 3, 16).eval()
    zq, bits = rate.encode_at(rvq, x, None)
    assert torch.allclose(zq, rvq(x).quantized, atol=1e-6) and torch.all(bits == 12)
    assert rate.is_hard(rvq) and not rate.is_hard(scq.SCQ(8, 16))


def test_encode_at_soft_weights_unrounded_and_rounded():
    torch.manual_seed(1)
    x = torch.randn(40, 8)
    q = scq.SCQ(8, 16, lam=0.1).eval()
    out = q(x)
    zq, bits = rate.encode_at(q, x, None)
    assert torch.allclose(zq, out.quantized, atol=1e-6)
    assert torch.allclose(bits, (out.weights != 0).sum(-1).double() * (4 + 32))
    zq8, bits8 = rate.encode_at(q, x, 8)
    assert (zq8 - out.quantized).abs().max() < 0.05  # 8-bit weights: close to the exact ones
    w8 = rate.round_weights(out.weights, 8, "simplex")
    assert torch.allclose(bits8, rate.soft_bits(w8, 8))
    assert torch.allclose(zq8, q.decode(w8), atol=1e-6)


def test_encode_at_residual_is_closed_loop():
    torch.manual_seed(2)
    x = torch.randn(30, 8)
    r = scq.ResidualQuantizer(8, 2, 16, quantizer="scq", lam=0.1).eval()
    zq, _ = rate.encode_at(r, x, 2)
    first = r.layers[0]
    w1 = rate.round_weights(first(x).weights, 2, "simplex")
    q1 = first.decode(w1)
    w2 = rate.round_weights(r.layers[1](x - q1).weights, 2, "simplex")  # stage 2 sees what stage 1 sent
    assert torch.allclose(zq, q1 + r.layers[1].decode(w2), atol=1e-6)


def test_weight_scales_of_real_weights():
    torch.manual_seed(3)
    x = torch.randn(20, 8)
    svq = scq.SVQ(8, 64).eval()
    (scale,) = rate.weight_scales(svq, x)
    with torch.no_grad():
        assert scale == pytest.approx(float(svq(x).weights.abs().max()))
    assert rate.weight_scales(scq.SCQ(8, 16), x) == [None]


# -- the matched-bits comparison --------------------------------------------------------------------


def test_matched_bits_compares_with_the_best_hard_point_within_the_budget():
    pts = [dict(contender="vq-a", family="vq", weights="index", hard=True, bits=4.0, mse=0.4),
           dict(contender="vq-b", family="vq", weights="index", hard=True, bits=8.0, mse=0.1),
           dict(contender="soft", family="soft", weights="4-bit", hard=False, bits=6.0, mse=0.2),
           dict(contender="soft", family="soft", weights="float32", hard=False, bits=100.0, mse=0.01)]
    (row,) = study.matched_bits(pts)  # float32 points are not compared
    assert row["best_hard_within"] == "vq-a" and row["hard_over_soft"] == pytest.approx(2.0)
    # 0.2 lies halfway between 0.4 and 0.1 in log: the hard frontier needs 6 bits.
    assert row["hard_bits_for_same_mse"] == pytest.approx(4 + 4 * math.log(2) / math.log(4))
    assert study._bits_needed(pts[:2], 0.05) == float("inf")


def test_every_contender_name_builds_the_quantizer_it_names():
    for name in study.CONTENDERS:
        q = study.make_quantizer(name, 16)
        assert (q is None) == (name == "none")
        if q is not None:
            out = q(torch.randn(2, 3, 16))
            assert out.quantized.shape == (2, 3, 16), name
    assert isinstance(study.make_quantizer("rscq-2x64", 16), scq.ResidualQuantizer)
    assert study.family("rvqp-4x64") == "rvqp" and study.family("scq-pgd-lam0.1") == "scq-pgd"
    with pytest.raises(ValueError, match="unknown contender"):
        study.make_quantizer("pq-K64", 16)


# -- quick mode, end to end -----------------------------------------------------------------------


def test_a_study_with_workers_compiles_the_kernels_before_any_worker_starts(monkeypatch):
    # Several workers on an empty Numba cache would each compile the same kernels inside their
    # timed steps: the float32 training's variants are compiled first, before the pool exists.
    from scq import precompile

    asked = []

    class Stop(Exception):
        pass

    def compile_kernels(variants, progress=True):
        asked.append(tuple(variants))
        raise Stop

    def no_pool(*args, **kwargs):
        raise AssertionError("the pool started before the kernels were compiled")

    monkeypatch.setattr(precompile, "compile_kernels", compile_kernels)
    monkeypatch.setattr(study, "ProcessPoolExecutor", no_pool)
    with pytest.raises(Stop):
        study.run(quick=True, workers=2, progress=False)
    assert asked == [("float32", "float32-precise")]


@pytest.mark.slow
def test_study_quick_mode_writes_its_results_and_every_contender_trained(tmp_path, capsys):
    from scq.cli import main

    assert main(["bench", "study", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "does a soft quantizer beat hard VQ" in printed
    for name in ("study.csv", "study_rd.csv", "study_matched.csv", "study.md", "study_rate_distortion.png",
                 "study_heldout_curves.png", "study_forecasting.png"):
        assert (tmp_path / name).stat().st_size > 100, name
    rows = _read(tmp_path / "study.csv")
    images, forecasts = study.settings(quick=True)
    for s in images + forecasts:
        trained = {r["contender"] for r in rows if r["setting"] == s.name}
        assert trained == set(s.contenders), s.name
    for r in rows:  # every contender trained: its training loss went down
        assert float(r["train_mse_last"]) < float(r["train_mse_first"]), (r["setting"], r["contender"])
        assert float(r["test_mse"]) > 0 and float(r["step_s"]) > 0
    soft = [r for r in rows if r["task"] == "images" and r["contender"].startswith(("scq", "rscq", "svq"))]
    assert soft and all(float(r["bits_b4"]) > 0 and float(r["mse_b4"]) > 0 for r in soft)
    for col in ("psnr", "perplexity", "soft_perplexity", "usage_pct", "dead_codes", "support_size",
                "heldout_change_last_fifth", "bits", "seed", "machine", "workers"):
        assert col in rows[1], col
    assert {r["task"] for r in rows} == {"images", "forecast"}
    assert "mae_per_frame" in next(r for r in rows if r["task"] == "forecast")
    rd = _read(tmp_path / "study_rd.csv")
    assert {r["weights"] for r in rd} == {"index", "float32", "8-bit", "4-bit"}
    md = (tmp_path / "study.md").read_text()
    for heading in ("## Findings", "## Rate–distortion", "## Soft quantizers against the best hard quantizer",
                    "## Images: every contender", "## Forecasting moving digits", "Smoke run (--quick)"):
        assert heading in md, heading


def test_scale_lengthens_the_full_study_and_bad_values_are_refused(capsys):
    from scq.cli import main

    base, _ = study.settings(quick=False)
    longer, forecasts = study.settings(quick=False, scale=2.0)
    assert [s.steps for s in longer] == [2 * s.steps for s in base]
    assert forecasts[0].steps == 2 * study.settings(quick=False)[1][0].steps
    with pytest.raises(ValueError, match="scale must be positive"):
        study.settings(quick=False, scale=0)
    assert main(["bench", "study", "--scale", "0"]) == 2
    assert main(["bench", "study", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--scale must be positive" in err and "--workers must be at least 1" in err
