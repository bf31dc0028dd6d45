"""Contention: forward+backward time idle and beside busy processes, as a slowdown ratio.

What a training job meets on a shared machine: DataLoader workers or a second job doing small
torch products, or plain Python loops. Each contender is timed idle, then beside two busy
processes of each kind, then idle again (so that drift between the idle runs shows), all in one
process on the same inputs; the slowdown is the loaded median over the mean of the idle medians.
The machine's load average is recorded before and after each scenario.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from scq.solvers import threads

from .common import load_average, time_call
from .runtime import Case, Contender

CONTENDERS = ("vq", "scq-relaxed", "scq-pgd", "scq-pgd-one-thread", "reference-gemm")
# "scq-pgd-one-thread": pgd held to one intra-op thread, as the one-thread rule for small batches
# (scq/solvers/threads.py) ran it before its work was compiled: the comparison that dropping the
# rule for compiled methods rests on.
# "reference-gemm": one float32 product of two 1024×1024 matrices on torch's pool, the same at every
# size: work that splits evenly between the threads in a few long parallel regions, so its
# slowdown is about the least any work on the pool can expect beside the same load (the CPU share
# left to this process), the yardstick for the other rows.
REFERENCE_SIZE = 1024
BUSY = 2  # processes per load scenario (the setting: as many as the CI machine's cores)

# Each busy process prints "ready" once its loop runs, so timing starts under load, not during its
# imports.
LOADS = {
    "torch matmuls": "import torch\na = torch.randn(64, 64)\nprint('ready', flush=True)\n"
                     "while True:\n    a = torch.tanh(a @ a)",
    "python loops": "print('ready', flush=True)\nx = 0\nwhile True:\n    x = (x + 1) % 1000003",
}


def sizes(quick: bool) -> "list[tuple[int, int, int]]":
    return [(512, 128, 32)] if quick else [(512, 128, 32), (4096, 1024, 64)]


@contextmanager
def busy(kind: str, n: int = BUSY):
    """``n`` processes running the ``kind`` loop for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", LOADS[kind]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for _ in range(n)]
    try:
        for p in procs:
            p.stdout.readline()
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _timer(name: str, N: int, K: int, D: int, seed: int):
    """The contender's forward+backward on the runtime benchmark's inputs (``runtime.Contender``);
    the ``-one-thread`` variant on one intra-op thread; ``reference-gemm`` its product (whatever
    N, K, D: timed in each size's block, under that block's load)."""
    if name == "reference-gemm":
        gen = torch.Generator().manual_seed(seed)
        a, b = (torch.randn(REFERENCE_SIZE, REFERENCE_SIZE, generator=gen) for _ in range(2))
        return lambda: torch.mm(a, b)
    single = name.endswith("-one-thread")
    contender = Contender(name.removesuffix("-one-thread"), Case("contention", N, K, D, ()), "cpu", torch.float32,
                          seed)
    if not single:
        return contender.forward_backward

    def forward_backward():
        with threads.one_thread(True):
            contender.forward_backward()

    return forward_backward


def run(quick: bool = False, seed: int = 0, progress: bool = True) -> list[dict]:
    """Rows: one per (size, contender, scenario) with ``fwdbwd_s``, ``slowdown`` (loaded / idle),
    and the load average before and after the scenario."""
    repeats = 2 if quick else 7
    scenarios = ["idle", "torch matmuls"] if quick else ["idle"] + list(LOADS) + ["idle again"]
    rows = []
    jobs = [(size, scenario) for size in sizes(quick) for scenario in scenarios]
    bar = tqdm(jobs, desc="contention", disable=not progress)
    timers = {}
    for (N, K, D), scenario in bar:
        bar.set_postfix_str(f"N={N} K={K} D={D} {scenario}")
        for name in CONTENDERS:
            timers.setdefault((N, K, D, name), _timer(name, N, K, D, seed))
        before = load_average()
        with busy(scenario) if scenario in LOADS else _nothing():
            # Contenders interleaved: each timed in turn, twice over, under the same conditions.
            times = {name: [] for name in CONTENDERS}
            for _ in range(1 if quick else 2):
                for name in CONTENDERS:
                    times[name].append(time_call(timers[(N, K, D, name)], "cpu", repeats, warmup=1))
        after = load_average()
        for name in CONTENDERS:
            rows.append(dict(part="contention", scenario=scenario, method=name, N=N, K=K, D=D,
                             fwdbwd_s=statistics.median(times[name]), spread=max(times[name]) / min(times[name]),
                             load_before=before, load_after=after, busy_processes=0 if scenario.startswith("idle") else BUSY))
    _add_slowdowns(rows)
    return rows


@contextmanager
def _nothing():
    yield


def _add_slowdowns(rows: list[dict]) -> None:
    for r in rows:
        idle = [x["fwdbwd_s"] for x in rows if x["scenario"].startswith("idle") and x["method"] == r["method"]
                and (x["N"], x["K"], x["D"]) == (r["N"], r["K"], r["D"])]
        r["slowdown"] = r["fwdbwd_s"] / statistics.mean(idle)
