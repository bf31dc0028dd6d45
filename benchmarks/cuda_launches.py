"""Kernel launches of `pgd`'s CUDA path, counted on a machine without a GPU.

    python -m benchmarks.cuda_launches [N K D] [--backward]

The solver runs the path it takes on CUDA (the torch round loop with the Triton kernels), on CPU
tensors, the kernels under Triton's interpreter; every aten op that is not a view counts as one
launch, each Triton kernel as one, and the interpreter's own tensor traffic not at all. What a GPU
would pay in launch overhead per certificate round, measurable where there is none (launch counts,
not times: a GPU session measures times with ``benchmarks/device_check.sh``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported

import argparse  # noqa: E402
import collections  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

# Ops that make a new view or alias of a tensor: no kernel on CUDA.
VIEWS = {"view", "slice", "select", "unsqueeze", "squeeze", "expand", "transpose", "t", "detach", "alias",
         "_unsafe_view", "as_strided", "permute", "reshape", "lift_fresh", "split", "unbind", "narrow"}


class _Launches(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.inside_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.inside_kernel and name not in VIEWS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


class _CountedKernel:
    """A Triton kernel whose launch counts once, and whose interpretation counts not at all."""

    def __init__(self, kernel, name: str, mode: _Launches):
        self.kernel, self.name, self.mode = kernel, name, mode

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def counted(*args, **kwargs):
            self.mode.ops[f"triton:{self.name}"] += 1
            self.mode.inside_kernel = True
            try:
                return launch(*args, **kwargs)
            finally:
                self.mode.inside_kernel = False

        return counted


def count(N: int, K: int, D: int, backward: bool = False, seed: int = 0) -> "tuple[collections.Counter, int]":
    """(launches by op, certificate rounds) of one `pgd` forward (and backward) on the CUDA path."""
    import scq
    from scq.solvers.engine import (active_set_triton, backward_triton, certificate_triton, fista_triton, fused,
                                    round_triton)

    mode = _Launches()
    # Each launcher's kernel slots (module global, getter, name counted).
    slots = [(fista_triton, "_KERNEL", fista_triton._kernel, "fista"),
             (active_set_triton, "_KERNEL", active_set_triton._kernel, "active_set"),
             (round_triton, "_KERNEL", round_triton._kernel, "round"),
             (round_triton, "_SCORES_KERNEL", round_triton._scores_kernel, "entering_scores"),
             (round_triton, "_END_KERNEL", round_triton._end_kernel, "end_of_round"),
             (backward_triton, "_KERNEL", backward_triton._kernel, "backward"),
             (certificate_triton, "_KERNEL", certificate_triton._kernel, "certificate")]
    saved = fused.backend, [getattr(module, slot) for module, slot, _, _ in slots]
    fused.backend = lambda H: "triton" if H.dtype in (torch.float32, torch.float64) else None
    for module, slot, getter, name in slots:
        setattr(module, slot, _CountedKernel(getter(), name, mode))
    try:
        g = torch.Generator().manual_seed(seed)
        E = torch.randn(K, D, generator=g)
        x = torch.randn(N, D, generator=g)
        q = scq.SCQ(D, K, lam=0.1, method="pgd")
        with torch.no_grad():
            q.codebook.copy_(E)
        with mode:
            out = q(x.clone().requires_grad_(backward))
            if backward:
                (out.quantized.square().sum() + out.loss).backward()
        return mode.ops, q.last_info.extra["rounds"]
    finally:
        fused.backend = saved[0]
        for (module, slot, _, _), kernel in zip(slots, saved[1]):
            setattr(module, slot, kernel)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[64, 32, 8], help="N K D (default 64 32 8)")
    ap.add_argument("--backward", action="store_true", help="count the backward too")
    a = ap.parse_args(argv)
    if len(a.sizes) != 3:
        ap.error("give N K D")
    ops, rounds = count(*a.sizes)
    total = sum(ops.values())
    print(f"N, K, D = {tuple(a.sizes)}: forward {total} launches, {rounds} certificate rounds "
          f"(~{total / rounds:.0f} per round); the most frequent: "
          + ", ".join(f"{name} {n}" for name, n in ops.most_common(12)))
    if a.backward:  # the same forward again, then its backward: the difference
        both, _ = count(*a.sizes, backward=True)
        back = both - ops
        print(f"backward (the engine's and the layer's around it): {sum(back.values())} launches: "
              + ", ".join(f"{name} {n}" for name, n in back.most_common()))


if __name__ == "__main__":
    main()
