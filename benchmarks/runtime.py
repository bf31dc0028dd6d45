"""Runtime: forward and forward+backward time and peak memory against N, K and D.

Every contender runs on the same inputs (λ = 0.1), side by side in one process, with each of
three codebook kinds (``common.CODEBOOKS``: a data-like codebook with inputs = codes + noise, a
random N(0, 1) codebook, codes = inputs + noise), so that no single favourable one stands for all:
the N, K and D sweeps run on every kind (the quick run sweeps the data-like one and times the
three at one size, the "codebooks" sweep), with warm-up and medians; times are also reported as ratios to
this project's VQ at the same size, since absolute times on shared machines are noisy. SCQ
solvers also report their max deviation from the exact solution on the first ``REF_VECTORS``
vectors of the timed batch (:func:`reference_weights`), and whether their own certificate held.

On CUDA the sweeps are a GPU's (:func:`cases`: N up to 262144, K up to 16384, issue #12's sizes);
``benchmarks/device_check.sh`` runs them with the CUDA tests in one call on a GPU machine.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

import scq
from scq.reference import reference_scq

from . import contenders as C
from .common import CODEBOOKS, machine_info, spread, time_once, write_csv
from .memory import peak_memory_mb

REF_VECTORS = 16
SUPPORT_THRESHOLD = 1e-6  # a weight counts in the support above this (SCS never returns exact 0)
FAST = ("vq", "vector-quantize-pytorch", "scq-relaxed", "scq-pgd")
PEERS = ("vq", "vector-quantize-pytorch", "scq-relaxed", "scq-pgd", "scq-exact", "qpth")
SVQ = ("vq", "vector-quantize-pytorch", "svq-mlp", "svq-lasso")
# SVQ's own regime: its N(0, 1) codebook and default α, where every lasso support fills D (the
# data-like codebook's, at α = 20, are 2 codes): its hardest case, timed beside the easy one.
SVQ_OWN = ("vq", "svq-mlp", "svq-lasso", "svq-lasso-default")
CUDA_HEADLINE = {(16384, 1024, 64), (65536, 1024, 64), (16384, 16384, 64)}  # (N, K, D) of issue #12's bounds


@dataclass(frozen=True)
class Case:
    sweep: str  # which plot the point belongs to: "N", "K", "D", "peers", "svq", "codebooks"
    N: int
    K: int
    D: int
    methods: tuple
    codebook: str = "data_like"  # a key of common.CODEBOOKS


def cases(quick: bool, device: str = "cpu") -> list[Case]:
    """The points timed: the quick smoke run's, the 2-core CPU's sweeps around N = K = 1024,
    D = 64, or on CUDA a GPU's sweeps around N = 16384, K = 1024, D = 64 (N to 262144, K to
    16384), each sweep on every codebook kind."""
    if device == "cuda" and not quick:
        N0, K0, D0 = 16384, 1024, 64
        out = []
        for kind in CODEBOOKS:
            out += [Case("N", n, K0, D0, FAST, kind) for n in (4096, 16384, 65536, 262144)]
            out += [Case("K", N0, k, D0, FAST, kind) for k in (1024, 4096, 16384)]
            out += [Case("D", N0, K0, d, FAST, kind) for d in (16, 64, 256)]
        out += [Case("peers", 256, 512, 64, PEERS)]
        out += [Case("svq", N0, k, 64, SVQ) for k in (1000, 10000)]
        out += [Case("svq", N0, 10000, 64, SVQ_OWN, "random")]
        # Issue #12's bounds first, on every kind: a run stopped by its time limit (one call on a
        # lent GPU) has measured them (runtime.csv is rewritten after each case).
        return sorted(out, key=lambda c: (c.N, c.K, c.D) not in CUDA_HEADLINE)  # (a stable sort)
    if quick:
        N0, K0, D0 = 512, 128, 32
        out = [Case("N", n, K0, D0, FAST) for n in (128, 512)]
        out += [Case("K", N0, k, D0, FAST) for k in (64, 256)]
        out += [Case("D", N0, K0, d, FAST) for d in (16, 64)]
        out += [Case("peers", 16, 64, 16, PEERS)]
        out += [Case("svq", 512, 1000, 32, SVQ)]
        out += [Case("svq", 128, 1000, 32, SVQ_OWN, "random")]
        out += [Case("codebooks", N0, K0, D0, FAST, kind) for kind in CODEBOOKS]
        return out
    N0, K0, D0 = 1024, 1024, 64
    out = []
    for kind in CODEBOOKS:
        out += [Case("N", n, K0, D0, FAST, kind) for n in (256, 1024, 4096)]
        out += [Case("K", N0, k, D0, FAST, kind) for k in (128, 512, 1024, 4096)]
        out += [Case("D", N0, K0, d, FAST, kind) for d in (16, 64, 256)]
    out += [Case("peers", 256, 512, 64, PEERS)]
    out += [Case("svq", 4096, k, 64, SVQ) for k in (1000, 10000)]
    out += [Case("svq", 1024, 10000, 64, SVQ_OWN, "random")]
    return out


# Interleaved rounds per case: at least MIN_REPEATS, then more until the case has taken
# REPEAT_BUDGET_S (CPU, CUDA) or MAX_REPEATS rounds. Five medians alone left the ratio of a
# 2 ms VQ call to the others at the mercy of one or two slow calls on this VM (VQ at N = K = 1024,
# D = 16 took 1.9–5.1 ms from call to call, median 2.9, in 41 interleaved rounds).
MIN_REPEATS, MAX_REPEATS = 5, 41
REPEAT_BUDGET_S = (3.0, 1.0)


def _slow(name: str) -> bool:
    return name in ("scq-exact", "qpth")


class Contender:
    """One method on one case's inputs, ready to time: its forward and forward+backward."""

    def __init__(self, name: str, case: Case, device: str, dtype: torch.dtype, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.name, self.case = name, case
        self.z64, self.E64 = CODEBOOKS[case.codebook](case.N, case.K, case.D, generator=gen)
        self.z = self.z64.to(device, dtype)
        self.module = C.build(name, case.K, case.D, device, dtype, self.E64)
        self.fwd_times: list[float] = []
        self.fwdbwd_times: list[float] = []

    def forward(self):
        with torch.no_grad():
            return C.output_of(self.module, self.z)

    def forward_backward(self):
        x = self.z.clone().requires_grad_()
        quantized, _, loss = C.output_of(self.module, x)
        (quantized.pow(2).mean() + loss).backward()
        self.module.zero_grad(set_to_none=True)

    def row(self, device: str) -> dict:
        row = dict(fwd_s=statistics.median(self.fwd_times), fwdbwd_s=statistics.median(self.fwdbwd_times),
                   spread=max(spread(self.fwd_times), spread(self.fwdbwd_times)), repeats=len(self.fwdbwd_times))
        row["peak_mb"] = peak_memory_mb(self.forward_backward, device)
        _, weights, _ = self.forward()
        info = getattr(self.module, "last_info", None)
        if info is not None:
            row["converged"] = bool(info.converged)
        if self.name in C.SCQ_SOLVERS and weights is not None:
            n = min(REF_VECTORS, self.case.N)
            try:
                ref, row["reference"] = reference_weights(self.z64[:n], self.E64)
                row["max_dev"] = float((weights[:n].detach().double().cpu() - ref).abs().max())
            except RuntimeError as err:  # the timings stand; the deviation is not measured
                row["max_dev"] = float("nan")
                row["note"] = f"no reference: {str(err)[:100]}"
        if weights is not None:
            w = weights.detach()
            # SCS's weights are never exactly 0: count what exceeds a stated threshold.
            row["support_size"] = float((w.abs() > SUPPORT_THRESHOLD).sum(-1).double().mean())
            row["support_threshold"] = SUPPORT_THRESHOLD
        return row


def reference_weights(z64: torch.Tensor, E64: torch.Tensor) -> "tuple[torch.Tensor, str]":
    """The exact SCQ weights of the rows ``z64`` (float64) and where they came from: cvxpy's
    (an independent solver, polished and certified: :func:`scq.reference.reference_scq`) where it
    is installed; else (a GPU machine without it) ``pgd`` in float64 on the CPU, a path apart
    from the CUDA kernels timed, kept only where its KKT certificate holds (RuntimeError else)."""
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        p, info = scq.solve_scq(z64.cpu(), E64.cpu(), lam=C.LAM, method="pgd", return_info=True)
        if not info.converged:
            raise RuntimeError(f"the float64 pgd reference failed its certificate (residual {info.residual:.2e})")
        return p, "pgd float64 (certified)"
    return reference_scq(z64, E64, C.LAM), "cvxpy"


def measure(name: str, case: Case, device: str, dtype: torch.dtype, seed: int, repeats: int) -> dict:
    """One contender alone: medians of ``repeats`` forward and forward+backward calls after a
    warm-up (one call for the slow peers), peak memory, deviation and support size."""
    contender = Contender(name, case, device, dtype, seed)
    slow = _slow(name)
    if not slow:
        contender.forward()
        contender.forward_backward()
    for _ in range(1 if slow else repeats):
        contender.fwd_times.append(time_once(contender.forward, device))
        contender.fwdbwd_times.append(time_once(contender.forward_backward, device))
    return contender.row(device)


def run(quick: bool = False, device: str = "cpu", seed: int = 0, progress: bool = True,
        dtype: torch.dtype = torch.float32, checkpoint: Optional[Path] = None) -> list[dict]:
    """Every case, its contenders timed interleaved (one call of each in turn, in rounds: see
    ``MIN_REPEATS``), so a change in the machine's load affects all of them alike. ``checkpoint``: a CSV rewritten
    with the rows so far after each case (no ratios yet), so that a run stopped early (a time
    limit on a lent GPU) leaves what it measured."""
    meta = machine_info(device, dtype)
    repeats = 2 if quick else MIN_REPEATS  # the smoke run times little: two repeats still give a spread
    budget_s = 0.0 if quick else REPEAT_BUDGET_S[device == "cuda"]
    rows = []
    # A sweep's centre lies on the N, K and D sweeps alike: it is timed once, its rows listed in each.
    timed: dict = {}
    bar = tqdm(cases(quick, device), desc="runtime", disable=not progress)
    for case in bar:
        point = (case.N, case.K, case.D, case.codebook, case.methods)
        if point in timed:
            rows += [dict(r, sweep=case.sweep) for r in timed[point]]
            if checkpoint is not None:
                write_csv(checkpoint, rows)
            continue
        bar.set_postfix_str(f"{case.sweep}: N={case.N} K={case.K} D={case.D} {case.codebook}")
        base = dict(meta, part="runtime", sweep=case.sweep, N=case.N, K=case.K, D=case.D, lam=C.LAM,
                    codebook=case.codebook)
        ready, case_rows = [], {}
        for name in case.methods:
            case_rows[name] = dict(base, method=name)
            reason = C.available(name, device)
            if reason is not None:
                case_rows[name]["status"] = f"skipped: {reason}"
                continue
            try:
                contender = Contender(name, case, device, dtype, seed)
                if not _slow(name):  # warm-up
                    contender.forward()
                    contender.forward_backward()
                ready.append(contender)
            except (MemoryError, RuntimeError) as err:  # e.g. a peer running out of memory
                case_rows[name]["status"] = f"failed: {str(err).splitlines()[0][:120]}"
        began, round_ = time.perf_counter(), 0
        while ready and (round_ < repeats or (round_ < MAX_REPEATS and time.perf_counter() - began < budget_s)):
            round_ += 1
            for contender in list(ready):
                if _slow(contender.name) and round_ > 1:
                    continue
                try:
                    contender.fwd_times.append(time_once(contender.forward, device))
                    contender.fwdbwd_times.append(time_once(contender.forward_backward, device))
                except (MemoryError, RuntimeError) as err:
                    case_rows[contender.name]["status"] = f"failed: {str(err).splitlines()[0][:120]}"
                    ready.remove(contender)
        for contender in ready:
            case_rows[contender.name].update(contender.row(device), status="ok")
        rows += case_rows.values()
        timed[point] = list(case_rows.values())
        del ready
        gc.collect()
        if checkpoint is not None:
            write_csv(checkpoint, rows)
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    key = lambda r: (r["sweep"], r["codebook"], r["N"], r["K"], r["D"])
    base = {key(r): r for r in rows if r["method"] == "vq" and r["status"] == "ok"}
    for r in rows:
        b = base.get(key(r))
        if b and r["status"] == "ok":
            r["fwd_vs_vq"] = r["fwd_s"] / b["fwd_s"]
            r["fwdbwd_vs_vq"] = r["fwdbwd_s"] / b["fwdbwd_s"]


def headline(rows: list[dict]) -> list[dict]:
    """The rows a reader wants first: the peer comparison, and the largest size of the N sweep
    (or of the quick run's "codebooks" sweep) for each codebook kind."""
    ok = [r for r in rows if r["status"] == "ok" or r["sweep"] == "peers"]
    top_n = max((r["N"] for r in rows if r["sweep"] == "N"), default=None)
    return [r for r in ok if r["sweep"] in ("peers", "codebooks") or (r["sweep"] == "N" and r["N"] == top_n)]


def worst_ratios(rows: list[dict]) -> list[dict]:
    """For each method and codebook kind, its largest forward+backward time against scq's VQ over
    every point of the N, K and D sweeps, and where: the figure a "≤ x× VQ everywhere" claim is
    read from."""
    out = {}
    for r in rows:
        if r["sweep"] not in ("N", "K", "D") or r["status"] != "ok" or r["method"] == "vq":
            continue
        key = (r["method"], r["codebook"])
        if key not in out or r["fwdbwd_vs_vq"] > out[key]["worst_fwdbwd_vs_vq"]:
            out[key] = dict(method=r["method"], codebook=r["codebook"], worst_fwdbwd_vs_vq=r["fwdbwd_vs_vq"],
                            at=f"{r['sweep']} sweep: N={r['N']} K={r['K']} D={r['D']}")
    return sorted(out.values(), key=lambda r: (r["method"], r["codebook"]))
