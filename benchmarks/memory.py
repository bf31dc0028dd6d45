"""Peak memory of a call: CUDA's allocator statistics, or a sampled RSS on the CPU."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Callable

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: no sampling, report nothing
        return 0


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so the next allocations show up in RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may under-report reused memory
        pass


def peak_memory_mb(fn: Callable[[], object], device: str = "cpu") -> float:
    """Extra memory (MB) at the peak of ``fn()`` over what was held before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the process RSS sampled every 0.5 ms in a
    thread (torch's CPU allocator keeps no statistics), after returning freed heap pages to the OS
    so that reused memory counts; short-lived peaks can be missed: read it as a lower bound.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _release_free_memory()
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _rss_bytes())
    return max(0.0, (peak[0] - base) / 2**20)
