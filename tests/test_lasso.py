"""solve_lasso against cvxpy, gradients, bad input."""

import math

import pytest
import torch
from torch.autograd import gradcheck

import scq
from scq.reference import reference_lasso
from tests.helpers import assert_close, lasso_kkt_violation, problem


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("alpha", [0.01, 0.3, 3.0])
def test_pgd_matches_cvxpy(alpha, nonneg):
    z, E = problem(N=6, K=30, D=6, seed=11)
    w = scq.solve_lasso(z, E, alpha, nonneg=nonneg)
    assert_close(w, reference_lasso(z, E, alpha, nonneg), atol=1e-6)
    if nonneg:
        assert (w >= 0).all()


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("alpha", [0.01, 0.3, 3.0])
def test_pgd_without_a_ridge_matches_the_certified_reference_tightly(alpha, nonneg):
    # The default ridge (1e-10·max‖e‖² in float64) moves the answer by ~1e-9 here, which the
    # test above allows for; without it pgd solves the reference's problem: 3e-12 to 7e-11 apart.
    z, E = problem(N=6, K=30, D=6, seed=11)
    w, info = scq.solve_lasso(z, E, alpha, nonneg=nonneg, ridge=0.0, return_info=True)
    assert info.converged
    assert_close(w, reference_lasso(z, E, alpha, nonneg), atol=1e-9)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("alpha", [0.05, 0.5])
def test_the_lasso_reference_meets_its_kkt_conditions_to_rounding(alpha, nonneg):
    # The yardstick of the lasso tests: Clarabel's answers, polished on their support and signs
    # and kept where the KKT conditions certify them (judged here by an independent dense check).
    z, E = problem(N=6, K=40, D=8, seed=31)
    ref = reference_lasso(z, E, alpha, nonneg)
    assert lasso_kkt_violation(ref, z, E, alpha, nonneg) < 1e-12
    assert (ref != 0).sum(-1).min() > 0  # not the trivial answer: a support to read off


@pytest.mark.parametrize("seed", [2, 26, 35])
def test_the_lasso_reference_certifies_where_collinear_codes_make_the_answer_non_unique(seed):
    # Codes ±2v, ±4v/3, … on one line: the cone solver split a weight between e and −e, so that the
    # support read off its answer held dependent codes and the solve on it failed (the reference
    # flagged 14 of 200 such draws). Their minimum-norm solution is one of the optimal answers.
    import warnings

    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, 4, dtype=torch.float64, generator=g)
    E = torch.cat([torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None] * v,
                   torch.randn(3, 4, dtype=torch.float64, generator=g)])
    z = torch.randn(6, 4, dtype=torch.float64, generator=g)
    s = max(float(E.norm(dim=-1).max()), float(z.norm(dim=-1).max()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a flagged answer fails the test
        ref = reference_lasso(z / s, E / s, 0.3)
    assert lasso_kkt_violation(ref, z / s, E / s, 0.3, nonneg=False) < 1e-12


def test_an_inaccurate_cone_answer_is_finished_on_its_support_or_flagged():
    # An elastic net written as a lasso (design [E, √ρ I]): Clarabel stopped at
    # "optimal_inaccurate" on one row, with weights of 7e-5 and 9e-7 beside a support of four
    # codes of 0.2–0.5, which no threshold relative to the largest weight separates; the reference
    # returned that answer, with only cvxpy's warning. Its j largest weights are now tried too.
    import warnings

    import numpy as np

    from scq import reference

    z, E = problem(N=8, K=24, D=5, seed=11)
    design = torch.cat([E, 0.5 ** 0.5 * torch.eye(24, dtype=torch.float64)], 1)
    z_aug = torch.cat([z, torch.zeros(8, 24, dtype=torch.float64)], 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = reference_lasso(z_aug, design, 0.3, nonneg=True)
    assert not [w for w in caught if "inaccurate" in str(w.message) or "certificate" in str(w.message)]
    assert lasso_kkt_violation(ref, z_aug, design, 0.3, nonneg=True) < 1e-12

    # A loose answer (the exact one, a little off, with crumbs off the support) is finished exactly;
    # one that no support guess certifies is returned as it came, and flagged.
    Dn, zn, exact = design.numpy(), z_aug[1].numpy(), ref[1].numpy()
    rng = np.random.default_rng(0)
    loose = np.where(exact > 0, exact + 1e-6 * rng.standard_normal(24), 1e-6 * rng.random(24))
    assert np.abs(reference._polish_lasso(loose, zn, Dn, 0.3, True) - exact).max() < 1e-12
    wrong = np.abs(rng.standard_normal(24))
    with pytest.warns(RuntimeWarning, match="failed its KKT certificate"):
        kept = reference._polish_lasso(wrong, zn, Dn, 0.3, True)
    assert np.array_equal(kept, wrong)


@pytest.mark.parametrize("nonneg", [False, True])
def test_large_alpha_gives_zero(nonneg):
    z, E = problem(N=5, K=20, D=4, seed=12)
    alpha = 1.01 * float((z @ E.T).abs().max())  # above max |e_kᵀz|: w = 0 is optimal
    w, info = scq.solve_lasso(z, E, alpha, nonneg=nonneg, return_info=True)
    assert torch.equal(w, torch.zeros_like(w)) and info.converged
    assert_close(reference_lasso(z, E, alpha, nonneg), w, atol=1e-7)


@pytest.mark.parametrize("nonneg", [False, True])
def test_exact_method_matches_cvxpy(nonneg):
    z, E = problem(N=4, K=12, D=4, seed=13)
    assert_close(scq.solve_lasso(z, E, 0.5, nonneg=nonneg, method="exact"), reference_lasso(z, E, 0.5, nonneg), atol=1e-6)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_gradcheck(alpha, nonneg, codebook_gram):
    z, E = problem(N=3, K=10, D=4, seed=14)
    args = (z.clone().requires_grad_(), E.clone().requires_grad_())
    assert gradcheck(lambda a, b: scq.solve_lasso(a, b, alpha, nonneg=nonneg), args)


def test_gradients_match_exact_method():
    z, E = problem(N=4, K=12, D=4, seed=15)
    grads = []
    for method in ("pgd", "exact"):
        zz, EE = z.clone().requires_grad_(), E.clone().requires_grad_()
        w = scq.solve_lasso(zz, EE, 0.5, method=method)
        g = torch.linspace(-1, 1, w.numel(), dtype=w.dtype).reshape(w.shape)
        grads.append(torch.autograd.grad((w * g).sum(), (zz, EE)))
    for a, b in zip(*grads):
        assert (a - b).abs().max() / b.abs().max() < 1e-5


def test_shapes_float32_and_empty():
    z, E = problem(N=6, K=50, D=5, seed=16, dtype=torch.float32)
    w = scq.solve_lasso(z.reshape(2, 3, 5), E, 0.5)
    assert w.shape == (2, 3, 50) and w.dtype == torch.float32
    assert scq.solve_lasso(z[:0], E, 0.5).shape == (0, 50)


def test_bad_inputs():
    z, E = problem(N=3, K=8, D=4)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        scq.solve_lasso(z, E, -0.1)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        scq.solve_lasso(z, E, 0.0)
    with pytest.raises(ValueError, match="z has last dimension 3"):
        scq.solve_lasso(z[:, :3], E, 0.1)
    bad = z.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="z contains NaN"):
        scq.solve_lasso(bad, E, 0.1)
    with pytest.raises(ValueError, match="unknown method 'ista'"):
        scq.solve_lasso(z, E, 0.1, method="ista")
    with pytest.raises(TypeError, match=r"solve_lasso\(method='pgd'\) got unknown options \['lam'\]"):
        scq.solve_lasso(z, E, 0.1, lam=1.0)


def test_entering_codes_per_round_double_up_to_half_of_d_where_supports_fill_d():
    from scq.solvers.engine.working_set import make_options, more_per_round

    opts = make_options(torch.float32, None, 30, 100, 16, 8, True, 10)
    lasso = lambda n, K, D, widest=0: more_per_round(n, K, D, opts, False, widest)
    assert [lasso(n, 10000, 64) for n in (8, 16, 32, 33)] == [16, 32, 33, 33]
    assert lasso(8, 10000, 2) == 8  # never below add_per_round
    assert lasso(8, 12, 64) == 12  # nor above K
    # The bound is the lasso's supports' (≤ D): past D + 1 (a ridge allows it), and for SCQ, whose
    # ridge lets a support hold up to K codes, the doubling goes on up to K.
    assert [lasso(n, 10000, 64, widest=66) for n in (8, 64, 5000, 6000)] == [16, 128, 10000, 10000]
    assert lasso(32, 10000, 64, widest=65) == 33
    assert [more_per_round(n, 10000, 64, opts, True) for n in (8, 64, 6000)] == [16, 128, 10000]


@pytest.mark.parametrize("path", ["torch", "per-row-products", "codebook-gram", "codebook-gram-batch-loop"])
def test_elastic_net_supports_past_d_plus_one_take_few_rounds(path, monkeypatch):
    # With a ridge the lasso's supports are not bounded by D: two codes, 150 copies each, share
    # every vector's weight over all 300. Past D + 1 codes the entries per round double on
    # (working_set.more_per_round); with the bound of D/2 + 1 (8 a round) 15 rounds ended at 120.
    from scq.solvers.engine import fused
    from scq.solvers.engine import working_set as ws

    monkeypatch.setattr(fused, "ENABLED", path != "torch")
    monkeypatch.setattr(ws, "uses_codebook_gram", lambda N, K: path.startswith("codebook-gram"))
    monkeypatch.setattr(ws, "ROW_BY_ROW", path != "codebook-gram-batch-loop")
    g = torch.Generator().manual_seed(31)
    E = torch.randn(2, 2, dtype=torch.float64, generator=g).repeat(150, 1)
    z = torch.randn(6, 2, dtype=torch.float64, generator=g)
    alpha, rho = 0.01, 0.01
    w, info = scq.solve_lasso(z, E, alpha, ridge=rho, max_rounds=15, return_info=True)
    assert info.converged and info.extra["rounds"] <= 12
    assert int(info.extra["support_size"].min()) > 3
    # Dense optimality of ½‖z − Eᵀw‖² + α‖w‖₁ + ½ρ‖w‖²: g = E(Eᵀw − z) + ρw is −α·sign(w) on the
    # support and within [−α, α] off it.
    grad = (w @ E - z) @ E.T + rho * w
    on = w != 0
    assert (grad + alpha * torch.sign(w))[on].abs().max() < 1e-10
    assert float(((grad.abs() - alpha) * ~on).clamp_min(0).max()) < 1e-10


def test_supports_of_d_codes_keep_the_working_set_near_2d():
    # α small against unit-scale codes and inputs: every support fills D, and codes keep entering
    # round after round. Doubling the codes examined per round without bound widened W to 76
    # slots here, 6.0 (N, K) buffers at the peak (and W to 1203 at D = 64, K = 10000, whose Gram
    # cache then asked for 41 GB at N = 4096); up to D + 1 a round, W stayed near 2D: 33 slots,
    # 2.95 buffers (2.44 with the cache's products packed); up to D/2 + 1, near 1.5D.
    from tests.helpers import peak_tensor_bytes

    N, K, D = 64, 4000, 16
    g = torch.Generator().manual_seed(0)
    z, E = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    out = {}
    peak = peak_tensor_bytes(lambda: out.update(zip(("w", "info"), scq.solve_lasso(z, E, 0.1, return_info=True))))
    info = out["info"]
    assert info.converged and info.residual <= 1e-5
    assert info.extra["support_size"].float().mean() > D - 1  # the regime: supports of D
    assert info.extra["working_set"] <= 1.5 * D + 4, info.extra["working_set"]  # 25 (33 up to D + 1)
    assert peak <= 2.8 * N * K * 4, peak / (N * K * 4)


def test_supports_of_d_codes_converge_within_the_default_rounds():
    # Supports that fill D codes out of K need rounds that grow with D: more than SCQ's default of
    # 30 here (the lasso's is 100).
    N, K, D = 32, 4000, 32
    g = torch.Generator().manual_seed(0)
    z, E = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    _, info = scq.solve_lasso(z, E, 0.003, return_info=True)
    assert info.converged and info.residual <= 1e-5
    assert info.extra["rounds"] > 30, info.extra["rounds"]
    assert info.extra["support_size"].float().mean() > D - 1


def test_never_forms_a_KxK_matrix_at_K_10000():
    # O(N·K + K·D) memory: a K×K float32 matrix would be 400 MB; the solve runs on 16 vectors.
    z, E = problem(N=16, K=10000, D=16, seed=17, dtype=torch.float32)
    w, info = scq.solve_lasso(z, E, 20.0, return_info=True)
    assert info.converged and w.shape == (16, 10000)
