"""Every answer is certified or flagged: adversarial inputs for every method of both problems.

The rule under test (docs/math.md §7): when ``info.converged`` is True the answer is within the
certified ``info.error_bound`` (SCQ: ‖p − p*‖; lasso: ``quantized_error_bound`` on ‖z_q − z_q*‖) of
an independent reference; when it is False, a method that claims exactness warns, and
``strict=True`` raises. Never a silent wrong answer, never a silent NaN.

References are computed on the unit-scaled equivalent problem (z/s, E/s, λ/s² — or α/s² for the
lasso — has the same solution), so the yardstick does not suffer the scale it is measuring. An
interior-point reference is not exact either (at λ = 1e-6 its answers are ~5e-4 off, with a
higher objective than pgd's), so distances are judged against the sum of both answers'
certified bounds: ‖p − ref‖ ≤ ‖p − p*‖ + ‖ref − p*‖.
"""

from __future__ import annotations

import warnings
import zlib

import pytest
import torch

import scq
from scq.reference import reference_lasso, reference_scq
from scq.solvers.certificate import certify_lasso, certify_scq
from tests.helpers import problem

# Allowance on top of a certified bound for the comparison's own float64 arithmetic: the bounds
# cover the compute dtype's rounding themselves (docs/math.md §7), float32's too.
FLOOR = {torch.float64: 1e-9, torch.float32: 1e-9}


def _case(name):
    """(z, E, λ) of a named adversarial case, float64."""
    # (crc32, not hash(): Python salts str hashes per process, so each run drew other data)
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) % 1000)
    randn = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)
    if name.startswith("scale"):
        s = float(name.split("=")[1])
        z, E = problem(N=6, K=12, D=4, seed=3)
        return z * s, E * s, 0.3 * s * s
    if name.startswith("fixed-lam-scale"):
        s = float(name.split("=")[1])
        z, E = problem(N=6, K=12, D=4, seed=4)
        return z * s, E * s, 0.5
    if name == "far-outside-hull":
        E = randn(10, 6)
        return 100 * randn(4, 6), E, 0.5
    if name == "inputs-on-codes":
        E = randn(12, 4)
        return E[[0, 5, 11]].clone(), E, 0.1
    if name == "duplicate-codes":
        E = randn(8, 3)
        return randn(6, 3), torch.cat([E, E[:4]]), 0.05
    if name == "collinear-codes":
        v = randn(1, 4)
        E = torch.cat([torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None] * v, randn(3, 4)])
        return randn(6, 4), E, 0.05
    if name == "K>>D":
        return randn(8, 2), randn(256, 2), 0.01
    if name == "D=1":
        return randn(8, 1), randn(9, 1), 0.1
    if name == "ties":
        E = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
        return torch.tensor([[0.0, 0.0], [0.5, 0.5], [0.0, 3.0]], dtype=torch.float64), E, 0.2
    if name == "tiny-lam":
        return randn(16, 2), randn(64, 2), 1e-6
    raise KeyError(name)


SCQ_CASES = ["scale=1e-4", "scale=1e4", "fixed-lam-scale=1e-4", "fixed-lam-scale=1e3", "far-outside-hull",
             "inputs-on-codes", "duplicate-codes", "collinear-codes", "K>>D", "D=1", "ties", "tiny-lam"]


def _unit_reference(z, E, lam):
    """The reference and its own certified error bound per vector."""
    s = max(float(E.norm(dim=-1).max()), float(z.norm(dim=-1).max()))
    ref = reference_scq(z / s, E / s, lam / s**2)
    return ref, certify_scq(ref, z, E, lam, None).error_bound


def _check_certified_or_flagged(solve, method_is_exact, error_of, bound_of, floor):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer, info = solve(strict=False)
    flagged = [w for w in caught if issubclass(w.category, RuntimeWarning) and "did not reach tol" in str(w.message)]
    assert torch.isfinite(answer).all(), "a NaN or Inf answer"
    if info.converged:
        assert info.residual <= info.tol and not flagged
        err = error_of(answer)
        assert err <= bound_of(info) + floor, f"certified but off: error {err:.3e} > bound {bound_of(info):.3e}"
    else:
        assert info.residual > info.tol or info.residual != info.residual
        if method_is_exact:
            assert flagged, "uncertified answer without a warning"
        with pytest.raises(RuntimeError, match="did not reach tol"):
            solve(strict=True)
    return info


@pytest.mark.parametrize("case", SCQ_CASES)
@pytest.mark.parametrize("method,dtype", [("pgd", torch.float64), ("pgd", torch.float32),
                                          ("relaxed", torch.float64), ("relaxed", torch.float32)])
def test_scq_answers_are_certified_or_flagged(case, method, dtype):
    z, E, lam = _case(case)
    ref, ref_bound = _unit_reference(z, E, lam)
    zc, Ec = z.to(dtype), E.to(dtype)
    info = _check_certified_or_flagged(
        lambda strict: scq.solve_scq(zc, Ec, lam, method=method, return_info=True, strict=strict),
        method_is_exact=(method == "pgd"),
        error_of=lambda p: float(((p.double() - ref).norm(dim=-1) - ref_bound).max()),
        bound_of=lambda info: info.error_bound,
        floor=FLOOR[dtype],
    )
    if method == "pgd" and dtype == torch.float64:
        assert info.converged, f"pgd float64 should solve {case}: residual {info.residual:.2e}"


@pytest.mark.parametrize("case", ["scale=1e-4", "scale=1e4", "far-outside-hull", "duplicate-codes", "D=1", "ties"])
def test_exact_answers_are_certified_or_flagged(case):
    z, E, lam = _case(case)
    ref, ref_bound = _unit_reference(z, E, lam)
    info = _check_certified_or_flagged(
        lambda strict: scq.solve_scq(z, E, lam, method="exact", return_info=True, strict=strict),
        method_is_exact=True,
        error_of=lambda p: float(((p - ref).norm(dim=-1) - ref_bound).max()),
        bound_of=lambda info: info.error_bound,
        floor=1e-7,
    )
    # Rescaling before the cone solve: far from the hull used to come back wrong and "converged".
    assert info.converged, f"exact should solve {case} after rescaling: residual {info.residual:.2e}"


LASSO_CASES = ["scale=1e-4", "scale=1e3", "K>>D", "D=1", "duplicate-codes", "collinear-codes", "inputs-on-codes"]


@pytest.mark.parametrize("case", LASSO_CASES)
@pytest.mark.parametrize("method,options", [("pgd", {}), ("pgd", {"ridge": 0.0}), ("exact", {})])
def test_lasso_answers_are_certified_or_flagged(case, method, options):
    z, E, _ = _case(case)
    s = max(float(E.norm(dim=-1).max()), float(z.norm(dim=-1).max()))
    alpha = 0.3 * s * s
    if method == "exact" and case in ("K>>D",):
        pytest.skip("256 cone programs: covered by the pgd rows")
    ref = reference_lasso(z / s, E / s, 0.3)
    ref_zq = ref @ (E / s) * s  # z_q* is unique even where w* is not
    ref_bound = certify_lasso(ref * 1.0, z / s, E / s, 0.3, False).quantized_error_bound
    info = _check_certified_or_flagged(
        lambda strict: scq.solve_lasso(z, E, alpha, method=method, return_info=True, strict=strict, **options),
        method_is_exact=True,
        error_of=lambda w: float(((w @ E - ref_zq).norm(dim=-1) / s - ref_bound).max()),
        bound_of=lambda info: info.quantized_error_bound / s,
        floor=1e-6,
    )
    if method == "pgd":
        assert info.converged, f"lasso pgd should solve {case}: residual {info.residual:.2e}"


def test_certificate_is_zero_at_the_solution_and_bounds_hold_off_it():
    z, E = problem(N=10, K=20, D=4, seed=5)
    ref = reference_scq(z, E, 0.1)
    at = certify_scq(ref, z, E, 0.1, None)
    assert float(at.residual.max()) < 1e-10 and float(at.error_bound.max()) < 1e-6
    gen = torch.Generator().manual_seed(6)
    for mix in (1e-4, 1e-2, 0.5):
        other = torch.softmax(torch.randn(10, 20, dtype=torch.float64, generator=gen), -1)
        p = (1 - mix) * ref + mix * other  # feasible, not optimal
        cert = certify_scq(p, z, E, 0.1, None)
        err = (p - ref).norm(dim=-1)
        assert (cert.residual > 1e-8).all()
        assert (err <= cert.error_bound * (1 + 1e-9)).all()
        zq_err = ((p - ref) @ E).norm(dim=-1)
        assert (zq_err <= cert.quantized_error_bound * (1 + 1e-9)).all()


@pytest.mark.parametrize("path", ["torch", "compiled", "sparse"])
def test_bounds_hold_for_weights_off_the_simplex(path, monkeypatch):
    # A p with 1ᵀp = c ≠ 1 (an engine that drops a tiny weight without renormalizing, a cone
    # solver's rounding) is optimal on the face 1ᵀx = c, not on the simplex: the bounds add the
    # distance between the two faces' optima (≤ |1 − c|·√(s/λ), docs/math.md §7). Left out, p
    # shrunk by 1e-3 where λ dominates got a bound ~900× too small.
    from scq.solvers.engine import fused
    from scq.solvers.solution import to_sparse

    monkeypatch.setattr(fused, "ENABLED", path == "compiled")
    g = torch.Generator().manual_seed(7)
    E = 0.01 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    z = E[torch.randint(0, 40, (30,), generator=g)] + 1e-4 * torch.randn(30, 2, generator=g, dtype=torch.float64)
    for lam in (0.01, 1.0):
        ref = scq.solve_scq(z, E, lam, tol=1e-13)
        dropped = ref.clone()
        dropped[torch.arange(30), torch.where(ref > 0, ref, torch.inf).argmin(-1)] = 0
        for p in (dropped, ref * (1 - 1e-3), ref * (1 + 1e-3)):
            cert = certify_scq(to_sparse(p) if path == "sparse" else p, z, E, lam, None)
            err, zq_err = (p - ref).norm(dim=-1), ((p - ref) @ E).norm(dim=-1)
            assert (err <= cert.error_bound).all(), float((err / cert.error_bound).max())
            assert (zq_err <= cert.quantized_error_bound).all(), float((zq_err / cert.quantized_error_bound).max())
            assert float((err / cert.error_bound).max()) > 0.05  # and not vacuous


@pytest.mark.parametrize("seed,D,K,lam,scale,kind", [
    (41, 4, 256, 0.1, 10.0, "near_codes"),  # the compiled rounds' bound was 1.8× too small here
    (50, 2, 256, 1e-3, 1.0, "outside"),
    (25, 2, 64, 0.1, 0.01, "near_codes"),  # λ dominates; a tiny weight dropped: 1ᵀp = 1 − 1.6e-6
    (3, 16, 64, 1e-3, 1.0, "random"),
])
def test_float32_bounds_cover_the_distance_to_the_float64_solution(seed, D, K, lam, scale, kind):
    # Rounding counts (docs/math.md §7): in float32 a bound measured as ~0 is only as good as the
    # measurement; every row's reported bound, from the solve (pgd's compiled rounds measure it) and
    # from certify_scq, covers its distance from the float64 solution of the same problem (same p̃).
    g = torch.Generator().manual_seed(seed)
    E = scale * torch.randn(K, D, generator=g, dtype=torch.float64)
    if kind == "near_codes":
        z = E[torch.randint(0, K, (128,), generator=g)] + 0.01 * scale * torch.randn(128, D, generator=g, dtype=torch.float64)
    else:
        z = (3.0 if kind == "outside" else 1.0) * scale * torch.randn(128, D, generator=g, dtype=torch.float64)
    target = torch.nn.functional.one_hot(scq.problems.nearest_codes(z.float(), E.float()), K).double()
    ref = scq.solve_scq(z, E, lam, target=target, tol=1e-13, max_rounds=200)
    ref_bound = certify_scq(ref, z, E, lam, target)
    p, info = scq.solve_scq(z.float(), E.float(), lam, return_info=True)
    assert info.converged
    err = (p.double() - ref).norm(dim=-1) - ref_bound.error_bound
    zq_err = ((p.double() - ref) @ E).norm(dim=-1) - ref_bound.quantized_error_bound
    cert = certify_scq(p, z.float(), E.float(), lam, None)
    assert (err <= info.extra["error_bounds"].double()).all()
    assert (err <= cert.error_bound.double()).all() and (zq_err <= cert.quantized_error_bound.double()).all()


def test_lasso_certificate_bounds_hold_off_the_solution():
    z, E = problem(N=8, K=24, D=5, seed=7)
    ref = reference_lasso(z, E, 0.5)
    assert float(certify_lasso(ref, z, E, 0.5, False).residual.max()) < 1e-7
    w = ref + 0.05 * torch.randn(8, 24, dtype=torch.float64)
    cert = certify_lasso(w, z, E, 0.5, False)
    assert (cert.residual > 1e-6).all()
    assert (((w - ref) @ E).norm(dim=-1) <= cert.quantized_error_bound * (1 + 1e-9)).all()


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("path", ["torch", "compiled", "sparse"])
def test_elastic_net_gap_closes_at_its_solution_and_bounds_hold_off_it(nonneg, path, monkeypatch):
    # With a ridge ρ the gap used to be taken to the plain lasso's dual point: at least ½ρ‖w‖² even
    # at the optimum (bounds of ~15% of ‖z‖ at ρ = 0.1·scale²). The elastic net's own dual point
    # (the lasso's on the design [E, √ρ I]) closes it; the reference solves that augmented lasso.
    from scq.solvers.engine import fused
    from scq.solvers.solution import to_sparse

    monkeypatch.setattr(fused, "ENABLED", path == "compiled")
    z, E = problem(N=8, K=24, D=5, seed=11)
    ridge, alpha = 0.5, 0.3
    design = torch.cat([E, ridge ** 0.5 * torch.eye(24, dtype=torch.float64)], 1)
    ref = reference_lasso(torch.cat([z, torch.zeros(8, 24, dtype=torch.float64)], 1), design, alpha, nonneg)
    form = (lambda w: to_sparse(w)) if path == "sparse" else (lambda w: w)
    at = certify_lasso(form(ref), z, E, alpha, nonneg, ridge)
    assert float(at.objective_gap.max()) < 1e-5 and float(at.quantized_error_bound.max()) < 1e-2  # was 0.4
    gen = torch.Generator().manual_seed(12)
    w = ref + 0.05 * torch.randn(8, 24, dtype=torch.float64, generator=gen)
    w = w.clamp_min(0) if nonneg else w
    cert = certify_lasso(form(w), z, E, alpha, nonneg, ridge)
    assert (((w - ref) @ E).norm(dim=-1) <= cert.quantized_error_bound + at.quantized_error_bound).all()
    assert ((w - ref).norm(dim=-1) <= cert.error_bound + at.error_bound).all()
    assert float(cert.objective_gap.min()) > 1e-4  # off the optimum, and measured so


@pytest.mark.parametrize("ridge,nonneg", [(0.0, False), (0.1, False), (0.1, True)])
def test_float32_lasso_bounds_cover_the_distance_to_the_float64_solution(ridge, nonneg):
    # Scale 10, as the elastic-net bounds were loosest there (~15% of ‖z‖ before the elastic net's
    # own dual point).
    g = torch.Generator().manual_seed(21)
    E, z = 10 * torch.randn(64, 8, generator=g, dtype=torch.float64), 10 * torch.randn(64, 8, generator=g, dtype=torch.float64)
    alpha, ridge = 10.0, 100 * ridge
    ref = scq.solve_lasso(z, E, alpha, nonneg=nonneg, ridge=ridge, tol=1e-12)
    ref_bound = certify_lasso(ref, z, E, alpha, nonneg, ridge)
    w, info = scq.solve_lasso(z.float(), E.float(), alpha, nonneg=nonneg, ridge=ridge, return_info=True)
    assert info.converged
    cert = certify_lasso(w, z.float(), E.float(), alpha, nonneg, ridge)
    zq_err = ((w.double() - ref) @ E).norm(dim=-1) - ref_bound.quantized_error_bound
    assert (zq_err <= cert.quantized_error_bound.double()).all()
    if ridge:
        assert ((w.double() - ref).norm(dim=-1) - ref_bound.error_bound <= cert.error_bound.double()).all()
    assert float((cert.quantized_error_bound.double() / z.norm(dim=-1)).median()) < 1e-3  # informative


def test_negative_weights_and_off_simplex_sums_are_caught():
    z, E = problem(N=4, K=6, D=3, seed=8)
    ref = reference_scq(z, E, 0.5)
    assert (certify_scq(ref * 1.001, z, E, 0.5, None).residual >= 1e-3 - 1e-12).all()
    bad = ref.clone()
    bad[:, 0] -= 1e-3
    bad[:, 1] += 1e-3
    assert (certify_scq(bad, z, E, 0.5, None).residual > 1e-5).any()


@pytest.mark.parametrize("method", ["pgd", "relaxed"])
def test_nan_codebook_in_a_module_gets_a_clear_error(method):
    q = scq.SCQ(3, 8, method=method)
    with torch.no_grad():
        q.codebook[0, 0] = float("nan")
    with pytest.raises(ValueError, match="codebook contains NaN"):
        q(torch.randn(4, 3))
    with pytest.raises(ValueError, match="codebook contains NaN"):
        q.load_state_dict(q.state_dict())
    with pytest.raises(ValueError, match="codebook contains NaN"):
        q.check_codebook()


def test_a_nan_answer_is_never_certified():
    from scq.solvers.registry import SCQ_METHODS

    @scq.register_method("_nan_for_test")
    def nan_method(z, codebook, lam, target):
        return torch.full((z.shape[0], codebook.shape[0]), float("nan"), dtype=z.dtype)

    try:
        z, E = problem(N=3, K=4, D=2)
        with pytest.warns(RuntimeWarning, match="did not reach tol"):
            _, info = scq.solve_scq(z, E, 1.0, method="_nan_for_test", return_info=True)
        assert not info.converged
    finally:
        SCQ_METHODS.unregister("_nan_for_test")


def test_float32_tiny_lambda_is_solved(codebook_gram):
    # Used to raise "singular Gram matrix" (32 of ~90 audit runs).
    torch.manual_seed(0)
    E, z = torch.randn(256, 2), torch.randn(64, 2)
    p, info = scq.solve_scq(z, E, 1e-6, return_info=True)
    assert info.converged
    ref, ref_bound = _unit_reference(z.double(), E.double(), 1e-6)
    assert float(((p.double() - ref).norm(dim=-1) - ref_bound).max()) <= info.error_bound + 1e-4


def test_plain_lasso_without_ridge_is_solved():
    # Used to raise in 163 of 563 audit runs; float32, unique solutions with support < D.
    fails = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        E, z = torch.randn(32, 8, generator=g), torch.randn(16, 8, generator=g)
        _, info = scq.solve_lasso(z, E, 0.3, ridge=0.0, return_info=True)
        fails += not info.converged
    assert fails == 0


def test_relaxed_float32_matches_its_own_formula():
    # The textbook Woodbury form left 1.0 (λ = 1e-6) to 2e-4 (λ = 0.1) in float32.
    from tests.helpers import numpy_relaxed

    z, E = problem(N=16, K=64, D=8, seed=9)
    target = torch.nn.functional.one_hot(scq.problems.nearest_codes(z, E), 64).double()
    for lam in (1e-6, 1e-3, 0.1):
        expected = torch.from_numpy(numpy_relaxed(z.numpy(), E.numpy(), lam, target.numpy()))
        got = scq.solve_scq(z.float(), E.float(), lam, method="relaxed")
        assert float((got.double() - expected).abs().max()) < 1e-3, lam


def test_relaxed_reports_its_distance_from_exact():
    z, E = problem(N=10, K=30, D=5, seed=10)
    p, info = scq.solve_scq(z, E, 0.1, method="relaxed", return_info=True)
    ref = reference_scq(z, E, 0.1)
    err = float((p - ref).norm(dim=-1).max())
    assert err > 1e-2 and not info.converged and info.residual > 1e-3  # approximate, and says so
    assert err <= info.error_bound * (1 + 1e-9)


def test_autocast_bfloat16_solves_in_float32():
    x = torch.randn(32, 8)
    q = scq.SCQ(8, 32)
    ref = q(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(x)  # used to raise: scatter() dtype mismatch
    assert torch.isfinite(out.quantized).all() and q.last_info.converged
    assert float((out.weights.detach().float() - ref.weights.detach()).abs().max()) < 1e-4


def test_float16_module_inputs():
    x = torch.randn(32, 8).half()
    q = scq.SCQ(8, 32, lam=1e-6)
    out = q(x)
    assert out.quantized.dtype == torch.float16 and q.last_info.converged


def test_pgd_hands_its_nearest_codes_to_the_certificate(monkeypatch):
    # The engine's start is p̃'s code (problems.nearest_code): where the certificate is measured
    # apart from the rounds (the torch path: CUDA, or the CPU without its kernels) it takes these
    # codes instead of a GEMM of its own, and measures the same.
    from scq.solvers.engine import fused
    monkeypatch.setattr(fused, "ENABLED", False)
    z, E = problem(N=30, K=40, D=5, seed=12)
    p, info = scq.solve_scq(z, E, 0.2, method="pgd", return_info=True)
    assert torch.equal(info.extra["nearest"], scq.problems.nearest_codes(z, E))
    own = certify_scq(p, z, E, 0.2, None)
    handed = certify_scq(p, z, E, 0.2, None, nearest=info.extra["nearest"])
    for a, b in zip(own, handed):
        assert torch.equal(a, b)
    assert float(own.residual.max()) == info.residual
    wrong = certify_scq(p, z, E, 0.2, None, nearest=(info.extra["nearest"] + 1) % 40)
    assert float(wrong.residual.max()) > 1e-3  # the codes handed on are the ones measured against


def _agrees(measured, reference, z, E, lam):
    """Two measurements of one certificate agree up to the rounding of their own sums: the residual
    within 50 eps, the gap within 100 eps of the problem's scale (‖z‖² + max‖e‖²), and the bounds
    through their gap (|√a − √b| ≤ √|a − b|), each beside a relative 1e-3."""
    eps = torch.finfo(z.dtype).eps
    gap_tol = 100 * eps * float(z.nan_to_num().pow(2).sum(-1).max() + E.pow(2).sum(-1).max())
    tolerances = (50 * eps, gap_tol, (2 * gap_tol / lam) ** 0.5, (2 * gap_tol) ** 0.5)
    for name, a, b, atol in zip(measured._fields, measured, reference, tolerances):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a.isnan(), b.isnan()), name
        ok = ((a - b).abs() <= 1e-3 * b.abs() + atol) | b.isnan()
        assert bool(ok.all()), (name, float((a - b).abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("max_rounds", [1, 2, 30])
def test_pgd_measures_the_certificate_of_its_last_round(dtype, with_target, max_rounds, codebook_gram):
    # pgd's compiled rounds measure the certificate on their own last G = E(z_q − z) (no GEMM of
    # its own): it must be the one certify_scq measures on the returned weights, for rows that
    # finished (max_rounds=30) and rows the round limit cut off (1, 2: far from optimal).
    from scq.solvers.pgd import solve_pgd
    from scq.solvers.engine import fused
    if not fused.cpu_available():
        pytest.skip("the compiled rounds need numba")
    gen = torch.Generator().manual_seed(max_rounds + 7 * with_target)
    z = torch.randn(120, 8, generator=gen, dtype=torch.float64).to(dtype)
    E = torch.randn(96, 8, generator=gen, dtype=torch.float64).to(dtype)
    z[5, 1] = float("nan")  # a nan row is measured nan by both, the others are unaffected
    target = torch.softmax(torch.randn(120, 96, generator=gen, dtype=torch.float64), -1).to(dtype) if with_target else None
    weights, info = solve_pgd(z, E, 0.1, target, max_rounds=max_rounds)
    measured = info.extra["certificate"]
    reference = certify_scq(weights, z, E, 0.1, target)
    _agrees(measured, reference, z, E, 0.1)
    assert measured.residual[5].isnan() and not measured.residual[6:].isnan().any()
    if max_rounds == 1:  # cut off: the measurement says so (far above the 1e-5 tolerance of float32)
        assert not info.converged and float(reference.residual.nan_to_num().max()) > 1e-4


def test_the_front_door_takes_pgds_own_certificate(monkeypatch):
    # With the compiled rounds, solve_scq(method="pgd") reports the rounds' certificate and never
    # runs certify_scq's GEMM; its verdict is the one certify_scq gives.
    from scq.solvers import dispatch
    from scq.solvers.engine import fused
    if not fused.cpu_available():
        pytest.skip("the compiled rounds need numba")
    z, E = problem(N=40, K=50, D=6, seed=4)

    def no_second_gemm(*args, **kwargs):
        raise AssertionError("certify_scq ran")

    monkeypatch.setattr(dispatch, "certify_scq", no_second_gemm)
    p, info = scq.solve_scq(z, E, 0.2, method="pgd", return_info=True)
    assert info.converged and "certificate" not in info.extra
    reference = certify_scq(p, z, E, 0.2, None)
    assert abs(info.residual - float(reference.residual.max())) <= 50 * torch.finfo(z.dtype).eps
    with pytest.warns(RuntimeWarning, match="did not reach"):  # the cut-off rows are flagged
        cut_off = scq.solve_scq(z, E, 0.2, method="pgd", return_info=True, max_rounds=1, fw_steps=0)[1]
    assert not cut_off.converged and cut_off.residual > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_target", [False, True])
def test_sparse_weights_are_certified_without_a_dense_copy(dtype, with_target, monkeypatch):
    # certify_scq on SparseWeights reads them on their support (CUDA's pgd, the torch path): the
    # same four measurements as the dense torch path, with padding slots, a code split over two
    # slots, weights pushed off the simplex (every measurement nonzero) and a nan row; and no
    # (N, K) tensor of p is made.
    from scq.solvers import certificate as C
    from scq.solvers.engine import fused
    from scq.solvers.solution import SparseWeights, to_sparse

    g = torch.Generator().manual_seed(3)
    N, K, D = 12, 300, 5
    E = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
    z = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    target = torch.softmax(torch.randn(N, K, generator=g, dtype=torch.float64), -1).to(dtype) if with_target else None
    p = scq.solve_scq(z, E, 0.1, target=target)
    p[0, :3] += 0.01  # off the simplex, and codes off the support take weight
    p[1, 7] = float("nan")
    sw = to_sparse(p)
    # One slot more: rows 0-2 split their first weight over it (halves: exact), the others repeat
    # that code with weight 0 (padding).
    idx = torch.cat([sw.indices, sw.indices[:, :1]], 1)
    val = torch.cat([sw.values, torch.zeros_like(sw.values[:, :1])], 1)
    val[:3, -1] = val[:3, 0] = sw.values[:3, 0] / 2
    sparse = SparseWeights(idx, val, K)
    assert torch.equal(sparse.to_dense().isnan(), p.isnan())
    assert torch.allclose(sparse.to_dense().nan_to_num(), p.nan_to_num(), rtol=0, atol=0)

    made = []
    to_dense = SparseWeights.to_dense
    monkeypatch.setattr(SparseWeights, "to_dense", lambda self: made.append(1) or to_dense(self))
    got = C.certify_scq(sparse, z, E, 0.1, target)
    assert made == []
    monkeypatch.setattr(fused, "scq_certificate", lambda *a: None)  # the dense torch formulas, the same z_q
    ref = C.certify_scq(sparse, z, E, 0.1, target, dense=p)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(got, ref):
        assert torch.equal(a.isnan(), b.isnan()) and bool(a[1].isnan()), (a, b)
        a, b = a[~b.isnan()], b[~b.isnan()]
        assert float(b.max()) > 0 and float((a - b).abs().max()) <= tol * float(b.abs().max()), (a, b)


def test_the_sparse_certificate_counts_a_code_split_over_slots_once():
    # p = (0, 0.2, 0.8, 0) with code 1's weight in two slots of 0.1: its terms are those of 0.2
    # (|min(0.2, μ₁/s)| = 0.16 is the residual here; 0.1 would give 0.14), its μ₁² enters ‖δ‖²
    # once (λ = 1: ‖δ‖/λ is the smaller error bound). Against the compiled pass on the dense p (an
    # independent implementation). g = G + λp = (0, 0.3, 0.1, 0.5), gᵀp = 0.14.
    from scq.solvers import certificate as C
    from scq.solvers.engine import fused

    if not fused.cpu_available():
        pytest.skip("needs numba")
    G = torch.tensor([[0.0, 0.1, -0.7, 0.5]], dtype=torch.float64)
    p = torch.tensor([[0.0, 0.2, 0.8, 0.0]], dtype=torch.float64)
    target, scale, lam = torch.zeros(1, 4, dtype=torch.float64), torch.ones(1, dtype=torch.float64), 1.0
    got = C._certify_scq_sparse(G.clone(), torch.tensor([[1, 2, 1]]), torch.tensor([[0.1, 0.8, 0.1]], dtype=torch.float64),
                                None, target, lam, scale)
    ref = fused.scq_certificate(G.clone(), p, None, target, lam, scale)
    assert float(ref[0][0]) == pytest.approx(0.16) and float(ref[2][0]) == pytest.approx(0.0468 ** 0.5)
    for a, b in zip(got, ref):
        assert float(a[0]) == pytest.approx(float(b[0]), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("ridge", [0.0, 0.05])
def test_sparse_lasso_weights_are_certified_without_a_dense_copy(dtype, nonneg, ridge, monkeypatch):
    # certify_lasso's torch sweep (CUDA, kernels off) on SparseWeights: the same four measurements
    # as on the dense weights, with a code split over two slots, padding, weights perturbed off
    # the solution on and off the support, and a nan row; no (N, K) tensor of w is made.
    from scq.solvers import certificate as C
    from scq.solvers.engine import fused
    from scq.solvers.solution import SparseWeights, to_sparse

    g = torch.Generator().manual_seed(5)
    N, K, D = 12, 300, 5
    E = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
    z = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    w = scq.solve_lasso(z, E, 0.3, nonneg=nonneg, **({"ridge": ridge} if ridge else {}))
    w[0, :3] += 0.02  # off the solution, codes off the support take weight
    w[4] *= 1.5
    w[1, 7] = float("nan")
    sw = to_sparse(w)
    idx = torch.cat([sw.indices, sw.indices[:, :1]], 1)
    val = torch.cat([sw.values, torch.zeros_like(sw.values[:, :1])], 1)
    val[:3, -1] = val[:3, 0] = sw.values[:3, 0] / 2  # rows 0-2: a code over two slots; the rest: padding
    sparse = SparseWeights(idx, val, K)
    assert torch.equal(sparse.to_dense().nan_to_num(), w.nan_to_num())

    made = []
    to_dense = SparseWeights.to_dense
    monkeypatch.setattr(SparseWeights, "to_dense", lambda self: made.append(1) or to_dense(self))
    monkeypatch.setattr(fused, "lasso_certificate", lambda *a: None)  # the torch sweep
    got = C.certify_lasso(sparse, z, E, 0.3, nonneg, ridge)
    assert made == []
    ref = C.certify_lasso(sparse, z, E, 0.3, nonneg, ridge, dense=w)  # (the same z_q)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for i, (a, b) in enumerate(zip(got, ref)):
        if b.isinf().all():  # the error bound without a ridge
            assert a.isinf().all()
            continue
        assert torch.equal(a.isnan(), b.isnan()) and bool(a[1].isnan()), (a, b)
        a, b = a[~b.isnan()], b[~b.isnan()]
        if i >= 2:  # the bounds are √(2·gap/ρ), √(2·gap): compared squared (√ magnifies the gap's rounding near 0)
            a, b = a * a, b * b
        assert float(b.max()) > 0 and float((a - b).abs().max()) <= tol * float(b.abs().max()), (a, b)
