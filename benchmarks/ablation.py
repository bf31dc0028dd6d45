"""What each idea inside ``pgd`` buys: the same solve with one idea switched off at a time.

Forward+backward of ``scq.SCQ(method="pgd")`` on a data-like codebook (inputs = codes + noise,
λ = 0.1, float32), side by side in one run (interleaved), as ratios to the default configuration.
"""

from __future__ import annotations

import statistics

import torch
from tqdm.auto import tqdm

import scq
from scq.solvers.engine import fused

from .common import data_like, machine_info, spread, time_once

CONFIGS = {
    "default": {},
    "no FISTA warm start (pg_iters=0)": {"pg_iters": 0},
    "long FISTA warm start (pg_iters=40)": {"pg_iters": 40},
    "no compaction (lockstep batch)": {"compact": False},
    "tiny initial working set (4)": {"working_set": 4},
    "large initial working set (64)": {"working_set": 64},
    "few candidates per round (2)": {"add_per_round": 2},
}
# The warm start, the active set and the backward's support solve as batched torch ops instead of
# the compiled kernels (Numba on the CPU, Triton on CUDA).
UNFUSED = "no compiled kernels: torch ops"


def run(quick: bool = False, device: str = "cpu", seed: int = 0, progress: bool = True) -> list[dict]:
    """One row per configuration. The configurations are timed interleaved (one call of each in
    turn, ``repeats`` rounds, after a warm-up call of each), as the runtime benchmark's contenders:
    timed one after the other, a change in the machine's load made the first one look 25% slower
    than ideas that cost time."""
    N, K, D = (512, 256, 32) if quick else (4096, 1024, 64)
    repeats = 3 if quick else 7
    dtype = torch.float32
    z, E = data_like(N, K, D, generator=torch.Generator().manual_seed(seed))
    z, E = z.to(device, dtype), E.to(device, dtype)
    meta = machine_info(device, dtype)
    configs = dict(CONFIGS)
    if fused.backend(z.new_zeros(1, 1, 1)) is not None:
        configs[UNFUSED] = {}
    modules = {}
    for name, options in configs.items():
        modules[name] = scq.SCQ(D, K, lam=0.1, **options).to(device, dtype)
        with torch.no_grad():
            modules[name].codebook.copy_(E)

    def step(name):
        q = modules[name]
        fused.ENABLED = name != UNFUSED
        try:
            x = z.clone().requires_grad_()
            out = q(x)
            (out.quantized.pow(2).mean() + out.loss).backward()
            q.zero_grad(set_to_none=True)
        finally:
            fused.ENABLED = True

    times: dict = {name: [] for name in configs}
    for name in configs:
        step(name)  # warm-up
    for _ in tqdm(range(repeats), desc="pgd ablation", disable=not progress):
        for name in configs:
            times[name].append(time_once(lambda: step(name), device))
    rows = []
    for name in configs:
        info = modules[name].last_info
        rows.append(dict(meta, part="ablation", config=name, N=N, K=K, D=D, fwdbwd_s=statistics.median(times[name]),
                         spread=spread(times[name]), rounds=info.extra["rounds"], inner_iterations=info.iterations,
                         final_working_set=info.extra["working_set"], converged=info.converged))
    base = rows[0]["fwdbwd_s"]
    for r in rows:
        r["vs_default"] = r["fwdbwd_s"] / base
    return rows
