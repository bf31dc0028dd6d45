"""Exactness: how far each method's weights, objective and gradients are from the exact solution.

Reference: :func:`scq.reference.reference_scq` (cvxpy + Clarabel, tight) for the weights and
:func:`scq.reference.reference_scq_grads` (dense numpy KKT formulas) for the gradients. VQ's
one-hot is the floor every SCQ method should beat on the objective.
"""

from __future__ import annotations

import itertools

import torch
from tqdm.auto import tqdm

import scq
from scq.reference import reference_scq, reference_scq_grads
from scq.problems import objective, resolve_target

from .common import data_like, machine_info, random_codebook, time_call

METHODS = ("exact", "relaxed", "pgd", "vq")


def grid(quick: bool):
    if quick:
        return dict(N=[24], K=[16, 64], D=[8], lam=[0.01, 0.1, 1.0, 10.0], codebook=["random", "data-like"])
    return dict(N=[64], K=[16, 64, 256], D=[8, 32], lam=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
                codebook=["random", "data-like"])


def _problem(N, K, D, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        E = random_codebook(K, D, generator=gen)
        z = 1.5 * torch.randn(N, D, dtype=torch.float64, generator=gen)
    else:
        z, E = data_like(N, K, D, generator=gen)
    return z, E


def _solve(method, z, E, lam):
    if method == "vq":
        return resolve_target(z, E, None)
    return scq.solve_scq(z, E, lam, method=method)


def run(quick: bool = False, device: str = "cpu", seed: int = 0, progress: bool = True) -> list[dict]:
    """One row per (method, N, K, D, λ, codebook kind). Float64 on the CPU (the reference's terms)."""
    g = grid(quick)
    combos = list(itertools.product(g["N"], g["K"], g["D"], g["lam"], g["codebook"]))
    meta = machine_info("cpu", torch.float64)
    rows = []
    for N, K, D, lam, kind in tqdm(combos, desc="exactness", disable=not progress):
        z, E = _problem(N, K, D, kind, seed)
        target = resolve_target(z, E, None)
        ref = reference_scq(z, E, lam)
        ref_obj = objective(ref, z, E, lam, target)
        gw = torch.randn(N, K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
        ref_grads = reference_scq_grads(z, E, lam, target, ref, gw)
        for method in METHODS:
            if method == "exact" and K * N > 64 * 64:
                continue
            seconds = time_call(lambda: _solve(method, z, E, lam), repeats=1 if method == "exact" else 3)
            zz, EE = z.clone().requires_grad_(), E.clone().requires_grad_()
            w = _solve(method, zz, EE, lam)
            dev = (w.detach() - ref).abs()
            gap = (objective(w.detach(), z, E, lam, target) - ref_obj) / ref_obj.abs().clamp_min(1e-12)
            row = dict(meta, part="exactness", method=method, N=N, K=K, D=D, lam=lam, codebook=kind,
                       max_dev=float(dev.max()), mean_dev=float(dev.mean()),
                       mean_l1_dev=float(dev.sum(-1).mean()), rel_obj_gap=float(gap.max()),
                       seconds=seconds)
            # Cone solvers leave ~1e-12 on every code: count weights above 1e-8 as the support.
            wd = w.detach()
            usage = scq.codebook_usage(wd * (wd > 1e-8), K)
            row.update(support_size=usage["support_size"], perplexity=usage["perplexity"], usage=usage["usage"])
            if w.requires_grad:
                gz, gE = torch.autograd.grad((w * gw).sum(), (zz, EE))
                row["grad_dev"] = max(
                    float((gz - ref_grads[0]).abs().max() / ref_grads[0].abs().max().clamp_min(1e-12)),
                    float((gE - ref_grads[1]).abs().max() / ref_grads[1].abs().max().clamp_min(1e-12)),
                )
            else:
                row["grad_dev"] = float("nan")  # VQ's one-hot has no gradient
            rows.append(row)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Worst case per (method, λ) over the grid: the relaxation's error against λ at a glance."""
    out = {}
    for r in rows:
        key = (r["method"], r["lam"])
        s = out.setdefault(key, dict(method=r["method"], lam=r["lam"], max_dev=0.0, mean_l1_dev=0.0,
                                     rel_obj_gap=0.0, grad_dev=0.0, seconds=0.0, n=0))
        s["max_dev"] = max(s["max_dev"], r["max_dev"])
        s["rel_obj_gap"] = max(s["rel_obj_gap"], r["rel_obj_gap"])
        s["grad_dev"] = max(s["grad_dev"], r["grad_dev"]) if r["grad_dev"] == r["grad_dev"] else float("nan")
        s["mean_l1_dev"] += r["mean_l1_dev"]
        s["seconds"] += r["seconds"]
        s["n"] += 1
    for s in out.values():
        s["mean_l1_dev"] /= s["n"]
        s["seconds"] /= s["n"]
        del s["n"]
    return sorted(out.values(), key=lambda s: (METHODS.index(s["method"]), s["lam"]))


LASSO_METHODS = ("pgd", "exact")


def run_lasso(quick: bool = False, seed: int = 0, progress: bool = True) -> list[dict]:
    """solve_lasso's methods against the cvxpy reference, over α (and ``nonneg``), float64."""
    from scq.reference import reference_lasso

    alphas = [0.03, 0.3, 3.0] if quick else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    N, K, D = (16, 64, 8) if quick else (32, 256, 16)
    meta = machine_info("cpu", torch.float64)
    gen = torch.Generator().manual_seed(seed)
    E = random_codebook(K, D, generator=gen)
    z = torch.randn(N, D, dtype=torch.float64, generator=gen)
    rows = []
    for alpha, nonneg in tqdm(list(itertools.product(alphas, (False, True))), desc="lasso", disable=not progress):
        ref = reference_lasso(z, E, alpha, nonneg)
        for method in LASSO_METHODS:
            seconds = time_call(lambda: scq.solve_lasso(z, E, alpha, nonneg=nonneg, method=method),
                                repeats=1 if method == "exact" else 3)
            w = scq.solve_lasso(z, E, alpha, nonneg=nonneg, method=method)
            rows.append(dict(meta, part="exactness-lasso", method=f"lasso-{method}", N=N, K=K, D=D, alpha=alpha,
                             nonneg=nonneg, max_dev=float((w - ref).abs().max()), seconds=seconds,
                             support_size=float((w.abs() > 1e-9).sum(-1).double().mean())))
    return rows
