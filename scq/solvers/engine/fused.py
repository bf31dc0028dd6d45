"""Which compiled kernels run the engine's per-vector work, behind one switch.

The engine's small per-vector problems (FISTA's warm start, the active set, the backward's
support solve) are written as batched torch ops: the reference every kernel is tested against,
and what runs where no kernel applies. Where one does, the same arithmetic runs compiled:

- CUDA: Triton kernels (:mod:`~scq.solvers.engine.fista_triton`,
  :mod:`~scq.solvers.engine.active_set_triton`), m ≤ ``fista_triton.MAX_SLOTS``; one launch each,
  no host sync. The backward stays torch (a handful of launches, no sync).
- CPU: Numba loops over rows (:mod:`~scq.solvers.engine.cpu_kernels`), any m, the backward too.

Each entry point returns ``None`` when its caller should take the torch path: no kernel for these
tensors, kernels switched off (``ENABLED``), or a kernel that failed to compile or run, after which
a warning is given once and every later call takes the torch path.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from typing import Optional

import torch

from . import fista_triton
from .active_set import DEGENERATE_SLACK, ActiveSetResult

# The one switch of every kernel. False: the torch path everywhere (to compare the two, e.g. in
# the ablation; set by ``disable`` after a failure).
ENABLED = True


@functools.lru_cache(maxsize=None)
def cpu_available() -> bool:
    """Numba is installed (looked up once: this is asked on every solve round)."""
    return importlib.util.find_spec("numba") is not None


def backend(H: torch.Tensor) -> Optional[str]:
    """``"triton"``, ``"cpu"`` or ``None`` (the torch path) for systems ``H`` (N, m, m)."""
    if not ENABLED or H.dtype not in (torch.float32, torch.float64):
        return None
    if H.is_cuda:
        return "triton" if fista_triton.fits(H) else None
    if H.device.type == "cpu" and cpu_available():
        return "cpu"
    return None


def disable(kernel: str, err: BaseException) -> None:
    """A kernel failed to compile or run (a Triton, Numba or driver version this code was not tried
    on): say so once, and let every later call take the torch path."""
    global ENABLED
    ENABLED = False
    warnings.warn(f"scq: the fused {kernel} kernel failed ({type(err).__name__}: {err}); the solver "
                  f"falls back to its torch path (correct, slower)", RuntimeWarning, stacklevel=3)


def _chosen(H: torch.Tensor) -> Optional[str]:
    # ENABLED is read here too, so that a test that forces ``backend`` still sees a disable().
    return backend(H) if ENABLED else None


def _numpy(t: torch.Tensor):
    return t.detach().contiguous().numpy()


def _cpu():
    """The Numba kernels, on as many threads as torch's intra-op pool (one inside ``one_thread``)."""
    import numba

    from . import cpu_kernels

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return cpu_kernels


def fista(H, b, u0, valid, step, beta, *, simplex: bool, n_iter: int) -> Optional[torch.Tensor]:
    """FISTA's ``n_iter`` steps per row (see :func:`scq.solvers.engine.fista.fista`), or ``None``."""
    kind = _chosen(H)
    if kind is None:
        return None
    try:
        if kind == "triton":
            return fista_triton.fista_fused(H, b, u0, valid, step, beta, simplex=simplex, n_iter=n_iter)
        N = b.shape[0]
        out = _cpu().fista_rows(_numpy(H), _numpy(b), _numpy(u0), _numpy(valid), _numpy(step.reshape(N).to(H.dtype)),
                                _numpy(beta.reshape(N).to(H.dtype)), int(n_iter), bool(simplex))
        return torch.from_numpy(out)
    except Exception as err:  # noqa: BLE001 - any compile/launch failure: the torch path
        disable("FISTA", err)
        return None


def active_set(H, b, weights, support, valid, dual_tol, *, simplex: bool, max_support: Optional[int],
               max_iter: int) -> Optional[ActiveSetResult]:
    """The active-set solve of :func:`scq.solvers.engine.active_set.solve_active_set`, each row run
    until its own row is done, or ``None``. ``iterations``: the most any row ran (a 0-d tensor on
    CUDA, so that reading it costs no sync of its own)."""
    kind = _chosen(H)
    if kind is None:
        return None
    try:
        if kind == "triton":
            from .active_set_triton import solve_active_set_fused

            return solve_active_set_fused(H, b, weights, support, valid, dual_tol, simplex=simplex,
                                          max_support=max_support, max_iter=max_iter)
        finfo = torch.finfo(b.dtype)
        N = b.shape[0]
        p, s, nu, res, state = _cpu().active_set_rows(
            _numpy(H), _numpy(b), _numpy(weights), _numpy(support), _numpy(valid), _numpy(dual_tol.reshape(N).to(b.dtype)),
            int(max_iter), -1 if max_support is None else int(max_support), bool(simplex),
            16 * finfo.eps, finfo.tiny, DEGENERATE_SLACK)
        iterations = int(state.max() >> 2) if N else 0  # numpy: no torch scalar read (a sync on other devices)
        state = torch.from_numpy(state)
        done, broken = (state & 1) != 0, (state & 2) != 0
        return ActiveSetResult(torch.from_numpy(p), torch.from_numpy(s), torch.from_numpy(nu), done & ~broken,
                               iterations, torch.from_numpy(res), broken)
    except Exception as err:  # noqa: BLE001
        disable("active-set", err)
        return None


def backward(z, E, code, sign, u, support, grad_u, *, ridge: float, simplex: bool, signed: bool, need_E: bool,
             sys_dtype: torch.dtype):
    """The engine's backward on the CPU (:func:`scq.solvers.engine.cpu_kernels.backward_rows`):
    ``(v, ∂z, ∂E or None)``, or ``None`` (the torch path)."""
    if _chosen(u.unsqueeze(-1)) != "cpu":
        return None
    try:
        import numba

        blocks = numba.get_num_threads() if need_E else 1
        sign = sign if signed else torch.ones_like(u)
        v, gz, gE = _cpu().backward_rows(_numpy(z), _numpy(E), _numpy(code), _numpy(sign), _numpy(u), _numpy(support),
                                         _numpy(grad_u.to(sys_dtype)), float(ridge), bool(simplex), bool(need_E),
                                         int(blocks))
        return torch.from_numpy(v), torch.from_numpy(gz), torch.from_numpy(gE).sum(0) if need_E else None
    except Exception as err:  # noqa: BLE001
        disable("backward", err)
        return None


def combine(values, codebook, indices) -> Optional[torch.Tensor]:
    """Σ_j values[n, j]·codebook[indices[n, j]] (N, D) on the CPU, skipping zero weights, or ``None``."""
    if values.dtype != codebook.dtype or _chosen(codebook.unsqueeze(0)) != "cpu":
        return None
    try:
        return torch.from_numpy(_cpu().combine_rows(_numpy(values), _numpy(codebook), _numpy(indices)))
    except Exception as err:  # noqa: BLE001
        disable("combine", err)
        return None


def combine_backward(values, codebook, indices, grad, *, need_values: bool, need_codebook: bool):
    """The backward of :func:`combine`: ``(∂values or None, ∂codebook or None)``, or ``None``."""
    if values.dtype != codebook.dtype or _chosen(codebook.unsqueeze(0)) != "cpu":
        return None
    try:
        import numba

        blocks = numba.get_num_threads() if need_codebook else 1
        gv, gE = _cpu().combine_backward_rows(_numpy(values), _numpy(codebook), _numpy(indices),
                                              _numpy(grad.to(codebook.dtype)), bool(need_values),
                                              bool(need_codebook), int(blocks))
        return (torch.from_numpy(gv) if need_values else None,
                torch.from_numpy(gE).sum(0) if need_codebook else None)
    except Exception as err:  # noqa: BLE001
        disable("combine", err)
        return None


def gram(E, code, sign, z, *, ridge: float, sys_dtype: torch.dtype):
    """The round's systems on the CPU from the codes in place: ``(H, Cz)`` with H = CCᵀ + ρI in
    ``sys_dtype``, or ``None``."""
    if _chosen(E.unsqueeze(0)) != "cpu":
        return None
    try:
        H, cz = _cpu().gram_rows(_numpy(E.to(sys_dtype)), _numpy(code), _numpy(sign.to(sys_dtype)),
                                 _numpy(z.to(sys_dtype)), float(ridge), torch.empty(0, dtype=sys_dtype).numpy())
        return torch.from_numpy(H), torch.from_numpy(cz)
    except Exception as err:  # noqa: BLE001
        disable("Gram", err)
        return None


def scq_certificate(G, p, nearest, target, lam: float, scale):
    """The SCQ certificate's per-row pass on the CPU (see
    :func:`scq.solvers.engine.cpu_kernels.scq_certificate_rows`): four (N,) tensors, or ``None``."""
    if p.dtype != G.dtype or _chosen(G.unsqueeze(0)) != "cpu":
        return None
    try:
        empty = G.new_zeros(0, 0)
        out = _cpu().scq_certificate_rows(
            _numpy(G), _numpy(p), _numpy(nearest if nearest is not None else torch.zeros(0, dtype=torch.long)),
            _numpy(empty if target is None else target.to(G.dtype)), float(lam), _numpy(scale.to(G.dtype)))
        return tuple(torch.from_numpy(t) for t in out)
    except Exception as err:  # noqa: BLE001
        disable("certificate", err)
        return None


def entering(G, code, sign, valid, n_add: int, *, signed: bool):
    """The most violating codes outside each row's working set on the CPU (see
    :func:`scq.solvers.engine.cpu_kernels.entering_rows`): ``(scores, codes, signs)``, or ``None``."""
    if _chosen(G.unsqueeze(0)) != "cpu":
        return None
    try:
        out = _cpu().entering_rows(_numpy(G), _numpy(code), _numpy(sign.to(G.dtype)), _numpy(valid), int(n_add),
                                   bool(signed))
        return tuple(torch.from_numpy(t) for t in out)
    except Exception as err:  # noqa: BLE001
        disable("entering-codes", err)
        return None
