"""Bad input is rejected early with an error naming the argument (every method, every entry point)."""

import copy
import io
import math

import pytest
import torch

import scq
from tests.helpers import problem

METHODS = ["exact", "relaxed", "pgd"]


@pytest.fixture
def zE():
    return problem(N=4, K=6, D=3)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs(zE, method, bad):
    z, E = zE
    z_bad = z.clone()
    z_bad[1, 2] = bad
    with pytest.raises(ValueError, match="z contains NaN or Inf"):
        scq.solve_scq(z_bad, E, 0.5, method=method)
    E_bad = E.clone()
    E_bad[0, 0] = bad
    with pytest.raises(ValueError, match="codebook contains NaN or Inf"):
        scq.solve_scq(z, E_bad, 0.5, method=method)
    t_bad = torch.full((4, 6), 1 / 6, dtype=torch.float64)
    t_bad[0, 0] = bad
    with pytest.raises(ValueError, match="target contains NaN or Inf"):
        scq.solve_scq(z, E, 0.5, target=t_bad, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_dimension_mismatch(zE, method):
    z, E = zE
    with pytest.raises(ValueError, match="z has last dimension 2 but the codebook has dimension D=3"):
        scq.solve_scq(z[:, :2], E, 0.5, method=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lam", [0.0, -1.0, math.nan, math.inf])
def test_lambda_must_be_positive(zE, method, lam):
    z, E = zE
    with pytest.raises(ValueError, match="lam must be a finite number > 0"):
        scq.solve_scq(z, E, lam, method=method)


def test_lambda_type(zE):
    z, E = zE
    with pytest.raises(TypeError, match="lam must be a real number"):
        scq.solve_scq(z, E, "0.1")


@pytest.mark.parametrize("method", METHODS)
def test_codebook_must_be_2d(zE, method):
    z, E = zE
    with pytest.raises(ValueError, match="codebook must be 2-D"):
        scq.solve_scq(z, E[None], 0.5, method=method)
    with pytest.raises(ValueError, match="codebook must be 2-D"):
        scq.solve_scq(z, E[0], 0.5, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_target_shape(zE, method):
    z, E = zE
    with pytest.raises(ValueError, match=r"target must have shape \(4, 6\)"):
        scq.solve_scq(z, E, 0.5, target=torch.ones(4, 5, dtype=torch.float64), method=method)


def test_unknown_method(zE):
    z, E = zE
    with pytest.raises(ValueError, match="unknown method 'fista'; available: exact"):
        scq.solve_scq(z, E, 0.5, method="fista")
    with pytest.raises(TypeError, match="method must be a str"):
        scq.solve_scq(z, E, 0.5, method=None)


def test_unknown_option(zE):
    z, E = zE
    with pytest.raises(TypeError, match=r"method='relaxed'\) got unknown options \['max_rounds'\]"):
        scq.solve_scq(z, E, 0.5, method="relaxed", max_rounds=3)


@pytest.mark.parametrize("option,value,error,message", [
    ("max_rounds", 0, ValueError, "max_rounds must be >= 1, got 0"),
    ("max_inner", -1, ValueError, "max_inner must be >= 1, got -1"),
    ("working_set", 2.5, TypeError, "working_set must be an int, got float"),
    ("add_per_round", True, TypeError, "add_per_round must be an int, got bool"),
    ("pg_iters", -3, ValueError, "pg_iters must be >= 0, got -3"),
    ("tol", -1.0, ValueError, r"tol must be a finite number > 0, got -1.0"),
    ("tol", "a", TypeError, "tol must be a real number, got str"),
])
@pytest.mark.parametrize("solver", ["scq", "lasso", "module"])
def test_bad_solver_options_are_named(zE, option, value, error, message, solver):
    # They were clamped silently: max_rounds=0 ran one round, pg_iters=-3 none, tol=-1 certified nothing.
    z, E = zE
    with pytest.raises(error, match=message):
        if solver == "scq":
            scq.solve_scq(z, E, 0.5, **{option: value})
        elif solver == "lasso":
            scq.solve_lasso(z, E, 0.5, **{option: value})
        else:
            scq.SCQ(E.shape[1], E.shape[0], **{option: value})(z)


@pytest.mark.parametrize("method,option,value,error,message", [
    ("pgd", "max_rounds", 0, ValueError, "max_rounds must be >= 1, got 0"),
    ("pgd", "tol", 0.0, ValueError, "tol must be a finite number > 0, got 0.0"),
    ("pgd", "fw_steps", -1, ValueError, "fw_steps must be >= 0, got -1"),
    ("relaxed", "projection", "newton", ValueError, r"projection must be one of \('sort', 'bisect'\), got 'newton'"),
    ("exact", "chunk_size", 0, ValueError, "chunk_size must be >= 1, got 0"),  # was range()'s "arg 3 must not be zero"
    ("exact", "solver_args", 3, TypeError, "solver_args must be a dict or None, got int"),
])
def test_option_values_are_checked_where_they_enter(zE, method, option, value, error, message):
    # At the edge: solve_scq before any work, a module at construction (not at its first
    # forward), and again when its method is switched to one the options do not suit.
    z, E = zE
    with pytest.raises(error, match=message):
        scq.solve_scq(z, E, 0.5, method=method, **{option: value})
    with pytest.raises(error, match=message):
        scq.SCQ(E.shape[1], E.shape[0], method=method, **{option: value})
    if method != "pgd":
        q = scq.SCQ(E.shape[1], E.shape[0], method="pgd", max_rounds=5)
        with pytest.raises(TypeError, match="unknown options"):
            q.method = method  # max_rounds is pgd's
        q = scq.SCQ(E.shape[1], E.shape[0], method=method)
        with pytest.raises(error, match=message):
            q.solver_options[option] = value  # a change after construction is checked too
        assert option not in q.solver_options


@pytest.mark.parametrize("option,value,error,message", [
    ("ridge", -1.0, ValueError, "ridge must be a finite number >= 0, got -1.0"),
    ("pg_iters", -1, ValueError, "pg_iters must be >= 0, got -1"),
])
def test_lasso_option_values_are_checked_where_they_enter(zE, option, value, error, message):
    z, E = zE
    with pytest.raises(error, match=message):
        scq.solve_lasso(z, E, 0.5, **{option: value})
    with pytest.raises(error, match=message):  # named as the option, not as lasso_method
        scq.SVQ(E.shape[1], E.shape[0], solver="lasso", **{option: value})
    with pytest.raises(ValueError, match="lasso_method: unknown method 'nope'"):
        scq.SVQ(E.shape[1], E.shape[0], solver="lasso", lasso_method="nope")


def test_the_lasso_has_no_frank_wolfe_start(zE):
    # fw_steps is SCQ's pgd's (the simplex's Frank–Wolfe start): the lasso names it as unknown.
    z, E = zE
    with pytest.raises(TypeError, match=r"unknown options \['fw_steps'\]"):
        scq.solve_lasso(z, E, 0.5, fw_steps=3)


def test_a_registered_method_validates_its_own_options(zE):
    from scq.solvers.registry import SCQ_METHODS

    z, E = zE
    seen = []

    def check(scale: float = 1.0, **_):
        seen.append(scale)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")

    @scq.register_method("_scaled_for_test", "relaxed, for a test", exact=False, validate=check)
    def scaled(z, codebook, lam, target, *, scale: float = 1.0, tol=None):
        return scq.solve_scq(z, codebook, lam * scale, method="relaxed")

    try:
        with pytest.raises(ValueError, match="scale must be > 0, got -1"):
            scq.SCQ(E.shape[1], E.shape[0], method="_scaled_for_test", scale=-1)
        with pytest.raises(ValueError, match="scale must be > 0, got 0"):
            scq.solve_scq(z, E, 0.5, method="_scaled_for_test", scale=0)
        scq.solve_scq(z, E, 0.5, method="_scaled_for_test", scale=2.0)
        assert seen == [-1, 0, 2.0]
    finally:
        SCQ_METHODS.unregister("_scaled_for_test")


def test_wrong_types(zE):
    z, E = zE
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        scq.solve_scq(z.numpy(), E, 0.5)
    with pytest.raises(TypeError, match="codebook must have a floating-point dtype"):
        scq.solve_scq(z, E.long(), 0.5)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        scq.solve_scq(z, E, 0.5, target=[0.0] * 6)


def test_exact_rejects_cuda_tensors_clearly(zE):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    z, E = zE
    with pytest.raises(ValueError, match="CPU only"):
        scq.solve_scq(z.cuda(), E.cuda(), 0.5, method="exact")


def test_module_arguments():
    with pytest.raises(ValueError, match="lam must be"):
        scq.SCQ(4, 8, lam=0)
    with pytest.raises(ValueError, match="unknown method"):
        scq.SCQ(4, 8, method="nope")
    with pytest.raises(TypeError, match=r"method='relaxed'\) got unknown options \['max_rounds'\]"):
        scq.SCQ(4, 8, method="relaxed", max_rounds=3)
    with pytest.raises(TypeError, match=r"unknown options \['lam'\]"):
        scq.SVQ(4, 8, solver="lasso", lam=1.0)
    with pytest.raises(TypeError, match="solver='mlp' takes no solver options"):
        scq.SVQ(4, 8, tol=1e-3)
    with pytest.raises(ValueError, match="codebook_size must be >= 1"):
        scq.VQ(4, 0)
    with pytest.raises(TypeError, match="dim must be an int"):
        scq.VQ(4.0, 8)
    with pytest.raises(ValueError, match="init must be one of"):
        scq.VQ(4, 8, init="zeros")
    with pytest.raises(ValueError, match="beta must be"):
        scq.VQ(4, 8, beta=-1)


@pytest.mark.parametrize("cls", [scq.VQ, scq.SCQ])
def test_module_inputs(cls):
    q = cls(4, 8)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\)"):
        q(torch.randn(3, 5))
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        q(torch.full((3, 4), math.nan))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        q([[0.0] * 4])


@pytest.mark.parametrize("make", [lambda: scq.SCQ(4, 8), lambda: scq.SVQ(4, 8, solver="lasso", alpha=0.3)],
                         ids=["scq", "svq-lasso"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_module_inputs_checked_after_a_failed_certificate(make, bad):
    # Past the first training forward (and in eval) the certified modules do not check x up front
    # (a host sync per forward): the certificate fails on NaN and the error still names x.
    q = make()
    x = torch.randn(6, 4)
    q(x)
    for train in (True, False):
        q.train(train)
        x_bad = x.clone()
        x_bad[2, 1] = bad
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            q(x_bad)
        assert torch.isfinite(q.codebook).all()
        assert q.last_info is not None and q.last_info.converged  # the last good forward's info


def test_inputs_are_checked_before_they_can_reach_the_codebook():
    # A training forward that writes codes from the batch (k-means init, dead-code revival) checks
    # x first: NaN never reaches the codebook.
    for q in (scq.SCQ(4, 8, kmeans_init=True), scq.SCQ(4, 8, dead_code_threshold=1.0)):
        if q.cluster_size is not None:
            q(torch.randn(16, 4))  # past the first forward: revival may still write codes from x
        before = q.codebook.detach().clone()
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            q(torch.full((16, 4), math.nan))
        assert torch.equal(q.codebook.detach(), before)


def test_failed_cone_solve_is_reported(monkeypatch, zE):
    from scq.solvers import exact

    class Failing:
        def __call__(self, *args, **kwargs):
            raise ValueError("Solver scs returned status infeasible")

    monkeypatch.setattr(exact, "scq_layer", lambda K, D: Failing())
    z, E = zE
    with pytest.raises(RuntimeError, match="method='exact': the cone solver failed"):
        scq.solve_scq(z, E, 0.5, method="exact")


def test_non_finite_cone_output_is_reported(monkeypatch, zE):
    from scq.solvers import exact

    monkeypatch.setattr(exact, "scq_layer", lambda K, D: (lambda C, z, s, t, solver_args: (torch.full((z.shape[0], 6), math.nan, dtype=torch.float64),)))
    z, E = zE
    with pytest.raises(RuntimeError, match="non-finite"):
        scq.solve_scq(z, E, 0.5, method="exact")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_an_approximate_methods_bad_inputs_are_named_too(bad):
    # relaxed's certificate fails as a rule, so it looks for non-finite inputs only where its
    # residual is not finite (no sync on a normal call): NaN and Inf both get there.
    q = scq.SCQ(4, 8, method="relaxed")
    x = torch.randn(6, 4)
    q(x)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        q(x)


def test_solver_options_changed_after_construction_are_checked(zE):
    # They were a plain dict: q.solver_options["max_rounds"] = 0 was taken and clamped at the next
    # forward. Every way of changing them is checked now, and a refused change leaves them as they were.
    z, E = zE
    q = scq.SCQ(E.shape[1], E.shape[0], method="pgd", max_rounds=5)
    with pytest.raises(ValueError, match="max_rounds must be >= 1, got 0"):
        q.solver_options["max_rounds"] = 0
    with pytest.raises(TypeError, match=r"unknown options \['projection'\]"):
        q.solver_options.update(tol=1e-6, projection="sort")
    with pytest.raises(TypeError, match="unknown options"):
        q.solver_options = {"projection": "sort"}
    assert dict(q.solver_options) == {"max_rounds": 5}
    q.solver_options.update(tol=1e-6, pg_iters=3)
    del q.solver_options["max_rounds"]
    assert dict(q.solver_options) == {"tol": 1e-6, "pg_iters": 3}
    assert "pg_iters=3" in repr(q)
    q(z)
    assert q.last_info.tol == 1e-6  # the options changed are the ones the solve runs with
    # A copy (deepcopy, torch.save) checks against its own method.
    twin = copy.deepcopy(q)
    twin.solver_options = {}
    twin.method = "relaxed"
    twin.solver_options["projection"] = "bisect"
    assert dict(q.solver_options) == {"tol": 1e-6, "pg_iters": 3} and q.method == "pgd"
    buffer = io.BytesIO()
    torch.save(q, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with pytest.raises(ValueError, match="pg_iters must be >= 0, got -1"):
        loaded.solver_options["pg_iters"] = -1
    assert loaded.solver_options["pg_iters"] == 3


def test_svq_solver_options_changed_after_construction_are_checked():
    lasso = scq.SVQ(8, 16, solver="lasso", ridge=0.1)
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0, got -1"):
        lasso.solver_options["ridge"] = -1
    assert lasso.solver_options["ridge"] == 0.1
    mlp = scq.SVQ(8, 16, solver="mlp")
    with pytest.raises(TypeError, match="solver='mlp' takes no solver options, got \\['tol'\\]"):
        mlp.solver_options["tol"] = 1e-3
    assert len(mlp.solver_options) == 0
