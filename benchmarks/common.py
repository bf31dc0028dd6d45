"""Shared benchmark plumbing: timing, machine facts, data, tables and result files."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch


def machine_info(device: str, dtype: torch.dtype) -> dict:
    """The columns every result row carries, so rows from different runs stay comparable."""
    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
    return {
        "machine": f"{platform.node()} ({name}, {os.cpu_count()} cpus)",
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "threads": torch.get_num_threads(),
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# Repeated timings of one call whose slowest exceeds its fastest by more than this factor are
# flagged as unreliable (a busy machine, frequency changes), in the output and in the files.
SPREAD_LIMIT = 1.5


def time_once(fn: Callable[[], object], device: str = "cpu") -> float:
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_call(fn: Callable[[], object], device: str = "cpu", repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    return statistics.median(time_once(fn, device) for _ in range(repeats))


def spread(times: Sequence[float]) -> float:
    """Slowest over fastest of repeated timings (1 when there is one); from 10 timings on, the
    90th over the 10th percentile, so that one stray call among many (this VM's) does not flag a
    measurement whose median is sound."""
    if not times or min(times) <= 0:
        return float("nan")
    if len(times) < 10:
        return max(times) / min(times)
    ordered = sorted(times)
    at = lambda q: ordered[round(q * (len(ordered) - 1))]
    return at(0.9) / at(0.1)


def load_average() -> float:
    """The 1-minute load average (nan where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def load_warnings(part: str, before: float, after: float, rows: Sequence[dict] = ()) -> "list[str]":
    """Why this part's timings may not be trusted: the machine's load above its core count before
    or after the part, or repeated timings that disagree by more than ``SPREAD_LIMIT``."""
    cores = os.cpu_count() or 1
    out = []
    if max(before, after) > cores:
        out.append(f"{part}: load average {before:.1f} before, {after:.1f} after, on {cores} cores: "
                   f"other processes competed for the CPU; timings are not idle timings")
    noisy = [r for r in rows if r.get("spread", 1.0) > SPREAD_LIMIT]
    if noisy:
        which = ", ".join(f"{r.get('method', r.get('config', '?'))} N={r.get('N')}" for r in noisy[:6])
        out.append(f"{part}: {len(noisy)} measurement(s) whose repeated timings differ by more than "
                   f"{SPREAD_LIMIT}x ({which}{', ...' if len(noisy) > 6 else ''})")
    return out


def train_step(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, opt) -> float:
    """One Adam step of a model returning ``(prediction, quantizer output or None)`` on the MSE to
    ``target`` plus the quantizer's auxiliary loss; returns the MSE (its read waits for the step)."""
    pred, out = model(inputs)
    mse = torch.mean((pred - target) ** 2)
    loss = mse + (out.loss if out is not None else 0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(mse.detach())


def random_codebook(K: int, D: int, *, dtype=torch.float64, device="cpu", generator=None) -> torch.Tensor:
    return torch.randn(K, D, dtype=dtype, device=device, generator=generator)


def data_like(N: int, K: int, D: int, *, noise: float = 0.5, dtype=torch.float64, device="cpu", generator=None):
    """A 'data-like' codebook (clustered codes, as after training) and inputs = codes + noise."""
    centers = torch.randn(max(1, K // 8), D, dtype=dtype, generator=generator)
    E = centers[torch.randint(centers.shape[0], (K,), generator=generator)] + 0.3 * torch.randn(K, D, dtype=dtype, generator=generator)
    z = E[torch.randint(K, (N,), generator=generator)] + noise * torch.randn(N, D, dtype=dtype, generator=generator)
    return z.to(device), E.to(device)


def random_inputs(N: int, K: int, D: int, *, dtype=torch.float64, device="cpu", generator=None):
    """A random N(0, 1) codebook and N(0, 1) inputs: no structure for the solver to exploit."""
    E = random_codebook(K, D, dtype=dtype, generator=generator)
    z = torch.randn(N, D, dtype=dtype, generator=generator)
    return z.to(device), E.to(device)


def codes_near_inputs(N: int, K: int, D: int, *, noise: float = 0.1, dtype=torch.float64, device="cpu", generator=None):
    """Codes = inputs + noise (a codebook initialized from the data): many codes near each input,
    the hardest case for a working set."""
    z = torch.randn(N, D, dtype=dtype, generator=generator)
    E = z[torch.randint(N, (K,), generator=generator)] + noise * torch.randn(K, D, dtype=dtype, generator=generator)
    return z.to(device), E.to(device)


# The codebook kinds the runtime benchmark times, so that no single favourable one stands for all.
CODEBOOKS = {"data_like": data_like, "random": random_inputs, "near_inputs": codes_near_inputs}


def format_table(rows: Sequence[dict], columns: Sequence[str], floatfmt: str = ".3g") -> str:
    """A markdown table (it also reads well in a terminal)."""

    def fmt(v):
        if isinstance(v, float):
            return "nan" if v != v else format(v, floatfmt)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def write_csv(path: Path, rows: Iterable[dict]) -> None:
    rows = list(rows)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
