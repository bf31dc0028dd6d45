"""Which compiled kernels run the engine's per-vector work, behind one switch.

The engine's small per-vector problems (FISTA's warm start, the active set, the backward's
support solve) are written as batched torch ops: the reference every kernel is tested against,
and what runs where no kernel applies. Where one does, the same arithmetic runs compiled:

- CUDA: Triton kernels (:mod:`~scq.solvers.engine.triton_kernels`), m ≤ ``triton_launch.MAX_SLOTS``,
  no host sync: a round in three launches, the state kept in place
  (:mod:`~scq.solvers.engine.round_triton`, run by ``working_set._rounds_on_triton``: the work on
  W, the entering scores, the verdict and next W; :func:`triton_takes` says where), or where the
  support is capped (the lasso without a ridge) FISTA and the active set one launch each
  (:mod:`~scq.solvers.engine.fista_triton`, :mod:`~scq.solvers.engine.active_set_triton`); the
  backward in one launch (:mod:`~scq.solvers.engine.backward_triton`), and the SCQ certificate's
  pass (:mod:`~scq.solvers.engine.certificate_triton`).
- CPU: Numba loops over rows (:mod:`~scq.solvers.engine.cpu_kernels`), any m: a certificate
  round in three loops (:func:`round_kernels`: the work on W, Gram matrix read from the codebook's
  EEᵀ (where K ≤ N, or K ≤ 4N and K ≤ 1024) or made with :class:`GramCache`, FISTA, active set,
  z_q; the entering codes and the round's verdict; the next W), the nearest codes, the entering
  codes, the backward, the sparse combine, the SCQ certificate, and each step alone (the
  step-by-step path, used where the support is capped); the rows are split into as many ranges
  as torch has intra-op threads, one per thread of Numba's pool. Numba compiles them on first use
  (about a minute on 2 cores, once per machine; cached on disk after).

Each entry point returns ``None`` when its caller should take the torch path: no kernel for these
tensors, kernels switched off (``ENABLED``), or a kernel that failed to compile or run, after which
a warning is given once and every later call takes the torch path.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import warnings
from typing import Optional

import numpy as np
import torch

from ..._validation import transformed
from . import blocks, fista_triton, triton_launch
from .active_set import DEGENERATE_SLACK, ActiveSetResult

# The one switch of every kernel. False: the torch path everywhere (to compare the two, e.g. in
# the ablation; set by ``disable`` after a failure).
ENABLED = True


@functools.lru_cache(maxsize=None)
def cpu_available() -> bool:
    """Numba is installed (looked up once: this is asked on every solve round)."""
    return importlib.util.find_spec("numba") is not None


def backend(H: torch.Tensor) -> Optional[str]:
    """``"triton"``, ``"cpu"`` or ``None`` (the torch path) for systems ``H`` (N, m, m) (on the CPU
    only the device and dtype count: any tensor of the call may be asked about)."""
    if not ENABLED or H.dtype not in (torch.float32, torch.float64):
        return None
    if H.is_cuda:
        return "triton" if triton_launch.fits(H) else None
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
    # A torch.func transform's tensors have no storage for a kernel: their work takes the torch
    # path. (Inside the engine's autograd Function the tensors are plain: the solve runs compiled.)
    return backend(H) if ENABLED and not transformed(H) else None


def _numpy(t: torch.Tensor):
    return t.detach().contiguous().numpy()


def _kernels():
    from . import cpu_kernels

    _compile_notice(cpu_kernels)
    return cpu_kernels


@functools.lru_cache(maxsize=None)  # once per process
def _compile_notice(kernels) -> None:
    """Say that the kernels are about to compile where Numba's on-disk cache has none of them (the
    first use on a machine, or after an upgrade): the first call then takes 1–2 minutes on 2 cores,
    which without a word looks like a hang. Read through Numba's private cache API; where that
    fails, nothing is said."""
    try:
        cached = any(f._cache._cache_file._load_index() for f in vars(kernels).values() if hasattr(f, "_cache"))
    except Exception:  # noqa: BLE001 - another Numba version: no notice, nothing else changes
        return
    if not cached:
        logging.getLogger("scq").warning(
            "scq: compiling the CPU kernels with Numba (first use here: 1-2 minutes on 2 cores, cached on disk after; "
            "`scq compile` does it ahead of time)")


# Below this many rows per thread, one thread does the work: splitting costs more than it saves.
ROWS_PER_THREAD = 64


def _bounds(N: int) -> np.ndarray:
    """Edges of the row ranges, one range per thread: torch's intra-op thread count (1 inside
    ``threads.one_thread``), and Numba's pool set to match."""
    import numba

    threads = torch.get_num_threads()
    T = max(1, min(threads, numba.config.NUMBA_NUM_THREADS, N // ROWS_PER_THREAD))
    numba.set_num_threads(T)
    if torch.get_num_threads() != threads:
        # Numba's first parallel call starts its OpenMP pool, which sets the process's OpenMP
        # thread count (torch's too, one libgomp) to every core: a process that asked torch for
        # one thread (a DataLoader worker, one of several training processes on a machine) ran on
        # all of them after its first solve. Put back what the caller had.
        torch.set_num_threads(threads)
    return np.array([N * t // T for t in range(T + 1)], dtype=np.int64)


def _attempt(kernel: str, body):
    """``body()``, or ``None`` after a failure (warned once; every later call takes the torch path)."""
    try:
        return body()
    except Exception as err:  # noqa: BLE001 - any compile/launch failure: the torch path
        disable(kernel, err)
        return None


def _on_cpu(kernel: str, tensors, body):
    """``body(kernels)`` where the CPU kernels serve ``tensors`` (CPU, one float dtype, kernels on),
    else ``None``: the caller's torch path."""
    first = tensors[0]
    if _chosen(first) != "cpu" or any(t.dtype != first.dtype for t in tensors[1:]) or transformed(*tensors[1:]):
        return None
    return _attempt(kernel, lambda: body(_kernels()))


def fista(H, b, u0, valid, step, beta, *, simplex: bool, n_iter: int) -> Optional[torch.Tensor]:
    """FISTA's ``n_iter`` steps per row (see :func:`scq.solvers.engine.fista.fista`), or ``None``."""
    if _chosen(H) == "triton":
        return _attempt("FISTA", lambda: fista_triton.fista_fused(H, b, u0, valid, step, beta, simplex=simplex,
                                                                  n_iter=n_iter))

    def run(k):
        N = b.shape[0]
        out = torch.empty_like(u0)
        k.fista_par(_numpy(H), _numpy(b), _numpy(u0), _numpy(valid), _numpy(step.reshape(N).to(H.dtype)),
                    _numpy(beta.reshape(N).to(H.dtype)), int(n_iter), bool(simplex), out.numpy(), _bounds(N))
        return out

    return _on_cpu("FISTA", (H,), run)


def active_set(H, b, weights, support, valid, dual_tol, *, simplex: bool, max_support: Optional[int],
               max_iter: int, refine=None) -> Optional[ActiveSetResult]:
    """The active-set solve of :func:`scq.solvers.engine.active_set.solve_active_set`, each row run
    until its own row is done, or ``None``. ``iterations``: the most any row ran (a 0-d tensor on
    CUDA, so that reading it costs no sync of its own). ``refine`` (an
    :class:`~scq.solvers.engine.active_set_triton.Refinement`): the Triton kernel also refines the
    finished rows once (the result says ``refined``); the CPU's leaves that to the caller."""
    if _chosen(H) == "triton":
        from .active_set_triton import solve_active_set_fused

        return _attempt("active-set", lambda: solve_active_set_fused(
            H, b, weights, support, valid, dual_tol, simplex=simplex, max_support=max_support, max_iter=max_iter,
            refine=refine))

    def run(k):
        finfo = torch.finfo(b.dtype)
        N = b.shape[0]
        p, s = weights.detach().to(b.dtype).clone(), support.clone()
        nu, res = b.new_zeros(N), b.new_zeros(N)
        state = torch.zeros(N, dtype=torch.int32)
        k.active_set_par(_numpy(H), _numpy(b), p.numpy(), s.numpy(), _numpy(valid),
                         _numpy(dual_tol.reshape(N).to(b.dtype)), int(max_iter),
                         -1 if max_support is None else int(max_support), bool(simplex), 16 * finfo.eps, finfo.tiny,
                         DEGENERATE_SLACK, nu.numpy(), res.numpy(), state.numpy(), _bounds(N))
        iterations = int(state.numpy().max() >> 2) if N else 0  # numpy: no torch scalar read
        done, broken = (state & 1) != 0, (state & 2) != 0
        return ActiveSetResult(p, s, nu, done & ~broken, iterations, res, broken)

    return _on_cpu("active-set", (H,), run)


def triton_takes(m: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the Triton kernels take systems of m slots in ``dtype`` on ``device`` (asked through
    :func:`backend`, which tests may force, with an empty stand-in: no launch)."""
    return _chosen(torch.empty((0, m, m), dtype=dtype, device=device)) == "triton"


def entering_scores(G, code, sign, valid, extra, start, *, bonus: float, signed: bool):
    """The round's entering scores from its gradients in one Triton launch
    (:func:`scq.solvers.engine.round_triton.entering_scores`), or ``None``."""
    if not triton_takes(code.shape[1], G.dtype, G.device):
        return None
    from .round_triton import entering_scores as fused_scores

    return _attempt("entering-scores", lambda: fused_scores(G, code, sign, valid, extra, start, bonus=bonus,
                                                             signed=signed))


def _per_range_buffers(bounds: np.ndarray, shape, need: bool, dtype) -> torch.Tensor:
    """One zeroed ``shape`` buffer per row range (no two threads add into one code's row), summed
    by the caller; empty ones when the gradient is not needed."""
    return torch.zeros((len(bounds) - 1,) + (tuple(shape) if need else (0, 0)), dtype=dtype)


def backward(z, E, code, sign, u, support, grad_u, *, ridge: float, simplex: bool, signed: bool, need_E: bool,
             sys_dtype: torch.dtype, table: Optional[torch.Tensor] = None):
    """The engine's backward, compiled: ``(v, ∂z, ∂E or None)``, or ``None`` (the torch path). On
    CUDA one Triton launch (:func:`scq.solvers.engine.backward_triton.backward`; not under
    ``torch.use_deterministic_algorithms``, its ∂E being summed by atomics); on the CPU
    :func:`scq.solvers.engine.cpu_kernels.backward_rows`, with ``table``, the forward's codebook Gram
    matrix EEᵀ (K, K) in ``sys_dtype`` where it had one: the supports' products are read from it."""
    if transformed(z, E, u, grad_u):
        return None
    if triton_takes(code.shape[1], sys_dtype, z.device):
        if torch.are_deterministic_algorithms_enabled() or E.dtype != z.dtype:
            return None
        from .backward_triton import backward as fused_backward

        # (``sign`` as it is: an unsigned problem's are ones, which the forward never flips)
        return _attempt("backward", lambda: fused_backward(z.detach(), E.detach(), code, sign.detach(), u.detach(),
                                                           support, grad_u, ridge=ridge, simplex=simplex,
                                                           need_E=need_E))

    def run(k):
        gram_table = table if table is not None else torch.zeros(0, 0, dtype=sys_dtype)
        bounds = _bounds(u.shape[0])
        v = torch.zeros(u.shape, dtype=sys_dtype)
        gz = torch.zeros_like(z)
        gE = _per_range_buffers(bounds, E.shape, need_E, z.dtype)
        k.backward_par(_numpy(z), _numpy(E), _numpy(gram_table), _numpy(code),
                       _numpy(sign if signed else torch.ones_like(u)), _numpy(u),
                       _numpy(support), _numpy(grad_u.to(sys_dtype)), float(ridge), bool(simplex), bool(need_E),
                       v.numpy(), gz.numpy(), gE.numpy(), bounds)
        return v, gz, gE.sum(0) if need_E else None

    return _on_cpu("backward", (z, E, u), run)


def combine(values, codebook, indices) -> Optional[torch.Tensor]:
    """Σ_j values[n, j]·codebook[indices[n, j]] (N, D) on the CPU, skipping zero weights, or ``None``."""

    def run(k):
        out = torch.zeros(values.shape[0], codebook.shape[1], dtype=codebook.dtype)
        k.combine_par(_numpy(values), _numpy(codebook), _numpy(indices), out.numpy(), _bounds(values.shape[0]))
        return out

    return _on_cpu("combine", (codebook, values), run)


def combine_backward(values, codebook, indices, grad, *, need_values: bool, need_codebook: bool):
    """The backward of :func:`combine`: ``(∂values or None, ∂codebook or None)``, or ``None``."""

    def run(k):
        bounds = _bounds(values.shape[0])
        gv = torch.zeros(values.shape if need_values else (0, values.shape[1]), dtype=values.dtype)
        gE = _per_range_buffers(bounds, codebook.shape, need_codebook, codebook.dtype)
        k.combine_backward_par(_numpy(values), _numpy(codebook), _numpy(indices), _numpy(grad.to(codebook.dtype)),
                               bool(need_values), bool(need_codebook), gv.numpy(), gE.numpy(), bounds)
        return gv if need_values else None, gE.sum(0) if need_codebook else None

    return _on_cpu("combine", (codebook, values), run)


class GramCache:
    """The products e_aᵀe_b and e_aᵀz of each row's last working set (the whole batch's rows), so
    that the next round's Gram matrices compute only the codes that entered: see
    :func:`scq.solvers.engine.cpu_kernels.gram_rows`. Empty until the first round.

    Each row's products are its lower triangle, packed: (N, m(m+1)/2), the pair (a, c ≤ a) at
    a(a+1)/2 + c. ``max_width``: the widest W it keeps products for (``None``: any); past it the
    cache keeps none (width 0) and the rounds compute every product (see :meth:`within`)."""

    def __init__(self, N: int, dtype: torch.dtype, max_width: Optional[int] = None):
        self.N, self.dtype, self.max_width = N, dtype, max_width
        self.gram = torch.zeros(N, 0, dtype=dtype)
        self.ez = torch.zeros(N, 0, dtype=dtype)
        self.code = torch.full((N, 0), -1, dtype=torch.long)

    @classmethod
    def within(cls, N: int, K: int, dtype: torch.dtype, budget_dtype: Optional[torch.dtype] = None) -> "GramCache":
        """A cache that never holds more than one (N, K) buffer of ``budget_dtype`` (the inputs',
        the gradients' GEMM's; default ``dtype``): a round that widens W holds the last round's
        products and its own, so each may take half, m(m+1)/2 entries of ``dtype`` a row. In
        float32 that keeps W up to about √K slots; float64 systems of float32 inputs, √(K/2).
        (Sized for one (N, K) buffer each, the lasso with supports of D = 64 at K = 10000 held
        two 1.7-buffer caches of float64 products at once, for 5% of its time.) Nor, past the
        block budget (:mod:`.blocks`), more than one block's buffer: the cache is O(N·m²) with
        m capped, not O(N·K)."""
        K = min(K, blocks.entries_per_row(N))
        budget = K * (budget_dtype or dtype).itemsize // (2 * dtype.itemsize)  # entries a row, each copy
        return cls(N, dtype, max_width=(math.isqrt(8 * budget + 1) - 1) // 2)

    def slots(self, m: int) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
        """Where this round writes: the same buffers, or wider ones when W grew (rows not written
        this round are finished and never read again); width 0 past ``max_width``."""
        if self.max_width is not None and m > self.max_width:
            m = 0
        if self.code.shape[1] == m:
            return self.gram, self.ez, self.code
        return (torch.empty(self.N, m * (m + 1) // 2, dtype=self.dtype), torch.empty(self.N, m, dtype=self.dtype),
                torch.full((self.N, m), -1, dtype=torch.long))

    def exchange(self, n: int, m: int, rows: Optional[torch.Tensor], launch) -> None:
        """``launch(rows, old gram, ez, code, new gram, ez, code)`` as a kernel takes them (``rows``:
        the cache row of each of the ``n`` rows, ``None``: all), then keep what it wrote."""
        new = self.slots(m)
        where = torch.arange(n) if rows is None else rows
        launch(*(_numpy(t) for t in (where, self.gram, self.ez, self.code)), *(t.numpy() for t in new))
        self.gram, self.ez, self.code = new


def gram(E, code, sign, z, *, ridge: float, sys_dtype: torch.dtype, cache: Optional[GramCache] = None,
         rows: Optional[torch.Tensor] = None):
    """The round's systems on the CPU from the codes in place: ``(H, Cz)`` with H = CCᵀ + ρI in
    ``sys_dtype``, or ``None``. With a ``cache`` (of ``sys_dtype``), the products of codes each
    row (``rows``: their indices in the cache's batch, ``None``: all) had in the last round are
    reused, and this round's are kept for the next."""

    def run(k):
        N, m = code.shape
        H = torch.empty(N, m, m, dtype=sys_dtype)
        cz = torch.empty(N, m, dtype=sys_dtype)
        c = cache if cache is not None else GramCache(N, sys_dtype)
        c.exchange(N, m, rows, lambda *cached: k.gram_par(
            _numpy(E.to(sys_dtype)), _numpy(code), _numpy(sign.to(sys_dtype)), _numpy(z.to(sys_dtype)), float(ridge),
            *cached, H.numpy(), cz.numpy(), _bounds(N)))
        return H, cz

    return _on_cpu("Gram", (E,), run)


# The round kernel's warm start stops once the support has held this many FISTA steps (0: never
# early). Finding the support is its job; the active set polishes the weights either way.
FISTA_PATIENCE = 3


def round_kernels(z: torch.Tensor):
    """The CPU kernels that run the engine's certificate rounds whole
    (:func:`scq.solvers.engine.cpu_kernels.round_rows`, ``finish_rows``, ``place_rows``: the
    loop in :func:`scq.solvers.engine.working_set._rounds_on_cpu`), or ``None`` (the torch path:
    not a CPU float tensor, or kernels off)."""
    return _kernels() if _chosen(z) == "cpu" else None


def row_ranges(n: int) -> np.ndarray:
    """The edges of the row ranges a CPU kernel splits ``n`` rows into, one per thread."""
    return _bounds(n)


def attempt(kernel: str, body):
    """``body()``, or ``None`` after a kernel failure (warned once; later calls take the torch path)."""
    return _attempt(kernel, body)


def scq_certificate(G, p, nearest, target, lam: float, scale):
    """The SCQ certificate's per-row pass, compiled: four (N,) tensors, or ``None``. On CUDA one
    Triton launch (:func:`scq.solvers.engine.certificate_triton.scq_certificate`), on the CPU
    :func:`scq.solvers.engine.cpu_kernels.scq_certificate_rows`."""
    if triton_takes(1, G.dtype, G.device) and not transformed(G, p, nearest, target, scale):
        from .certificate_triton import scq_certificate as fused_certificate

        return _attempt("certificate", lambda: fused_certificate(G, p, nearest, target, lam, scale))

    def run(k):
        N = G.shape[0]
        out = [torch.empty(N, dtype=G.dtype) for _ in range(4)]
        k.scq_certificate_par(_numpy(G), _numpy(p),
                              _numpy(nearest if nearest is not None else torch.zeros(0, dtype=torch.long)),
                              _numpy(G.new_zeros(0, 0) if target is None else target.to(G.dtype)), float(lam),
                              _numpy(scale.to(G.dtype)), *(t.numpy() for t in out), _bounds(N))
        return tuple(out)

    return _on_cpu("certificate", (G, p), run)


def lasso_certificate(G, w, scale, alpha: float, ridge: float, nonneg: bool):
    """The lasso certificate's per-row sweep on the CPU
    (:func:`scq.solvers.engine.cpu_kernels.lasso_certificate_rows`): (residual, ‖g‖∞, Σ|w|, Σw²,
    Σw·g), five (N,) tensors, or ``None`` (CUDA, kernels off: the torch path). ``w``: dense (N, K), or
    ``SparseWeights``, read as they are (no (N, K) tensor made of them)."""
    sparse = not isinstance(w, torch.Tensor)
    values = w.values.detach() if sparse else w

    def run(k):
        N, K = G.shape
        out = [torch.empty(N, dtype=G.dtype) for _ in range(5)]
        if sparse:
            dense, idx, val = np.zeros((0, K), dtype=_numpy(G).dtype), _numpy(w.indices), _numpy(values)
        else:
            dense, idx, val = _numpy(w), np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=_numpy(G).dtype)
        k.lasso_certificate_par(_numpy(G), dense, idx, val, _numpy(scale.to(G.dtype)), float(alpha), float(ridge),
                                bool(nonneg), *(t.numpy() for t in out), _bounds(N))
        return tuple(out)

    return _on_cpu("certificate", (G, values), run)


def nearest(scores, codebook):
    """:func:`scq.problems.nearest_code` on the CPU in one pass
    (:func:`scq.solvers.engine.cpu_kernels.nearest_rows`), or ``None``."""

    def run(k):
        out = torch.empty(scores.shape[0], dtype=torch.long)
        sq_norms = (codebook * codebook).sum(-1)  # as nearest_code computes them
        k.nearest_par(_numpy(scores), _numpy(sq_norms), out.numpy(), _bounds(scores.shape[0]))
        return out

    return _on_cpu("nearest-code", (scores, codebook), run)


def entering(G, code, sign, valid, n_add: int, *, signed: bool):
    """The most violating codes outside each row's working set on the CPU (see
    :func:`scq.solvers.engine.cpu_kernels.entering_rows`): ``(scores, codes, signs)``, or ``None``."""

    def run(k):
        N = G.shape[0]
        score = torch.empty(N, n_add, dtype=G.dtype)
        codes = torch.zeros(N, n_add, dtype=torch.long)
        signs = torch.ones(N, n_add, dtype=G.dtype)
        k.entering_par(_numpy(G), _numpy(code), _numpy(sign.to(G.dtype)), _numpy(valid), bool(signed), score.numpy(),
                       codes.numpy(), signs.numpy(), _bounds(N))
        return score, codes, signs

    return _on_cpu("entering-codes", (G,), run)


def table_entering(table, scores, extra, start, bonus: float, u, code, sign, valid, n_add: int, *, signed: bool):
    """:func:`entering` at the weights ``u`` on W, the gradients made row by row from the codebook's
    Gram matrix ``table`` = EEᵀ and ``scores`` = ZEᵀ (see
    :func:`scq.solvers.engine.cpu_kernels.table_entering_rows`), without an (N, K) G:
    ``(scores, codes, signs)``, or ``None``."""

    def run(k):
        N = scores.shape[0]
        dtype = table.dtype
        score = torch.empty(N, n_add, dtype=dtype)
        codes = torch.zeros(N, n_add, dtype=torch.long)
        signs = torch.ones(N, n_add, dtype=dtype)
        k.table_entering_par(_numpy(table), _numpy(scores), _numpy(extra.to(dtype) if extra is not None else
                                                                  torch.zeros(0, 0, dtype=dtype)),
                             _numpy(start if start is not None else torch.zeros(0, dtype=torch.long)), float(bonus),
                             _numpy(u.to(dtype)), _numpy(code), _numpy(sign.to(dtype)), _numpy(valid), bool(signed),
                             score.numpy(), codes.numpy(), signs.numpy(), _bounds(N))
        return score, codes, signs

    return _on_cpu("entering-codes", (table, scores), run)
