"""Compile the CPU kernels ahead of their first use (``scq compile``).

The engine's CPU kernels (:mod:`scq.solvers.engine.cpu_kernels`) are Numba functions compiled on
first use, once per machine and argument types, and cached on disk: a minute or two for the first
float32 SCQ solve on 2 cores, about as long again for float32 inputs whose small systems need
float64 (a tiny λ, codes bunched together, the lasso's default ridge) and for float64 inputs.
Numba compiles on one thread, and every process that finds the cache empty compiles for itself:
several training processes started at once on a fresh machine each spend those minutes.

:func:`compile_kernels` fills the cache before that, each *variant* (the dtypes the kernels see)
in a process of its own, at once: a handful of tiny solves per variant, forward and backward,
that take every compiled path (the codebook's Gram matrix and the per-round GEMM, with and
without a target, SCQ and the lasso, the other methods' certificate, the modules' sparse weights).
Numba's cache takes the processes' entries side by side (each reads the index again just before
it writes its own). Measured on 2 cores with an empty cache: 115 s for the three variants at
once against 173 s one after the other (64, 61 and 46 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Iterable, Optional

# What the kernels are compiled for: the inputs' dtype and that of the small systems.
VARIANTS = ("float32", "float32-precise", "float64")
ABOUT = {
    "float32": "float32 inputs and systems",
    "float32-precise": "float32 inputs, float64 systems (tiny λ, bunched codes, the lasso's default ridge)",
    "float64": "float64 inputs",
}


def warm(variant: str) -> None:
    """Run, in this process, the solves that compile ``variant``'s kernels (see :data:`VARIANTS`)."""
    import torch

    from .solvers.engine import fused

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not fused.cpu_available():
        return  # no Numba here: nothing to compile (the solvers take their torch path)
    dtype = torch.float64 if variant == "float64" else torch.float32
    # λ far below max‖e‖² (~D with N(0, 1) codes) sends float32 systems to float64.
    lam = 1e-7 if variant == "float32-precise" else 0.1
    # (Answers flagged at the tiny λ would only warn: the point is compiling.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _solves(dtype, lam, variant)


def _solves(dtype, lam: float, variant: str) -> None:
    import torch

    import scq

    gen = torch.Generator().manual_seed(0)
    D = 8
    # The two ways the rounds get the codes' products: the codebook's Gram matrix (K ≤ N) and a
    # GEMM a round (K > 4N).
    for N, K in ((256, 64), (64, 512)):
        z = torch.randn(N, D, generator=gen, dtype=dtype)
        E = torch.randn(K, D, generator=gen, dtype=dtype)

        def backward(out: torch.Tensor) -> None:
            out.square().sum().backward()

        zg, Eg = z.clone().requires_grad_(), E.clone().requires_grad_()
        backward(scq.solve_scq(zg, Eg, lam, method="pgd") @ Eg)
        target = torch.softmax(torch.randn(N, K, generator=gen, dtype=dtype), -1).requires_grad_()
        backward(scq.solve_scq(zg, Eg, lam, method="pgd", target=target) @ Eg)
        scq.solve_scq(z, E, lam, method="relaxed", return_info=True)  # the SCQ certificate's kernel
        layer = scq.SCQ(D, K, lam=lam, return_weights="sparse").to(dtype)  # the sparse combine's
        backward(layer(z.clone().requires_grad_()).quantized)
        if variant == "float32":
            # Float32 systems for the lasso take a ridge well above its default; the rows' first
            # W without Frank–Wolfe's steps is read from EEᵀ by a kernel of its own.
            backward(scq.solve_lasso(zg, Eg, 0.3, ridge=1.0) @ Eg)
            backward(scq.solve_scq(zg, Eg, lam, method="pgd", fw_steps=0) @ Eg)
        else:  # the lasso's default ridge gives float32 inputs float64 systems
            for nonneg in (False, True):
                zg, Eg = z.clone().requires_grad_(), E.clone().requires_grad_()
                backward(scq.solve_lasso(zg, Eg, 0.3, nonneg=nonneg) @ Eg)
            svq = scq.SVQ(D, K, solver="lasso", alpha=0.3, return_weights="sparse").to(dtype)
            backward(svq(z.clone().requires_grad_()).quantized)
            # Without a ridge the rounds are the torch loop's, its per-row steps compiled.
            scq.solve_lasso(z, E, 0.3, ridge=0.0)


def compile_kernels(variants: Iterable[str] = VARIANTS, jobs: Optional[int] = None,
                    progress: bool = True) -> "dict[str, float]":
    """Compile the CPU kernels for ``variants`` (names from :data:`VARIANTS`) into Numba's on-disk
    cache, ``jobs`` processes at once (default: all of them; Numba compiles on one thread: on 2
    cores three at once took 115 s, one at a time 173 s), and return each variant's
    seconds. A variant already cached takes a few seconds (its process's imports and solves).
    Raises RuntimeError, with the process's output, where a variant's process fails; without
    Numba, returns ``{}``."""
    variants = list(dict.fromkeys(variants))  # (each once)
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"variants must be names from {VARIANTS}, got {name!r}")
    from .solvers.engine import fused

    if not fused.cpu_available():
        return {}  # no Numba here: nothing to compile (the solvers take their torch path)
    if jobs is None:
        jobs = max(1, len(variants))
    elif not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    # One thread each: the solves are tiny, and the processes share the cores.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pending, running, seconds = list(variants), {}, {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(variants), desc="scq compile", unit="variant")
    try:
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                log = tempfile.TemporaryFile(mode="w+")  # (a pipe could fill and stall the process)
                proc = subprocess.Popen([sys.executable, "-m", "scq.precompile", name], env=env, stdout=log,
                                        stderr=subprocess.STDOUT, text=True)
                running[name] = (proc, log, time.perf_counter())
            for name, (proc, log, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.seek(0)
                output = log.read()
                log.close()
                del running[name]
                if proc.returncode != 0:
                    raise RuntimeError(f"scq compile: the {name} variant failed (exit {proc.returncode}):\n{output}")
                seconds[name] = time.perf_counter() - started
                if bar is not None:
                    bar.set_postfix_str(f"{name} {seconds[name]:.0f} s")
                    bar.update()
            time.sleep(0.05)
    finally:
        for proc, log, _ in running.values():  # a failure or an interrupt: stop the others
            proc.kill()
            proc.wait()
            log.close()
        if bar is not None:
            bar.close()
    return seconds


if __name__ == "__main__":  # one variant's process (compile_kernels)
    warm(sys.argv[1])
