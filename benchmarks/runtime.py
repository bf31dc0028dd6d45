"""Runtime: forward and forward+backward time and peak memory against N, K and D.

Every contender runs on the same inputs (a data-like codebook, inputs = codes + noise, λ = 0.1),
side by side in one process, with warm-up and medians; times are also reported as ratios to
this project's VQ at the same size, since absolute times on shared machines are noisy. SCQ
solvers also report their max deviation from the exact solution (cvxpy reference, on the
first ``REF_VECTORS`` vectors of the timed batch).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from scq.reference import reference_scq

from . import contenders as C
from .common import data_like, machine_info, time_call
from .memory import peak_memory_mb

REF_VECTORS = 16
FAST = ("vq", "vector-quantize-pytorch", "scq-relaxed", "scq-pgd")
PEERS = ("vq", "vector-quantize-pytorch", "scq-relaxed", "scq-pgd", "scq-exact", "qpth")
SVQ = ("vq", "vector-quantize-pytorch", "svq-mlp", "svq-lasso")


@dataclass(frozen=True)
class Case:
    sweep: str  # which plot the point belongs to: "N", "K", "D", "peers", "svq"
    N: int
    K: int
    D: int
    methods: tuple


def cases(quick: bool) -> list[Case]:
    if quick:
        N0, K0, D0 = 512, 128, 32
        out = [Case("N", n, K0, D0, FAST) for n in (128, 512)]
        out += [Case("K", N0, k, D0, FAST) for k in (64, 256)]
        out += [Case("D", N0, K0, d, FAST) for d in (16, 64)]
        out += [Case("peers", 16, 64, 16, PEERS)]
        out += [Case("svq", 512, 1000, 32, SVQ)]
        return out
    N0, K0, D0 = 1024, 1024, 64
    out = [Case("N", n, K0, D0, FAST) for n in (256, 1024, 4096)]
    out += [Case("K", N0, k, D0, FAST) for k in (128, 512, 1024, 4096)]
    out += [Case("D", N0, K0, d, FAST) for d in (16, 64, 256)]
    out += [Case("peers", 256, 512, 64, PEERS)]
    out += [Case("svq", 4096, k, 64, SVQ) for k in (1000, 10000)]
    return out


def _slow(name: str) -> bool:
    return name in ("scq-exact", "qpth")


def measure(name: str, case: Case, device: str, dtype: torch.dtype, seed: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    z64, E64 = data_like(case.N, case.K, case.D, generator=gen)
    z = z64.to(device, dtype)
    module = C.build(name, case.K, case.D, device, dtype, E64)

    def forward():
        with torch.no_grad():
            return C.output_of(module, z)

    def forward_backward():
        x = z.clone().requires_grad_()
        quantized, _, loss = C.output_of(module, x)
        (quantized.pow(2).mean() + loss).backward()
        module.zero_grad(set_to_none=True)

    reps, warm = (1, 0) if _slow(name) else (repeats, 1)
    row = dict(fwd_s=time_call(forward, device, reps, warm), fwdbwd_s=time_call(forward_backward, device, reps, warm))
    row["peak_mb"] = peak_memory_mb(forward_backward, device)
    _, weights, _ = forward()
    if name in C.SCQ_SOLVERS and weights is not None:
        n = min(REF_VECTORS, case.N)
        ref = reference_scq(z64[:n], E64, C.LAM)
        row["max_dev"] = float((weights[:n].detach().double().cpu() - ref).abs().max())
    if weights is not None:
        w = weights.detach()
        row["support_size"] = float((w != 0).sum(-1).double().mean())
    return row


def run(quick: bool = False, device: str = "cpu", seed: int = 0, progress: bool = True,
        dtype: torch.dtype = torch.float32) -> list[dict]:
    meta = machine_info(device, dtype)
    repeats = 3 if quick else 5
    jobs = [(case, name) for case in cases(quick) for name in case.methods]
    rows = []
    bar = tqdm(jobs, desc="runtime", disable=not progress)
    for case, name in bar:
        bar.set_postfix_str(f"{name} N={case.N} K={case.K} D={case.D}")
        row = dict(meta, part="runtime", sweep=case.sweep, method=name, N=case.N, K=case.K, D=case.D, lam=C.LAM)
        reason = C.available(name, device)
        if reason is None:
            try:
                row.update(measure(name, case, device, dtype, seed, repeats))
                row["status"] = "ok"
            except (MemoryError, RuntimeError) as err:  # e.g. a peer running out of memory
                row["status"] = f"failed: {str(err).splitlines()[0][:120]}"
        else:
            row["status"] = f"skipped: {reason}"
        rows.append(row)
        gc.collect()
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict]) -> None:
    base = {(r["sweep"], r["N"], r["K"], r["D"]): r for r in rows if r["method"] == "vq" and r["status"] == "ok"}
    for r in rows:
        b = base.get((r["sweep"], r["N"], r["K"], r["D"]))
        if b and r["status"] == "ok":
            r["fwd_vs_vq"] = r["fwd_s"] / b["fwd_s"]
            r["fwdbwd_vs_vq"] = r["fwdbwd_s"] / b["fwdbwd_s"]


def headline(rows: list[dict]) -> list[dict]:
    """The rows a reader wants first: the peer comparison and the largest size of the N sweep."""
    ok = [r for r in rows if r["status"] == "ok" or r["sweep"] == "peers"]
    top_n = max((r["N"] for r in rows if r["sweep"] == "N"), default=None)
    return [r for r in ok if r["sweep"] == "peers" or (r["sweep"] == "N" and r["N"] == top_n)]
