"""The compiled kernels against the torch code they replace: the Numba kernels on the CPU, the
Triton kernels under ``TRITON_INTERPRET=1`` on the CPU (a subprocess, so that the interpreter
setting reaches Triton before it is imported) and on CUDA where there is one."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

import scq
from scq.solvers.engine import fused, triton_launch
from scq.solvers.engine import fista as torch_fista

from .conftest import cuda_devices

needs_triton = pytest.mark.skipif(not triton_launch.available(), reason="needs triton (pip install triton)")


class _Interpreted:
    """The interpreted checks' subprocess (``TRITON_INTERPRET=1`` set before Triton is imported),
    started once. It takes ~2 minutes of one core, mostly single-threaded Python, so conftest starts
    it at collection (:func:`start_interpreted`) and it runs beside the other tests; the fixture waits."""

    def __init__(self, script: str):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # One thread each for torch and Numba: the tests running beside it have the two cores.
        env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # (no pipe to fill)
        self.proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=root, stdout=self.out,
                                     stderr=self.err, text=True)

    def result(self) -> dict:
        """The script's last stdout line as JSON, once it has finished."""
        if not hasattr(self, "_result"):
            try:
                code = self.proc.wait(timeout=600)
            finally:
                self.stop()
            self.out.seek(0), self.err.seek(0)
            out, err = self.out.read(), self.err.read()
            self.out.close(), self.err.close()
            assert code == 0, err[-3000:]
            self._result = json.loads(out.strip().splitlines()[-1])
        return self._result

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_STARTED: list = []


def start_interpreted() -> _Interpreted:
    """The interpreted checks' subprocess, started at the first call (conftest's collection hook
    calls this where a selected test uses the ``interpreted`` fixture)."""
    if not _STARTED:
        _STARTED.append(_Interpreted(_interpreted_script()))
    return _STARTED[0]


# Random small QPs as the engine builds them (tests/helpers.small_qps), for the subprocess.
_PROBLEM = "from tests.helpers import small_qps as problem\n"


_CASES = textwrap.dedent("""
    import json, torch
    from scq.solvers.engine import fista as F, fista_triton as T

    def case(N, m, dtype, simplex, seed, n_iter):
        H, b, valid, u0 = problem(N, m, dtype, simplex, seed)
        ref = F.fista_torch(H, b, u0, valid, simplex=simplex, ridge=0.1, n_iter=n_iter)
        step, beta = F.step_and_momentum(H, 0.1)
        got = T.fista_fused(H, b, u0, valid, step, beta, simplex=simplex, n_iter=n_iter)
        feasible = bool((got >= 0).all()) and bool((got[~valid] == 0).all())
        if simplex:
            feasible = feasible and float((got.sum(-1) - 1).abs().max()) < 1e-5
        return dict(dtype=str(dtype), simplex=simplex, N=N, m=m, dev=float((got - ref).abs().max()),
                    moved=float((ref - u0).abs().max()), feasible=feasible)

    f32, f64 = torch.float32, torch.float64
    out = [case(N, m, dtype, simplex, seed, n_iter)
           for seed, (N, m, n_iter, dtype, simplex) in enumerate([
               (2, 3, 6, f32, True), (2, 19, 5, f64, True), (1, 64, 2, f32, True), (2, 3, 6, f64, False),
               (2, 19, 5, f32, False), (1, 33, 1, f64, False)])]
    print(json.dumps(out))
""")


def _interpreted_script() -> str:
    """Every interpreted check in one script (Triton and torch import once); it prints one JSON dict."""
    parts = (("fista", _CASES), ("active_set", _ACTIVE_SET_CASES), ("engine", _ENGINE), ("refine", _REFINE),
             ("round", _ROUND), ("rounds", _ROUNDS), ("collapsed", _COLLAPSED), ("scores", _SCORES),
             ("split_scores", _SPLIT_SCORES),
             ("outgrown", _OUTGROWN), ("certificate", _CERTIFICATE))
    script = _PROBLEM + "\n".join(f"def _{name}():\n" + textwrap.indent(body.replace("print(json.dumps(", "return (("), "    ")
                                   for name, body in parts)
    return script + "\nimport json\nprint(json.dumps({" + ", ".join(f"'{name}': _{name}()" for name, _ in parts) + "}))"


@pytest.fixture(scope="module")
def interpreted():
    """Every interpreted check's output (from the subprocess conftest started at collection)."""
    return start_interpreted().result()


@needs_triton
def test_fused_fista_matches_the_torch_loop_under_the_interpreter(interpreted):
    cases = interpreted["fista"]
    assert len(cases) == 6
    for c in cases:
        tol = 1e-5 if c["dtype"] == "torch.float32" else 1e-12
        assert c["dev"] <= tol, c
        assert c["moved"] > 1e-3, c  # the iterations did something to compare
        assert c["feasible"], c


def test_each_device_gets_its_kernels_and_the_switch_turns_them_off(monkeypatch):
    H = torch.eye(4).expand(2, 4, 4)
    assert fused.backend(H) == ("cpu" if fused.cpu_available() else None)
    assert fused.backend(H.to(torch.float16)) is None
    if torch.cuda.is_available() and triton_launch.available():
        assert fused.backend(H.cuda()) == "triton"
        assert fused.backend(torch.eye(triton_launch.MAX_SLOTS + 1, device="cuda").expand(2, -1, -1)) is None
    monkeypatch.setattr(fused, "ENABLED", False)
    assert fused.backend(H) is None


@needs_triton
@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("simplex", [True, False])
def test_fused_fista_on_cuda_matches_the_torch_loop(device, simplex):
    g = torch.Generator().manual_seed(0)
    N, m = 300, 24
    C = torch.randn(N, m, 16, generator=g)
    H = C @ C.transpose(1, 2) + 0.05 * torch.eye(m)
    b = torch.randn(N, m, generator=g)
    valid = torch.rand(N, m, generator=g) < 0.7
    valid[:, 0] = True
    u0 = torch.zeros(N, m)
    if simplex:
        u0[:, 0] = 1
    ref = torch_fista.fista_torch(H, b, u0, valid, simplex=simplex, ridge=0.05, n_iter=10)
    got = torch_fista.fista(H.to(device), b.to(device), u0.to(device), valid.to(device), simplex=simplex, ridge=0.05,
                            n_iter=10)
    assert torch.allclose(got.cpu(), ref, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("device", cuda_devices())
def test_pgd_with_the_fused_warm_start_is_exact_on_cuda(device):
    g = torch.Generator().manual_seed(1)
    E = torch.randn(128, 16, generator=g, dtype=torch.float64)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64)
    ref = scq.solve_scq(x, E, lam=0.1, method="pgd")
    p, info = scq.solve_scq(x.to(device), E.to(device), lam=0.1, method="pgd", return_info=True)
    assert info.converged and torch.allclose(p.cpu(), ref, atol=1e-10)


_ACTIVE_SET_CASES = textwrap.dedent("""
    import json, torch
    from scq.solvers.engine import active_set as A, active_set_triton as T

    def case(N, m, dtype, simplex, seed, max_support=None):
        H, b, valid, u0 = problem(N, m, dtype, simplex, seed, b_scale=3.0)
        tol = torch.full((N,), 1e-5 if dtype == torch.float32 else 1e-10, dtype=dtype)
        ref = A.solve_active_set(H, b, u0, u0 > 0, valid, tol, simplex=simplex, max_support=max_support, compact=False)
        got = T.solve_active_set_fused(H, b, u0, u0 > 0, valid, tol, simplex=simplex, max_support=max_support)
        both = ref.converged & got.converged
        return dict(dtype=str(dtype), simplex=simplex, m=m, both=int(both.sum()), ref=int(ref.converged.sum()),
                    got=int(got.converged.sum()), dev=float((got.weights - ref.weights)[both].abs().max()),
                    nu=float((got.nu - ref.nu)[both].abs().max()), support=bool((got.support == ref.support)[both].all()),
                    iterations=int(got.iterations), feasible=bool((got.weights >= 0).all()))

    out = [case(N, m, dtype, simplex, seed, cap)
           for seed, (N, m, simplex, cap, dtype) in enumerate([
               (2, 5, True, None, torch.float64), (2, 12, True, None, torch.float64), (2, 12, True, None, torch.float32),
               (2, 12, False, None, torch.float64), (2, 9, False, 4, torch.float32)])]
    print(json.dumps(out))
""")


@needs_triton
def test_fused_active_set_matches_the_torch_solve_under_the_interpreter(interpreted):
    cases = interpreted["active_set"]
    assert len(cases) == 5
    for c in cases:
        tol = 1e-5 if c["dtype"] == "torch.float32" else 1e-12
        assert c["got"] == c["ref"] and c["both"] == c["ref"] > 0, c  # the same rows converge
        assert c["dev"] <= tol and c["nu"] <= tol * 10 and c["support"] and c["feasible"], c
        assert c["iterations"] >= 1, c


@needs_triton
@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("simplex, max_support", [(True, None), (False, None), (False, 4)])
def test_fused_active_set_on_cuda_matches_the_torch_solve(device, dtype, simplex, max_support):
    # The interpreted check above on the GPU itself, in each precision, at widths up to the
    # kernel's limit, with many rows (the compiled kernel, not the interpreter's emulation).
    from scq.solvers.engine import active_set as A
    from scq.solvers.engine.active_set_triton import solve_active_set_fused

    from .helpers import small_qps

    tol_value = 1e-5 if dtype == torch.float32 else 1e-10
    for seed, m in enumerate((5, 16, triton_launch.MAX_SLOTS)):
        H, b, valid, u0 = small_qps(512, m, dtype, simplex, seed, b_scale=3.0)
        tol = torch.full((512,), tol_value, dtype=dtype)
        ref = A.solve_active_set(H, b, u0, u0 > 0, valid, tol, simplex=simplex, max_support=max_support, compact=False)
        got = solve_active_set_fused(*(t.to(device) for t in (H, b, u0, u0 > 0, valid, tol)), simplex=simplex,
                                     max_support=max_support)
        both = ref.converged & got.converged.cpu()
        assert int(both.sum()) >= 0.98 * int(ref.converged.sum()) > 0  # rows at the tolerance may differ
        # Relative to the weights' size (without the simplex they reach |b|/ρ, ~100 here), and a few
        # times float32's own error on these systems (1.6e-5 against float64 at m = 64).
        err = (1e-4 if dtype == torch.float32 else 1e-10) * max(1.0, float(ref.weights[both].abs().max()))
        dev = float((got.weights.cpu() - ref.weights)[both].abs().max())
        assert dev <= err, (m, dtype, simplex, dev, err)
        assert bool((got.weights >= 0).all())
        if dtype == torch.float64:
            assert bool((got.support.cpu() == ref.support)[both].all())


_CUDA_BACKWARD_ROWS_CODES = (512, 256)


@needs_triton
@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["scq", "scq-target", "lasso"])
def test_fused_backward_on_cuda_matches_the_torch_path(device, dtype, kind, monkeypatch):
    # The interpreted backward check on the GPU itself (the compiled kernel, float32 and float64
    # atomics into ∂E), many rows, against the torch path's backward on the same device.
    g = torch.Generator().manual_seed(5)
    E = torch.randn(_CUDA_BACKWARD_ROWS_CODES[1], 16, generator=g, dtype=torch.float64)
    x = 0.5 * torch.randn(_CUDA_BACKWARD_ROWS_CODES[0], 16, generator=g, dtype=torch.float64)
    target = torch.softmax(torch.randn(*_CUDA_BACKWARD_ROWS_CODES, generator=g, dtype=torch.float64), -1)
    weigh = torch.randn(*_CUDA_BACKWARD_ROWS_CODES, generator=g, dtype=torch.float64)

    def grads(dtype):
        inputs = [t.to(device, dtype).requires_grad_(True) for t in (x, E, target)]
        if kind == "lasso":
            p = scq.solve_lasso(inputs[0], inputs[1], alpha=0.05, method="pgd", ridge=0.1)
        else:
            p = scq.solve_scq(inputs[0], inputs[1], lam=0.05, method="pgd",
                              target=inputs[2] if kind == "scq-target" else None)
        (p * weigh.to(device, dtype)).sum().backward()
        return [t.grad.double().cpu() for t in inputs if t.grad is not None]

    from scq.solvers.engine import backward_triton

    monkeypatch.setattr(backward_triton, "_KERNEL", None)  # loaded again at its first launch
    got = grads(dtype)
    assert backward_triton._KERNEL is not None  # the kernel ran in this test
    monkeypatch.setattr(fused, "backward", lambda *a, **k: None)  # the torch path's backward
    ref, exact = grads(dtype), grads(torch.float64)
    for a, b, c in zip(got, ref, exact):
        scale = max(1.0, float(c.abs().max()))
        dev = lambda u, w: float((u - w).abs().max())
        if dtype == torch.float64:
            assert dev(a, b) <= 1e-10 * scale
        else:  # the kernel solves in float64: as close to the float64 gradients as the torch path
            assert dev(a, c) <= 2 * dev(b, c) + 1e-6 * scale


def test_the_fused_backward_gives_way_to_deterministic_algorithms(monkeypatch):
    # ∂E summed by atomics depends in its last bits on the order rows finish: under
    # torch.use_deterministic_algorithms the torch path runs (no launch is tried: on the CPU it
    # would fail and switch the kernels off).
    monkeypatch.setattr(fused, "backend", lambda H: "triton")
    z, E = torch.randn(4, 3), torch.randn(6, 3)
    code = torch.zeros(4, 2, dtype=torch.long)
    args = (z, E, code, torch.ones(4, 2), torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.bool), torch.zeros(4, 2))
    kwargs = dict(ridge=0.1, simplex=True, signed=False, need_E=True, sys_dtype=torch.float32)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert fused.backward(*args, **kwargs) is None
    finally:
        torch.use_deterministic_algorithms(was)
    assert fused.ENABLED


_ENGINE = textwrap.dedent("""
    import json, torch, scq
    from scq.solvers.engine import fused

    g = torch.Generator().manual_seed(0)
    E = torch.randn(16, 4, generator=g, dtype=torch.float64)
    x = torch.randn(4, 4, generator=g, dtype=torch.float64)
    ref, ref_info = scq.solve_scq(x, E, lam=0.1, method="pgd", return_info=True)
    fused.backend = lambda H: "triton"  # the Triton kernels on the CPU, interpreted
    from tests.helpers import count_syncs
    box = {}
    syncs = count_syncs(lambda: box.update(out=scq.solve_scq(x, E, lam=0.1, method="pgd", return_info=True)))
    got, info = box["out"]
    print(json.dumps(dict(dev=float((got - ref).abs().max()),
                          converged=bool(info.converged), iterations=info.iterations,
                          int_iterations=isinstance(info.iterations, int), syncs=syncs,
                          rounds=info.extra["rounds"])))
""")


_REFINE = textwrap.dedent("""
    import json, torch, scq
    from scq.solvers.engine import fused, working_set

    # Codes = inputs + noise in float32: the float32 systems' own error is ~5e-5 here.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 8, dtype=torch.float64, generator=g)
    E = (z[torch.randint(6, (24,), generator=g)] + 0.05 * torch.randn(24, 8, dtype=torch.float64, generator=g)).float()
    z = z[:3].float()  # (three rows: the codes come from all six)
    exact = scq.solve_scq(z.double(), E.double(), lam=0.01, method="pgd")
    fused.ENABLED = False
    torch_path = scq.solve_scq(z, E, lam=0.01, method="pgd")
    fused.ENABLED = True
    fused.backend = lambda H: "triton"  # the round loop with the Triton kernels, interpreted
    got, info = scq.solve_scq(z, E, lam=0.01, method="pgd", return_info=True)
    refines, working_set.refines = working_set.refines, lambda dtype: False
    unrefined = scq.solve_scq(z, E, lam=0.01, method="pgd")
    working_set.refines = refines  # (the next script of the subprocess refines again)
    dev = lambda a, b: float((a.double() - b.double()).abs().max())
    print(json.dumps(dict(converged=bool(info.converged), exact=dev(got, exact), torch=dev(got, torch_path),
                          unrefined=dev(unrefined, exact), kernels_on=fused.ENABLED)))
""")


_ROUND = textwrap.dedent("""
    import json, torch
    from scq.solvers.engine import fused, round_triton, working_set as W

    def case(seed, dtype, sys_dtype, simplex, signed, with_extra, n=3, m=7, K=20, D=5):
        # A round's work on W as the engine hands it over: some slots invalid, a feasible start.
        g = torch.Generator().manual_seed(seed)
        E = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
        z = torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype)
        code = torch.stack([torch.randperm(K, generator=g)[:m] for _ in range(n)])
        sign = torch.ones(n, m, dtype=dtype)
        if signed:
            sign = torch.where(torch.rand(n, m, generator=g) < 0.5, -1.0, 1.0).to(dtype)
        valid = torch.rand(n, m, generator=g) < 0.8
        valid[:, 0] = True
        u = torch.zeros(n, m, dtype=dtype)
        if simplex:
            u[:, 0] = 1
        extra = 0.3 * torch.rand(n, K, generator=g, dtype=torch.float64).to(dtype) if with_extra else None
        start = None if with_extra or not simplex else code[:, 0].clone()
        form = W.QPForm(simplex=simplex, signed=signed, ridge=0.1, l1=0.0 if simplex else 0.2,
                        start_bonus=0.1 if simplex else 0.0)
        opts = W.Options(tol=1e-10, max_rounds=1, max_inner=100, working_set=m, add_per_round=2, compact=True)
        tol = torch.full((n,), 1e-9, dtype=dtype)
        refine = W.refines(sys_dtype)
        fused.ENABLED = False
        ref, zq_ref = W._solve_on_w(E, code, sign, z, extra, start, u, u > 0, valid, tol, form, opts, sys_dtype, 0.1,
                                    None, None, None)
        fused.ENABLED = True
        got, diff = round_triton.work_on_w(E, code, sign, z, extra, start, u, u > 0, valid, tol, simplex=simplex,
                                         ridge=0.1, l1=form.l1, bonus=form.start_bonus, sys_dtype=sys_dtype,
                                         pg_iters=opts.pg_iters, max_iter=100, refine=refine)
        both = ref.converged & got.converged
        dev = lambda a, b: float((a.double() - b.double())[both].abs().max())
        return dict(case=[str(dtype), str(sys_dtype), simplex, signed, with_extra], both=int(both.sum()),
                    ref=int(ref.converged.sum()), got=int(got.converged.sum()), u=dev(got.weights, ref.weights),
                    nu=dev(got.nu, ref.nu), zq=dev(diff, zq_ref - z), support=bool((got.support == ref.support)[both].all()),
                    refined=got.refined)

    f32, f64 = torch.float32, torch.float64
    out = [case(seed, *c) for seed, c in enumerate([
        (f64, f64, True, False, False), (f64, f64, True, False, True), (f64, f64, False, True, False),
        (f32, f32, True, False, False), (f32, f64, True, False, True), (f32, f32, False, True, True)])]
    print(json.dumps(out))
""")


_SCORES = textwrap.dedent("""
    import json, torch
    from scq.solvers.engine import round_triton, working_set as W

    def case(seed, dtype, signed, linear, n=4, m=6, K=300, D=5, n_add=5):
        # K over the kernel's tile of codes; W's codes (some slots invalid) masked; a code of W may
        # also be the start.
        g = torch.Generator().manual_seed(seed)
        E = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
        z = torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype)
        zq = 0.5 * z
        code = torch.stack([torch.randperm(K, generator=g)[:m] for _ in range(n)])
        sign = torch.where(torch.rand(n, m, generator=g) < 0.5, -1.0, 1.0).to(dtype) if signed else \
            torch.ones(n, m, dtype=dtype)
        valid = torch.rand(n, m, generator=g) < 0.7
        extra = 0.3 * torch.rand(n, K, generator=g, dtype=torch.float64).to(dtype) if linear == "extra" else None
        start = code[:, 0].clone() if linear == "start" else None
        bonus = 0.2 if linear == "start" else 0.0
        form = W.QPForm(simplex=not signed, signed=signed, ridge=0.1, l1=0.0, start_bonus=bonus)
        ref = W._entering(W._gradients(zq, z, E, extra, start, bonus), code, sign, valid, n_add, form)
        G = (zq - z) @ E.T
        score = round_triton.entering_scores(G.clone(), code, sign, valid, extra, start, bonus=bonus, signed=signed)
        worst, worst_code = score.topk(n_add, dim=1)
        return dict(case=[str(dtype), signed, linear], codes=bool((worst_code == ref[1]).all()),
                    dev=float((worst - ref[0]).abs().max()), masked=int((score == float("-inf")).sum()),
                    expected_masked=int(valid.sum()) if not signed else -1)

    out = [case(seed, dtype, signed, linear) for seed, (dtype, signed, linear) in enumerate([
        (torch.float64, False, "start"), (torch.float32, False, "extra"), (torch.float64, True, None),
        (torch.float32, True, "extra")])]
    print(json.dumps(out))
""")


_SPLIT_SCORES = textwrap.dedent("""
    import json, torch
    from scq.solvers.engine import blocks, working_set as W

    def case(seed, signed, given, N=7, m=6, K=300, D=5, n_add=4):
        # The CUDA rounds' entering codes (W._entering_on_triton) in blocks of 2 rows against one
        # pass: the round's rows all (read in place) or a list of them, in any order.
        g = torch.Generator().manual_seed(seed)
        E, z = torch.randn(K, D, generator=g, dtype=torch.float64), torch.randn(N, D, generator=g, dtype=torch.float64)
        code = torch.stack([torch.randperm(K, generator=g)[:m] for _ in range(N)])
        sign = torch.where(torch.rand(N, m, generator=g) < 0.5, -1.0, 1.0).double() if signed else \
            torch.ones(N, m).double()
        valid = torch.rand(N, m, generator=g) < 0.7
        extra = 0.3 * torch.rand(N, K, generator=g, dtype=torch.float64) if signed else None
        start = None if signed else code[:, 0].clone()
        rows = torch.tensor([6, 1, 3, 0, 4]) if given else None
        diff = -0.5 * (z if rows is None else z[rows])
        form = W.QPForm(simplex=not signed, signed=signed, ridge=0.1, l1=0.0, start_bonus=0.0 if signed else 0.2)
        run = lambda: W._entering_on_triton(diff, E.T, code, sign, valid, extra, start, rows, n_add, form)
        whole = run()
        budget, blocks.GEMM_BLOCK_ELEMENTS = blocks.GEMM_BLOCK_ELEMENTS, 2 * K
        split = run()
        blocks.GEMM_BLOCK_ELEMENTS = budget
        # (the codes and signs alike; the scores within rounding: a GEMM of 2 rows may sum otherwise)
        same = bool(torch.equal(whole[1], split[1])) and \
            (whole[2] is None and split[2] is None or bool(torch.equal(whole[2], split[2])))
        return dict(case=[signed, given], same=same, rows=int(whole[1].shape[0]),
                    dev=float((whole[0] - split[0]).abs().max()))

    out = [case(seed, signed, given) for seed, (signed, given) in enumerate([
        (False, False), (False, True), (True, False), (True, True)])]
    print(json.dumps(out))
""")


@needs_triton
def test_the_cuda_rounds_entering_codes_in_row_blocks_are_those_of_one_pass_under_the_interpreter(interpreted):
    # Past the block budget (scq/solvers/engine/blocks.py), each block's G, scores and top-k, the
    # block's rows read in place or through the round's row list: the same codes, scores and signs.
    cases = interpreted["split_scores"]
    assert len(cases) == 4
    for c in cases:
        assert c["same"] and c["dev"] <= 1e-12 and c["rows"] == (5 if c["case"][1] else 7), c


@needs_triton
def test_the_fused_entering_scores_pick_the_torch_paths_codes_under_the_interpreter(interpreted):
    # round_triton.entering_scores (one launch: the linear term, the signs, W's codes masked)
    # against working_set._gradients + _entering: the same codes and scores after the top-k.
    cases = interpreted["scores"]
    assert len(cases) == 4
    for c in cases:
        assert c["codes"] and c["dev"] <= (1e-12 if c["case"][0] == "torch.float64" else 1e-6), c
        if c["expected_masked"] >= 0:  # unsigned: every valid slot's code masked, nothing else
            assert c["masked"] == c["expected_masked"], c


@needs_triton
def test_the_fused_round_takes_the_torch_paths_steps_under_the_interpreter(interpreted):
    # round_triton against working_set._solve_on_w's torch steps: SCQ with its start bonus and with
    # a target, the signed lasso with a ridge; float64, float32, and float32 inputs on float64
    # systems; invalid slots, m and D below the kernel's tiles.
    cases = interpreted["round"]
    assert len(cases) == 6
    for c in cases:
        f64_systems = c["case"][1] == "torch.float64"
        # (float32 inputs on float64 systems: the kernel sums Cz in float64, the torch path in float32)
        tol = 1e-12 if c["case"][0] == "torch.float64" else 1e-6
        assert c["got"] == c["ref"] == c["both"] > 0, c
        assert c["u"] <= tol and c["zq"] <= 10 * tol and c["nu"] <= 10 * tol and c["support"], c
        assert c["refined"] == (not f64_systems), c


_ROUNDS = textwrap.dedent("""
    import json, torch, scq
    from scq.solvers.engine import fused

    def case(kind, dtype):
        # Many rounds: a small initial W and few entries a round, inputs inside the hull (large
        # supports), so that W grows and the entries double, as in the CPU's rounds test.
        g = torch.Generator().manual_seed(11)
        E = torch.randn(60, 4, generator=g, dtype=torch.float64)
        x = 0.3 * torch.randn(6, 4, generator=g, dtype=torch.float64)
        opts = dict(working_set=4, add_per_round=2, max_rounds=60)
        target = torch.softmax(torch.randn(6, 60, generator=g, dtype=torch.float64), -1)
        weigh = torch.randn(6, 60, generator=g, dtype=torch.float64)  # the backward's incoming gradient
        # Three of the six rows: the same rounds and W widths as all six (its slowest rows), at half
        # the interpreter's time.
        x, target, weigh = x[:3], target[:3], weigh[:3]

        def run(dtype):
            inputs = [t.to(dtype).clone().requires_grad_(True) for t in (x, E, target)]
            xd, Ed, td = inputs
            if kind == "lasso":
                p, info = scq.solve_lasso(xd, Ed, alpha=0.05, method="pgd", return_info=True, ridge=0.1, **opts)
            else:
                p, info = scq.solve_scq(xd, Ed, lam=0.05, target=td if kind == "scq-target" else None,
                                        method="pgd", return_info=True, **opts)
            (p * weigh.to(dtype)).sum().backward()
            return p.detach(), info, [t.grad for t in inputs if t.grad is not None]

        fused.ENABLED, fused.backend = False, backend
        ref, ref_info, ref_grads = run(dtype)
        _, _, exact_grads = run(torch.float64)
        fused.ENABLED, fused.backend = True, lambda H: "triton"
        backward_triton._KERNEL = None  # loaded again at its first launch: proof that this case's ran
        got, info, grads = run(dtype)
        assert fused.ENABLED, "a kernel failed over to the torch path"
        dev = lambda a, b: float((a.double() - b.double()).abs().max())
        # Past the block budget (blocks of 2 rows of the 3): the nearest codes, the rounds' GEMM and
        # entering scores a block at a time (float64 cases: the float32 one's rounds take longest).
        split, split_info, split_grads = got, info, grads
        if dtype == torch.float64:
            budget, blocks.GEMM_BLOCK_ELEMENTS = blocks.GEMM_BLOCK_ELEMENTS, 2 * 60
            split, split_info, split_grads = run(dtype)
            blocks.GEMM_BLOCK_ELEMENTS = budget
            assert fused.ENABLED, "a kernel failed over to the torch path"
        return dict(case=[kind, str(dtype)], dev=dev(got, ref),
                    converged=bool(info.converged and ref_info.converged), rounds=[info.extra["rounds"],
                    ref_info.extra["rounds"]], working_set=[info.extra["working_set"], ref_info.extra["working_set"]],
                    grads=len(grads), grad_dev=[dev(a, b) for a, b in zip(grads, ref_grads)],
                    grad_error=[[dev(a, c), dev(b, c)] for a, b, c in zip(grads, ref_grads, exact_grads)],
                    grad_scale=[float(c.abs().max()) for c in exact_grads],
                    backward_kernel=backward_triton._KERNEL is not None,
                    split=[dev(split, got), split_info.extra["rounds"],
                           max(dev(a, b) for a, b in zip(split_grads, grads))])

    from scq.solvers.engine import backward_triton, blocks
    backend = fused.backend
    out = [case(kind, dtype) for kind, dtype in [("scq", torch.float64), ("lasso", torch.float64),
                                                 ("scq-target", torch.float32)]]
    fused.backend = backend
    print(json.dumps(out))
""")


@needs_triton
def test_the_fused_rounds_take_the_torch_loops_steps_under_the_interpreter(interpreted):
    # The CUDA path's two kernels a round (round_triton: the work on W, then the verdict, counts
    # and next W) against the torch loop: the same rounds, W grown to the same width, the same
    # answer; SCQ with and without a target, the lasso with a ridge, float64 and float32.
    cases = interpreted["rounds"]
    assert len(cases) == 3
    for c in cases:
        assert c["converged"], c
        assert c["rounds"][0] == c["rounds"][1] > 4 and c["working_set"][0] == c["working_set"][1] > 4, c
        assert c["dev"] <= (1e-12 if c["case"][1] == "torch.float64" else 1e-6), c
        # and a block of rows at a time past the block budget: the same rounds and answer
        assert c["split"][1] == c["rounds"][0] and max(c["split"][0], c["split"][2]) <= 1e-12, c


_COLLAPSED = textwrap.dedent("""
    import json, torch, scq
    from scq.solvers.engine import fused, working_set as W

    # Two rows of test_pgd's near-collapsed codebook at λ = 10 (float32) that, alone, cycled to
    # max_rounds before the verdict's allowance on degenerate faces (W.dropped_weight_allowance),
    # on float32 systems (codes this close now get float64 ones: "auto" below).
    g = torch.Generator().manual_seed(0)
    center = torch.randn(16, generator=g)
    center = 0.29 * center / center.norm()
    E = center + 0.01 * torch.randn(64, 16, generator=g)
    z = (center + 0.01 * torch.randn(256, 16, generator=g))[[15, 239]]
    backend, allowance = fused.backend, W.dropped_weight_allowance

    def run(triton, allow=True, spread=0.0):
        fused.ENABLED, fused.backend = triton, (lambda H: "triton") if triton else backend
        W.dropped_weight_allowance = allowance if allow else (lambda dtype, h_max: 0.0 * h_max)
        W.PRECISE_SYSTEMS_SPREAD, default_spread = spread, W.PRECISE_SYSTEMS_SPREAD
        p, info = scq.solve_scq(z, E, 10.0, method="pgd", return_info=True)
        W.dropped_weight_allowance, W.PRECISE_SYSTEMS_SPREAD = allowance, default_spread
        return p, info

    from scq.solvers.engine import round_triton
    ref, ref_info = run(False)
    round_triton._END_KERNEL = None  # loaded again at its first launch: proof that the kernel ran
    got, info = run(True)
    launched = round_triton._END_KERNEL is not None
    _, without = run(True, allow=False)
    _, auto = run(True, spread=W.PRECISE_SYSTEMS_SPREAD)
    fused.ENABLED, fused.backend = True, backend
    exact = scq.solve_scq(z.double(), E.double(), 10.0)
    print(json.dumps(dict(rounds=[info.extra["rounds"], ref_info.extra["rounds"], without.extra["rounds"]],
                          converged=bool(info.converged and ref_info.converged), launched=launched,
                          auto=[str(auto.extra["systems"][0]), auto.extra["rounds"], bool(auto.converged)],
                          dev=float((got.double() - exact).abs().max()))))
""")


@needs_triton
def test_the_fused_rounds_stop_cycling_on_a_near_collapsed_codebook_under_the_interpreter(interpreted):
    # The CUDA end-of-round kernel's verdict takes the degenerate-face allowance as the torch loop
    # does (rows that cycled to all 30 rounds without it end in 2).
    c = interpreted["collapsed"]
    assert c["rounds"][0] == c["rounds"][1] <= 3 < c["rounds"][2], c
    assert c["converged"] and c["launched"] and c["dev"] < 1e-5, c
    # (and by default, on float64 systems: working_set.PRECISE_SYSTEMS_SPREAD)
    assert c["auto"][0] == "torch.float64" and c["auto"][1] <= 3 and c["auto"][2], c


_CERTIFICATE = textwrap.dedent("""
    import json, torch, scq
    from scq.solvers import certificate as C
    from scq.solvers.engine import certificate_triton, fused

    def case(seed, dtype, with_target, K=700, n=5, D=6):
        # K over the kernel's tile; weights from a solve (sparse, on the simplex) with one row
        # perturbed off it, so that every measurement is nonzero somewhere.
        g = torch.Generator().manual_seed(seed)
        E = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
        z = torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype)
        target = torch.softmax(torch.randn(n, K, generator=g, dtype=torch.float64), -1).to(dtype) if with_target \
            else None
        fused.ENABLED = False  # (the weights' source does not matter: the torch path's, not interpreted)
        p = scq.solve_scq(z, E, lam=0.1, target=target, method="pgd")
        p[0, :3] += 0.01
        ref = C.certify_scq(p, z, E, 0.1, target)
        fused.ENABLED = True
        fused.backend = lambda H: "triton"
        certificate_triton._KERNEL = None  # loaded again at its first launch: proof that this case's ran
        got = C.certify_scq(p, z, E, 0.1, target)
        p[1, 4] = float("nan")
        with_nan = C.certify_scq(p, z, E, 0.1, target)
        fused.backend = backend
        # relative to the measurement's largest value (the perturbed row's; the others are at rounding)
        rel = lambda a, b: float((a.double() - b.double()).abs().max() / b.double().abs().max())
        return dict(case=[str(dtype), with_target], rel=[rel(a, b) for a, b in zip(got, ref)],
                    nonzero=[bool((b > 0).any()) for b in ref], launched=certificate_triton._KERNEL is not None,
                    nan_row=[bool(t[1].isnan()) for t in with_nan], others=[bool(t[2:].isfinite().all())
                                                                        for t in with_nan])

    backend = fused.backend
    out = [case(seed, dtype, with_target) for seed, (dtype, with_target) in enumerate([
        (torch.float64, False), (torch.float64, True), (torch.float32, False)])]
    print(json.dumps(out))
""")


@needs_triton
def test_the_fused_certificate_measures_what_the_torch_path_does_under_the_interpreter(interpreted):
    # certificate_triton (one launch, two sweeps a row) against certify_scq's torch ops: the four
    # measurements, with p̃ the nearest code or a target, float64 and float32; a nan reaches its row.
    cases = interpreted["certificate"]
    assert len(cases) == 3
    for c in cases:
        assert c["launched"] and all(c["nonzero"]), c
        assert max(c["rel"]) <= (1e-9 if c["case"][0] == "torch.float64" else 1e-5), c
        assert all(c["nan_row"]) and all(c["others"]), c


_OUTGROWN = textwrap.dedent("""
    import json, torch, scq
    from scq.solvers.engine import fused, triton_launch, working_set as W

    # Large supports (inputs inside the hull): W outgrows the kernels (their widest W made 5 slots
    # here), and the torch loop takes over from round 0's W.
    g = torch.Generator().manual_seed(11)
    E = torch.randn(60, 4, generator=g, dtype=torch.float64)
    x = 0.3 * torch.randn(6, 4, generator=g, dtype=torch.float64)[:3]  # (three rows outgrow it as six do)
    backend, widest = fused.backend, triton_launch.MAX_SLOTS
    fused.ENABLED = False
    ref, ref_info = scq.solve_scq(x, E, lam=0.05, method="pgd", return_info=True, working_set=4, add_per_round=2)
    fused.ENABLED, fused.backend, triton_launch.MAX_SLOTS = True, lambda H: "triton", 5
    handed = []
    loop = W._rounds_on_triton
    W._rounds_on_triton = lambda *a, **k: handed.append(loop(*a, **k)) or handed[-1]
    got, info = scq.solve_scq(x, E, lam=0.05, method="pgd", return_info=True, working_set=4, add_per_round=2)
    fused.backend, triton_launch.MAX_SLOTS, W._rounds_on_triton = backend, widest, loop
    print(json.dumps(dict(dev=float((got - ref).abs().max()), converged=bool(info.converged), handed=len(handed),
                          took_over=handed == [None], working_set=info.extra["working_set"], on=fused.ENABLED)))
""")


@needs_triton
def test_a_working_set_wider_than_the_kernels_hands_the_rounds_to_the_torch_loop(interpreted):
    out = interpreted["outgrown"]
    assert out["handed"] == 1 and out["took_over"] and out["working_set"] > 5, out
    assert out["converged"] and out["dev"] <= 1e-12 and out["on"], out


@needs_triton
def test_the_fused_backward_gives_the_torch_paths_gradients_under_the_interpreter(interpreted):
    # backward_triton (one launch: H_SS from the codes, v = M g, ∂z, ∂E by atomics) against the
    # torch path's backward, after the same solves as above: ∂x, ∂E, and ∂target where there is one.
    cases = interpreted["rounds"]
    for c in cases:
        assert c["backward_kernel"], c
        assert c["grads"] == (3 if c["case"][0] == "scq-target" else 2), c
        if c["case"][1] == "torch.float64":
            assert max(c["grad_dev"]) <= 1e-12, c
            continue
        # float32 inputs: the kernel solves in float64, so its gradients are as close to the float64
        # ones as the torch path's float32 Cholesky (the same kernel in float32 was 2.7× further off).
        # Both are float32 answers: 3.7e-5 and 5.8e-5 from the float64 gradients at a scale of 3.1.
        for kernel, torch_path in c["grad_error"]:
            assert kernel <= 2 * torch_path + 1e-6 and kernel <= 2e-5 * max(c["grad_scale"]), c


@needs_triton
def test_the_fused_active_set_refines_float32_answers_as_the_torch_path_does(interpreted):
    out = interpreted["refine"]
    assert out["converged"], out
    assert out["unrefined"] > 1e-5, out  # float32's own error: a case the refinement must fix
    assert out["exact"] < 1e-6 and out["torch"] < 1e-7, out
    assert out["kernels_on"], out  # no kernel failed over to the torch path on the way


@needs_triton
def test_pgd_engine_with_both_fused_kernels_under_the_interpreter(interpreted):
    out = interpreted["engine"]
    assert out["converged"] and out["int_iterations"] and out["iterations"] >= 1, out
    assert out["dev"] < 1e-12, out  # the lasso's non-simplex, capped solves: the kernel test above
    # No sync inside the fused solves: one per certificate round, and per call the two input
    # checks (x and E), the precision pick and the certificate's read (the torch path adds one
    # per 2 inner iterations).
    assert out["syncs"] <= out["rounds"] + 4, out


@needs_triton
@pytest.mark.parametrize("device", cuda_devices())
def test_the_kernels_reading_n_by_k_rows_on_cuda_address_past_2_31_elements(device):
    # The entering scores and the certificate read (n, K) rows at row·K: past 2³¹ elements (N =
    # 131072 at K = 16384, 8 GiB in float32) a 32-bit product wraps. Each kernel on rows that lie
    # past it gives what it gives on the same rows copied to the front.
    from scq.solvers.engine import certificate_triton, round_triton

    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GiB of GPU memory")
    g = torch.Generator(device=device).manual_seed(0)
    # Scores: three rows 2³⁰ elements apart (row 2 starts at element 2³¹), as a view.
    K, m = 300, 8
    storage = torch.randn(2 * 2**30 + K, device=device, generator=g)
    far = storage.as_strided((3, K), (2**30, 1))
    near = far.clone()
    code = torch.randint(K, (3, m), device=device, generator=g)
    sign, valid = torch.ones(3, m, device=device), torch.ones(3, m, dtype=torch.bool, device=device)
    got = round_triton.entering_scores(far, code, sign, valid, None, None, bonus=0.0, signed=False).clone()
    expected = round_triton.entering_scores(near, code, sign, valid, None, None, bonus=0.0, signed=False)
    assert torch.equal(got, expected) and bool((expected == float("-inf")).any())
    del storage, far
    # The certificate: N·K past 2³¹; its last rows against the same rows alone.
    K = 16384
    N = 2**31 // K + 4
    G = torch.randn(N, K, device=device, generator=g)
    p = torch.rand(N, K, device=device, generator=g)
    nearest = torch.randint(K, (N,), device=device, generator=g)
    scale = torch.rand(N, device=device, generator=g) + 1
    got = certificate_triton.scq_certificate(G, p, nearest, None, 0.1, scale)
    alone = certificate_triton.scq_certificate(G[-4:].clone(), p[-4:].clone(), nearest[-4:], None, 0.1, scale[-4:])
    for a, b in zip(got, alone):
        assert torch.equal(a[-4:], b) and bool(b.isfinite().all())


@needs_triton
@pytest.mark.parametrize("device", cuda_devices())
def test_fused_forward_syncs_once_per_round_on_cuda(device):
    from .helpers import count_syncs

    torch.manual_seed(0)
    q = scq.SCQ(16, 64, lam=0.1).to(device)
    x = torch.randn(256, 16, device=device)
    q(x)
    syncs = count_syncs(lambda: q(x))
    assert syncs <= q.last_info.extra["rounds"] + 3, (syncs, q.last_info.extra["rounds"])


@needs_triton
def test_a_kernel_that_cannot_launch_falls_back_to_the_torch_path_with_a_warning(monkeypatch):
    # Without the interpreter, launching a Triton kernel on CPU tensors fails (no GPU driver):
    # what a CUDA user would meet with a Triton version this code was never compiled with.
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter would run the kernel")
    monkeypatch.setattr(fused, "ENABLED", True)
    monkeypatch.setattr(fused, "backend", lambda H: "triton")  # on the CPU: launch, and fail
    g = torch.Generator().manual_seed(0)
    E = torch.randn(32, 4, generator=g, dtype=torch.float64)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falls back to its torch path"):
        p, info = scq.solve_scq(x, E, lam=0.1, method="pgd", return_info=True)
    assert info.converged
    assert not fused.ENABLED  # warned once, then every kernel off
    monkeypatch.undo()
    assert torch.allclose(p, scq.solve_scq(x, E, lam=0.1, method="pgd"), atol=1e-12)


@needs_triton
def test_the_cuda_paths_launches_are_counted_without_a_gpu():
    # benchmarks/cuda_launches.py: the CUDA path on CPU tensors, kernels interpreted; each Triton
    # kernel one launch, its interpretation none. Forward and backward, on a tiny problem.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json
        from benchmarks.cuda_launches import count
        ops, rounds = count(8, 16, 4, backward=True)
        print(json.dumps(dict(ops=dict(ops), rounds=rounds)))
    """)], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    ops, rounds = out["ops"], out["rounds"]
    assert ops["triton:round"] == rounds >= 1  # one launch a round: the whole work on W (round_triton)
    assert ops["triton:end_of_round"] == rounds  # and one for the verdict, the counts and the next W
    # the scores before each top-k: the start's and each round's
    assert ops["triton:entering_scores"] == rounds + 1 and "scatter_reduce_" not in ops
    assert ops["triton:certificate"] == 1  # the front door's certificate: one pass a row
    assert "triton:fista" not in ops and "triton:active_set" not in ops  # (the capped lasso's step path)
    # the engine's backward in one launch (backward_triton), no batched factor or solve of the torch path
    assert ops["triton:backward"] == 1 and "linalg_cholesky_ex" not in ops and "cholesky_solve" not in ops
    assert "set_" not in ops and "view" not in ops  # the interpreter's traffic and views are not launches
    assert sum(ops.values()) > 20 * rounds  # the torch bookkeeping around the kernels (~85–100 a round today)
