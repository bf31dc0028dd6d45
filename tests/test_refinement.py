"""Float32 answers refined once on their support (docs/math.md §2): the residual summed in float64
from the codes, the correction solved with the float32 factor. The Numba row kernel and the torch
twin against the exact equality solution and each other, and the engine's answers against float64;
the Triton kernel's refinement is checked under the interpreter in tests/test_fused.py."""

import pytest
import torch

import scq
from tests.conftest import cuda_devices
from scq.solvers.engine import cpu_kernels, fused, working_set
from scq.solvers.engine.active_set import ActiveSetResult
from scq.solvers.engine.working_set import QPForm

f32, f64 = torch.float32, torch.float64
LAM = 0.1


def codes_near_inputs(N: int, K: int, D: int, seed: int, noise: float = 0.1):
    """Codes = inputs + noise: many near-parallel codes on each support, where float32 Gram
    products lose the most (the runtime benchmark's hardest codebook)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, D, dtype=f64, generator=g)
    E = z[torch.randint(N, (K,), generator=g)] + noise * torch.randn(K, D, dtype=f64, generator=g)
    return z.float(), E.float()


def _equality_solution(C64, z64, lin64, ridge):
    """The exact minimizer on the simplex restricted to the rows of C (float64): (p, ν)."""
    s = C64.shape[0]
    H = C64 @ C64.T + ridge * torch.eye(s, dtype=f64)
    kkt = torch.zeros(s + 1, s + 1, dtype=f64)
    kkt[:s, :s], kkt[:s, s], kkt[s, :s] = H, 1.0, 1.0
    rhs = torch.cat([C64 @ z64 + lin64, torch.ones(1, dtype=f64)])
    sol = torch.linalg.solve(kkt, rhs)
    return sol[:s], sol[s]


def _one_row(seed: int, s: int = 5, D: int = 64):
    """A support of s near-parallel codes, its float32 Gram matrix and the float32 equality
    solution on it (off by ~ε‖e‖²/λ), and the exact one."""
    z, E = codes_near_inputs(1, s, D, seed, noise=0.03)
    lin = torch.zeros(s, dtype=f32)
    lin[0] = LAM  # SCQ's pull towards the nearest code, on slot 0
    H = E @ E.T + LAM * torch.eye(s, dtype=f32)
    b = E @ z[0] + lin
    kkt = torch.zeros(s + 1, s + 1, dtype=f32)
    kkt[:s, :s], kkt[:s, s], kkt[s, :s] = H, 1.0, 1.0
    sol = torch.linalg.solve(kkt, torch.cat([b, torch.ones(1, dtype=f32)]))
    exact, nu_exact = _equality_solution(E.double(), z[0].double(), lin.double(), LAM)
    return z, E, lin, H, sol[:s].clone(), sol[s].clone(), exact, nu_exact


def _numba_refine(z, E, lin, H, u, nu):
    s, D = H.shape[0], E.shape[1]
    u = u.clone()
    code = torch.arange(s)
    scratch = dict(A=torch.empty(s, s, dtype=f32).numpy(), idx=torch.empty(s, dtype=torch.long).numpy(),
                   support=torch.empty(s, dtype=torch.long).numpy())
    nu, k = cpu_kernels._refine_row(E.numpy(), z[0].numpy(), code.numpy(), torch.ones(s, dtype=f32).numpy(),
                                    lin.double().numpy(), LAM, True, H.numpy(), u.numpy(), float(nu), scratch["A"],
                                    scratch["idx"], 0, scratch["support"], torch.empty(s, dtype=f32).numpy(),
                                    torch.empty(s, dtype=f32).numpy(), torch.empty(D, dtype=f64).numpy())
    # No factor came in: S's was made, and the slots it is on listed for the row's next round.
    assert k == int((u > 0).sum()) and sorted(scratch["idx"][:k].tolist()) == torch.nonzero(u > 0).flatten().tolist()
    return u, nu


def _torch_refine(z, E, lin, H, u, nu):
    s = H.shape[0]
    res = ActiveSetResult(u[None].clone(), u[None] > 0, nu.reshape(1).clone(), torch.ones(1, dtype=torch.bool), 1,
                          torch.zeros(1), torch.zeros(1, dtype=torch.bool))
    form = QPForm(simplex=True, signed=False, ridge=LAM, l1=0.0, start_bonus=LAM)
    w, nu = working_set._refine(E, torch.arange(s)[None], torch.ones(1, s, dtype=f32), z, lin[None], H[None], res,
                                form, LAM, None)
    return w[0], float(nu[0])


@pytest.mark.parametrize("refine", [_numba_refine, _torch_refine], ids=["numba", "torch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_step_brings_the_float32_equality_solution_to_the_exact_one(refine, seed):
    z, E, lin, H, u, nu, exact, nu_exact = _one_row(seed)
    before = float((u.double() - exact).abs().max())
    assert (u > 0).all() and before > 1e-5, before  # float32's own error on these systems: a case that can fail
    got, got_nu = refine(z, E, lin, H, u, nu)
    assert float((got.double() - exact).abs().max()) < 1e-6 < before
    assert abs(float(got.double().sum()) - 1) < 1e-6
    assert abs(got_nu - float(nu_exact)) < 1e-4 * max(1.0, abs(float(nu_exact)))


@pytest.mark.parametrize("refine", [_numba_refine, _torch_refine], ids=["numba", "torch"])
def test_a_refinement_that_would_turn_a_weight_negative_is_not_taken(refine):
    # A feasible point on a support whose equality solution leaves the simplex: the step would
    # cross p ≥ 0, so the row keeps its answer (the active set, not the refinement, moves supports).
    z, E, lin, H, _, nu, exact, _ = _one_row(0)
    lin = lin.clone()
    lin[1] = -50.0  # pushes slot 1's equality weight far below zero
    u = torch.full((H.shape[0],), 1.0 / H.shape[0], dtype=f32)
    got, got_nu = refine(z, E, lin, H, u, nu)
    assert torch.equal(got, u) and got_nu == pytest.approx(float(nu))


@pytest.mark.parametrize("compiled", [True, False], ids=["numba-rounds", "torch-rounds"])
def test_float32_pgd_comes_within_float32_storage_of_the_exact_weights(compiled, monkeypatch):
    monkeypatch.setattr(fused, "ENABLED", compiled)
    z, E = codes_near_inputs(64, 256, 64, seed=0)
    exact = scq.solve_scq(z.double(), E.double(), lam=LAM, method="pgd")  # the same float32 inputs, float64 solve
    got, info = scq.solve_scq(z, E, lam=LAM, method="pgd", return_info=True)
    assert info.converged and got.dtype == f32
    assert float((got.double() - exact).abs().max()) < 1e-6
    monkeypatch.setattr(working_set, "refines", lambda dtype: False)  # without: float32's own error
    unrefined = scq.solve_scq(z, E, lam=LAM, method="pgd")
    assert float((unrefined.double() - exact).abs().max()) > 1e-5


@pytest.mark.parametrize("compiled", [True, False], ids=["numba-rounds", "torch-rounds"])
def test_float32_lasso_with_a_ridge_is_refined_too(compiled, monkeypatch):
    # The lasso's signed codes, without the sum constraint: ridge 0.1 keeps its systems float32.
    monkeypatch.setattr(fused, "ENABLED", compiled)
    z, E = codes_near_inputs(64, 256, 64, seed=0)
    exact = scq.solve_lasso(z.double(), E.double(), alpha=0.5, method="pgd", ridge=LAM)
    got, info = scq.solve_lasso(z, E, alpha=0.5, method="pgd", ridge=LAM, return_info=True)
    assert info.converged and info.extra["systems"][0] == f32
    assert float((got.double() - exact).abs().max()) < 1e-6
    monkeypatch.setattr(working_set, "refines", lambda dtype: False)
    unrefined = scq.solve_lasso(z, E, alpha=0.5, method="pgd", ridge=LAM)
    assert float((unrefined.double() - exact).abs().max()) > 1e-5


def test_float32_default_tolerance_leaves_no_code_out_by_more_than_1e5():
    # Without a tol, a float32 solve works to 1e-6 (working_set.engine_tol), so a code whose
    # multiplier is barely negative is not left out: at 1e-5 one such code cost 1.1e-4 here.
    z, E = codes_near_inputs(256, 1024, 16, seed=0)
    exact = scq.solve_scq(z.double(), E.double(), lam=LAM, method="pgd")
    got, info = scq.solve_scq(z, E, lam=LAM, method="pgd", return_info=True)
    assert info.converged and info.tol == 1e-5  # judged as before
    assert float((got.double() - exact).abs().max()) < 1e-5
    loose = scq.solve_scq(z, E, lam=LAM, method="pgd", tol=1e-5)
    assert float((loose.double() - exact).abs().max()) > 1e-5


@pytest.mark.parametrize("device", cuda_devices())
def test_float32_pgd_on_cuda_comes_within_float32_storage_of_the_exact_weights(device):
    # On CUDA the refinement runs inside the fused active-set kernel (or the torch twin without Triton).
    z, E = codes_near_inputs(256, 1024, 64, seed=1)
    exact = scq.solve_scq(z.double(), E.double(), lam=LAM, method="pgd")
    got, info = scq.solve_scq(z.to(device), E.to(device), lam=LAM, method="pgd", return_info=True)
    assert info.converged and got.device.type == "cuda"
    assert float((got.cpu().double() - exact).abs().max()) < 1e-6


def test_the_numba_refinement_reuses_the_active_sets_factor_in_its_own_order():
    # The active set hands over the factor of H on its last support in the order codes entered,
    # not slot order; where the refined support is the same set, the refinement solves with it.
    import numpy as np

    z, E, lin, H, u, nu, exact, _ = _one_row(1)
    s, D = H.shape[0], E.shape[1]
    order = np.array([3, 0, 4, 1, 2])
    A, idx = np.zeros((s, s), dtype=np.float32), np.zeros(s, dtype=np.int64)
    for t, j in enumerate(order):
        assert cpu_kernels._factor_append(H.numpy(), A, idx, t, j)
    got = u.clone()
    got_nu, k = cpu_kernels._refine_row(E.numpy(), z[0].numpy(), torch.arange(s).numpy(), np.ones(s, dtype=np.float32),
                                        lin.double().numpy(), LAM, True, H.numpy(), got.numpy(), float(nu), A, idx, s,
                                        np.empty(s, dtype=np.int64), np.empty(s, dtype=np.float32),
                                        np.empty(s, dtype=np.float32), np.empty(D, dtype=np.float64))
    assert idx.tolist() == order.tolist() and k == s  # the factor was used, not rebuilt in slot order
    fresh, fresh_nu = _numba_refine(z, E, lin, H, u, nu)
    assert float((got.double() - exact).abs().max()) < 1e-6
    assert torch.allclose(got, fresh, atol=1e-7) and got_nu == pytest.approx(fresh_nu, rel=1e-5)
