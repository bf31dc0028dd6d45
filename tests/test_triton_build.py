"""The Triton kernels built for a Hopper GPU (sm_90: H100, H200) on a machine without one.

The interpreter (tests/test_fused.py) checks what the kernels compute, not what the compiler makes
of them: here Triton compiles them ahead of time for sm_90 and the bundled ptxas reports their
registers. Built this way, the active set's unrolled elimination (64 steps of 64×64 tile ops) was
4.7 MB of PTX in float32 and 8.2 MB in float64, 50 s and 236 s to compile at the first call with
more than 32 slots, and spilled 7 KB per thread: what a real GPU would have met first.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

triton = pytest.importorskip("triton")

from scq.solvers.engine import active_set_triton, fista_triton, triton_launch  # noqa: E402

try:
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    PTXAS = get_ptxas(90).path
except (ImportError, AttributeError, RuntimeError) as err:  # a Triton without the ahead-of-time API
    pytestmark = pytest.mark.skip(reason=f"no ahead-of-time build for sm_90 in this Triton ({err})")
    PTXAS = None

HOPPER = GPUTarget("cuda", 90, 32) if PTXAS else None


def _signature(f: str, pointers: dict, scalars: dict, constexprs: tuple) -> dict:
    sig = {name: f"*{f}" if kind == "float" else f"*{kind}" for name, kind in pointers.items()}
    sig.update(scalars)
    sig.update({name: "constexpr" for name in constexprs})
    return sig


def _active_set(f: str) -> dict:
    pointers = dict(H="float", b="float", p0="float", s0="i8", valid="i8", tol="float", out_p="float", out_s="i8",
                    out_nu="float", out_state="i32", out_res="float")
    scalars = dict(m="i32", max_iter="i32", max_support="i32", drop_tol="fp32", tiny="fp32", slack="fp32",
                   **{name: "i32" for name in ("s_hn", "s_hi", "s_hj", "s_bn", "s_pn", "s_sn", "s_vn", "s_op", "s_os")})
    refinement = dict(E="float", code="i64", sign="float", z="float", lin="float")
    refinement_scalars = dict(D="i32", ridge_hi="fp32", ridge_lo="fp32",
                              **{name: "i32" for name in ("s_en", "s_cn", "s_gn", "s_zn", "s_ln")})
    sig = _signature(f, pointers, scalars, ())
    sig.update(_signature(f, refinement, refinement_scalars, ("SIMPLEX", "CAP_SUPPORT", "BLOCK", "REFINE", "BLOCK_D")))
    return sig


def _round(f: str, sys: str) -> dict:
    pointers = dict(E="float", z="float", code="i64", sign="float", u_in="float", s_in="i8", valid="i8",
                    extra="float", start="i64", tol="sys", rows="i64", out_u="sys", out_s="i8", out_nu="sys",
                    out_converged="i8", out_broken="i8", iterations="i64", out_res="sys", out_diff="float")
    scalars = dict(m="i32", D="i32", max_iter="i32", drop_tol="fp32", tiny="fp32", slack="fp32",
                   **{name: "fp32" for name in ("ridge_hi", "ridge_lo", "bonus_hi", "bonus_lo", "l1_hi", "l1_lo")},
                   **{name: "i32" for name in ("s_en", "s_zn", "s_cn", "s_gn", "s_un", "s_sn", "s_vn", "s_xn", "s_ou",
                                               "s_os", "s_oz")})
    sig = {name: f"*{f}" if kind == "float" else f"*{sys}" if kind == "sys" else f"*{kind}"
           for name, kind in pointers.items()}
    sig.update(scalars)
    sig.update({name: "constexpr" for name in ("N_ITER", "SIMPLEX", "HAS_EXTRA", "HAS_START", "REFINE", "SYS_DTYPE",
                                               "BLOCK", "GRAM_D", "BLOCK_D", "HAS_ROWS")})
    return sig


def _fista(f: str) -> dict:
    pointers = dict(H="float", b="float", u0="float", valid="i8", step="float", beta="float", out="float")
    scalars = dict(m="i32", **{name: "i32" for name in ("s_hn", "s_hi", "s_hj", "s_bn", "s_un", "s_vn", "s_on")})
    return _signature(f, pointers, scalars, ("N_ITER", "SIMPLEX", "BLOCK"))


def _build(kernel, signature: dict, constexprs: dict, block: int):
    """Compile for sm_90 as the launcher would (its warps per block); (PTX bytes, seconds, spill
    bytes per thread, registers per thread)."""
    assert list(signature) == list(kernel.arg_names)  # a changed kernel signature must change this test
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=HOPPER,
                              options=dict(num_warps=triton_launch.num_warps(block), **triton_launch.LAUNCH_OPTIONS))
    seconds = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    report = subprocess.run([PTXAS, "-arch=sm_90a", "-v", "-", "-o", "/dev/null"], input=ptx, capture_output=True,
                            text=True)
    if report.returncode != 0:  # this ptxas may not read stdin: through a file then
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(ptx)
            f.flush()
            report = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"], capture_output=True,
                                    text=True)
    assert report.returncode == 0, report.stderr[-2000:]
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", report.stderr))
    registers = max(int(n) for n in re.findall(r"Used (\d+) registers", report.stderr))
    return len(ptx), seconds, spills, registers


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
@pytest.mark.parametrize("simplex", [True, False])
def test_the_active_set_kernel_builds_small_for_hopper(dtype, simplex):
    block = triton_launch.MAX_SLOTS  # the widest working set the kernel takes: its largest build
    # float32 systems are refined in the kernel (float64 sums from the codes); float64 ones are not.
    constexprs = dict(SIMPLEX=simplex, CAP_SUPPORT=not simplex, BLOCK=block, REFINE=dtype == "fp32",
                      BLOCK_D=active_set_triton.REFINE_TILE_D)
    size, seconds, spills, registers = _build(active_set_triton._kernel(), _active_set(dtype), constexprs, block)
    # A loop over the live slots, not 64 unrolled steps: ~0.5 MB of PTX, a few seconds.
    assert size < 1_500_000 and seconds < 60, (size, seconds)
    assert spills <= 1024 and registers <= 255, (spills, registers)


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_the_fista_kernel_builds_without_spilling_for_hopper(dtype):
    block = triton_launch.MAX_SLOTS
    size, seconds, spills, registers = _build(fista_triton._kernel(), _fista(dtype),
                                              dict(N_ITER=10, SIMPLEX=True, BLOCK=block), block)
    assert size < 1_500_000 and seconds < 60, (size, seconds)
    assert spills == 0, (spills, registers)


@pytest.mark.parametrize("block", [16, 64])
def test_the_refinement_costs_the_active_set_kernel_no_registers(block):
    # Registers per thread bound the rows resident on an SM: the float64 refinement after the loop
    # (a gather of the support's codes, tile by tile) must not raise them (tiles of 32 columns of D
    # took 168 registers instead of 71 at 16 slots).
    used = {}
    for refine in (False, True):
        constexprs = dict(SIMPLEX=True, CAP_SUPPORT=False, BLOCK=block, REFINE=refine,
                          BLOCK_D=active_set_triton.REFINE_TILE_D)
        used[refine] = _build(active_set_triton._kernel(), _active_set("fp32"), constexprs, block)[3]
    assert used[True] <= used[False] + 8, used


@pytest.mark.parametrize("inputs, systems", [("fp32", "fp32"), ("fp32", "fp64"), ("fp64", "fp64")])
@pytest.mark.parametrize("block", [16, 64])
def test_the_round_kernel_builds_for_hopper_within_the_active_sets_registers(inputs, systems, block):
    # The whole work on W in one kernel (round_triton): the Gram matrix from the codes (tl.dot at
    # IEEE precision, float64 too), FISTA, the active set, the refinement and z_q. It must build
    # for sm_90, small and fast, without spilling more than the active set alone does.
    import triton.language as tl

    from scq.solvers.engine import round_triton

    constexprs = dict(N_ITER=10, SIMPLEX=True, HAS_EXTRA=False, HAS_START=True, REFINE=systems == "fp32",
                      SYS_DTYPE=tl.float64 if systems == "fp64" else tl.float32, BLOCK=block,
                      GRAM_D=round_triton.GRAM_TILE_D, BLOCK_D=active_set_triton.REFINE_TILE_D, HAS_ROWS=True)
    size, seconds, spills, registers = _build(round_triton._kernel(), _round(inputs, systems), constexprs, block)
    alone = _build(active_set_triton._kernel(), _active_set(systems),
                   dict(SIMPLEX=True, CAP_SUPPORT=False, BLOCK=block, REFINE=systems == "fp32",
                        BLOCK_D=active_set_triton.REFINE_TILE_D), block)
    assert size < 2_000_000 and seconds < 60, (size, seconds)
    assert spills <= max(alone[2], 0) + 256 and registers <= 255, (spills, registers, alone)


@pytest.mark.parametrize("f", ["fp32", "fp64"])
def test_the_end_of_round_kernel_builds_for_hopper(f):
    # The verdict, the counts (int64 atomics), the rows left and the next W laid out in place by
    # gathers (a barrier between the old W's reads and the new one's writes): built for sm_90.
    from scq.solvers.engine import round_triton

    pointers = dict(worst=f"*{f}", worst_code="*i64", new_sign=f"*{f}", nu=f"*{f}", tol=f"*{f}", residual=f"*{f}",
                    allowance=f"*{f}", conv_in="*i8", broken_in="*i8", weights=f"*{f}", support="*i8",
                    iterations="*i64", rows="*i64", code="*i64", sign=f"*{f}", u=f"*{f}", s="*i8", valid="*i8",
                    broken="*i8", next_rows="*i64", counts="*i64")
    scalars = dict(m="i32", n_add="i32", width="i32", alpha="fp32",
                   **{name: "i32" for name in ("s_wn", "s_pn", "s_qn", "s_cn", "s_gn", "s_un", "s_sn", "s_vn")})
    signature = dict(pointers, **scalars, **{name: "constexpr" for name in ("BLOCK", "BLOCK_ADD", "BLOCK_W",
                                                                            "HAS_SIGN", "HAS_ROWS")})
    size, seconds, spills, registers = _build(round_triton._end_kernel(), signature,
                                              dict(BLOCK=64, BLOCK_ADD=64, BLOCK_W=128, HAS_SIGN=True, HAS_ROWS=True),
                                              32)
    assert size < 1_000_000 and seconds < 60 and spills == 0, (size, seconds, spills, registers)


@pytest.mark.parametrize("inputs", ["fp32", "fp64"])
@pytest.mark.parametrize("block", [16, 32, 64])
def test_the_backward_kernel_builds_for_hopper_without_spilling(inputs, block):
    # The engine's backward in one kernel (backward_triton): H_SS from the codes and its elimination
    # in float64 whatever the inputs, ∂z, and ∂E by atomics (float32 and float64 atomic adds).
    import triton.language as tl

    from scq.solvers.engine import backward_triton, round_triton

    pointers = dict(E="float", z="float", code="i64", sign="float", u="float", s="i8", grad_u="float",
                    out_v="fp64", grad_z="float", grad_E="float")
    scalars = dict(m="i32", D="i32", ridge_hi="fp32", ridge_lo="fp32",
                   **{name: "i32" for name in ("s_en", "s_zn", "s_cn", "s_gn", "s_un", "s_sn", "s_qn", "s_vn", "s_oz",
                                               "s_ge")})
    signature = {name: f"*{inputs}" if kind == "float" else f"*{kind}" for name, kind in pointers.items()}
    signature.update(scalars)
    signature.update({name: "constexpr" for name in ("SIMPLEX", "NEED_E", "SYS_DTYPE", "BLOCK", "GRAM_D", "BLOCK_D")})
    constexprs = dict(SIMPLEX=True, NEED_E=True, SYS_DTYPE=tl.float64, BLOCK=block, GRAM_D=round_triton.GRAM_TILE_D,
                      BLOCK_D=backward_triton.TILE_D)
    size, seconds, spills, registers = _build(backward_triton._kernel(), signature, constexprs, block)
    # (4 bytes spilled at 32 slots in float64 with tiles of 8; 181 registers at 64 slots)
    assert size < 1_000_000 and seconds < 60 and spills <= 8 and registers <= 192, (size, seconds, spills, registers)


@pytest.mark.parametrize("f", ["fp32", "fp64"])
@pytest.mark.parametrize("signed", [False, True])
def test_the_entering_scores_kernel_builds_for_hopper(f, signed):
    # The scores before each round's top-k (round_triton.entering_scores): a sweep over K in tiles,
    # a barrier, then W's codes masked.
    from scq.solvers.engine import round_triton

    pointers = dict(G=f"*{f}", score=f"*{f}", code="*i64", sign=f"*{f}", valid="*i8", extra=f"*{f}", start="*i64",
                    rows="*i64")
    scalars = dict(K="i32", m="i32", bonus_hi="fp32", bonus_lo="fp32",
                   **{name: "i32" for name in ("s_gn", "s_on", "s_cn", "s_sn", "s_vn", "s_xn")})
    signature = dict(pointers, **scalars, **{name: "constexpr" for name in ("SIGNED", "HAS_EXTRA", "HAS_START", "BLOCK",
                                                                            "BLOCK_K", "HAS_ROWS")})
    constexprs = dict(SIGNED=signed, HAS_EXTRA=signed, HAS_START=not signed, BLOCK=64,
                      BLOCK_K=round_triton.SCORES_TILE_K, HAS_ROWS=True)
    size, seconds, spills, registers = _build(round_triton._scores_kernel(), signature, constexprs, 32)
    assert size < 500_000 and seconds < 60 and spills == 0, (size, seconds, spills, registers)


@pytest.mark.parametrize("f", ["fp32", "fp64"])
@pytest.mark.parametrize("target", [False, True])
def test_the_certificate_kernel_builds_for_hopper(f, target):
    # The SCQ certificate's two sweeps a row (certificate_triton), float64 sums: built for sm_90.
    from scq.solvers.engine import certificate_triton

    pointers = dict(G=f"*{f}", p=f"*{f}", nearest="*i64", target=f"*{f}", scale=f"*{f}", out_residual=f"*{f}",
                    out_gap=f"*{f}", out_error=f"*{f}", out_q_error=f"*{f}")
    scalars = dict(K="i32", lam_hi="fp32", lam_lo="fp32", s_gn="i32", s_pn="i32", s_tn="i32")
    signature = dict(pointers, **scalars, HAS_TARGET="constexpr", BLOCK_K="constexpr")
    size, seconds, spills, registers = _build(certificate_triton._kernel(), signature,
                                              dict(HAS_TARGET=target, BLOCK_K=certificate_triton.TILE_K), 32)
    assert size < 500_000 and seconds < 60 and spills == 0, (size, seconds, spills, registers)
