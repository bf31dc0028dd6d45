"""The numeric engine behind the fast exact solvers (SCQ's ``pgd`` and the lasso's ``pgd``).

- :mod:`.working_set`: the outer loop: a working set of codes grown from the KKT certificate over
  all K codes, and the autograd Function whose backward solves the KKT system on the support.
- :mod:`.active_set`: the exact batched active-set method on the working set (small dense QPs).
- :mod:`.fista`: accelerated projected gradient on the working set, the active set's warm start.
- :mod:`.blocks`: the row blocks the passes over all K codes run in past a memory budget.
- :mod:`.fused`: which compiled kernels run that per-vector work (one switch): Numba on the CPU
  (:mod:`.cpu_kernels`), Triton on CUDA (:mod:`.triton_kernels`, launched by :mod:`.round_triton`,
  :mod:`.backward_triton`, :mod:`.certificate_triton`, :mod:`.fista_triton`,
  :mod:`.active_set_triton`, which share :mod:`.triton_launch`); the torch code above is their
  reference and the fallback.

Methods call :func:`.working_set.solve` with a :class:`.working_set.QPForm` saying which QP.
"""

from .working_set import Options, QPForm, solve

__all__ = ["Options", "QPForm", "solve"]
