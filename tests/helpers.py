"""Test helpers: dtype-aware tolerances and small random SCQ problems."""

from __future__ import annotations

import numpy as np
import torch

# Agreement expected between two correct float results of one problem, per dtype.
ATOL = {torch.float64: 1e-8, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float | None = None, msg: str = "") -> None:
    actual = actual.detach()
    expected = expected.detach().to(actual.device)
    tol = ATOL[actual.dtype] if atol is None else atol
    err = (actual.to(torch.float64) - expected.to(torch.float64)).abs().max().item() if actual.numel() else 0.0
    assert err <= tol, f"{msg} max abs error {err:.3e} > {tol:.1e}"


def problem(N=8, K=16, D=4, dtype=torch.float64, seed=0, scale=1.5, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    E = torch.randn(K, D, dtype=torch.float64, generator=gen)
    z = scale * torch.randn(N, D, dtype=torch.float64, generator=gen)
    return z.to(device, dtype), E.to(device, dtype)


def on_simplex(w: torch.Tensor, atol: float) -> bool:
    return bool((w >= -atol).all()) and bool(((w.sum(-1) - 1).abs() <= atol).all())


def numpy_projection(u: np.ndarray) -> np.ndarray:
    """Simplex projection by Duchi et al. 2008, one row at a time: an independent reference."""
    out = np.empty_like(u)
    for i, row in enumerate(u):
        srt = np.sort(row)[::-1]
        css = np.cumsum(srt) - 1
        rho = np.nonzero(srt * np.arange(1, len(row) + 1) > css)[0][-1]
        out[i] = np.maximum(row - css[rho] / (rho + 1), 0)
    return out


def numpy_relaxed(z: np.ndarray, E: np.ndarray, lam: float, target: np.ndarray) -> np.ndarray:
    """The SCQ paper's Algorithm 2 as written: p_u = (EEᵀ + λI)⁻¹(Ez + λp̃), then Π_Δ."""
    H = E @ E.T + lam * np.eye(E.shape[0])
    p_u = np.linalg.solve(H, (z @ E.T + lam * target).T).T
    return numpy_projection(p_u)


def scq_kkt_violation(w: torch.Tensor, z: torch.Tensor, E: torch.Tensor, lam: float, target: torch.Tensor) -> float:
    """Largest violation of the SCQ optimality conditions (MATH.md §2), computed densely.

    With g = Hp − b and ν = −mean_S(g): stationarity on S (g_S + ν = 0), dual feasibility off S
    (g_k + ν ≥ 0), primal feasibility. Zero (to rounding) exactly at the unique solution.
    """
    w, z, E, target = (t.detach().double() for t in (w, z, E, target))
    g = (w @ E) @ E.T + lam * w - (z @ E.T + lam * target)
    S = w > 0
    nu = -(g * S).sum(-1, keepdim=True) / S.sum(-1, keepdim=True)
    mu = g + nu
    stationarity = (mu * S).abs().max()
    dual = (-mu * ~S).clamp_min(0).max()
    primal = max(float((-w).clamp_min(0).max()), float((w.sum(-1) - 1).abs().max()))
    return max(float(stationarity), float(dual), primal)


def lasso_kkt_violation(w: torch.Tensor, z: torch.Tensor, E: torch.Tensor, alpha: float, nonneg: bool) -> float:
    """Largest violation of the lasso's optimality conditions for argmin ½‖z − Eᵀw‖² + α‖w‖₁
    (w ≥ 0 if ``nonneg``), computed densely: with g = E(Eᵀw − z), g_k = −α·sign(w_k) on the
    support, |g_k| ≤ α off it (``nonneg``: g_k ≥ −α), and w ≥ 0 where asked."""
    w, z, E = (t.detach().double() for t in (w, z, E))
    g = (w @ E - z) @ E.T
    S = w != 0
    stationarity = ((g + alpha * torch.sign(w)) * S).abs().max()
    off = (-g - alpha) if nonneg else (g.abs() - alpha)
    dual = (off * ~S).clamp_min(0).max()
    primal = (-w).clamp_min(0).max() if nonneg else torch.zeros(())
    return max(float(stationarity), float(dual), float(primal))


# Ops that make the host wait for the device (on CUDA): `.item()`, `bool(t)`, `nonzero`, ...
SYNC_OPS = {"_local_scalar_dense", "nonzero", "is_nonzero", "item", "masked_select", "unique", "equal"}


def count_syncs(fn) -> int:
    """How many sync-forcing reads ``fn()`` makes (counted on any device): the aten ops above,
    and ``Tensor.tolist()``, which reads device memory without an aten op the dispatcher sees on
    the CPU (on CUDA it copies to the host and waits)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        syncs = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in SYNC_OPS:
                _Count.syncs += 1
            return func(*args, **(kwargs or {}))

    tolist = torch.Tensor.tolist

    def counted_tolist(self, *args, **kwargs):
        _Count.syncs += 1
        return tolist(self, *args, **kwargs)

    torch.Tensor.tolist = counted_tolist
    try:
        with _Count():
            fn()
    finally:
        torch.Tensor.tolist = tolist
    return _Count.syncs


def fresh_tensor_bytes(fn, min_numel: int) -> int:
    """The bytes of every tensor of ``min_numel`` elements or more that ``fn()``'s ops allocate
    (outputs that share no storage with their op's arguments: not in-place results, not an
    ``out=``), summed whether or not they are alive at once: a count of fresh (N, K) buffers,
    each of which costs its pages' faults on the CPU."""
    from torch.utils._pytree import tree_leaves
    from torch.utils._python_dispatch import TorchDispatchMode

    total = [0]

    class _Fresh(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.numel() >= min_numel and t.untyped_storage().data_ptr() not in given:
                    total[0] += t.untyped_storage().nbytes()
            return out

    with _Fresh():
        fn()
    return total[0]


def peak_tensor_bytes(fn) -> int:
    """The most bytes held at once, during ``fn()``, by the tensors its ops made (on any device;
    tensors made before it, its inputs, not counted): an exact count of what the RSS sampling of
    the runtime benchmark can only bound, for tests of an (N, K) buffer budget."""
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode

    live: dict = {}  # storage address -> (weak reference, bytes)
    peak = [0]

    class _Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    ptr = storage.data_ptr()
                    if ptr not in live or live[ptr][0].expired():  # (a view shares its base's storage)
                        live[ptr] = (StorageWeakRef(storage), storage.nbytes())
            for ptr in [p for p, (ref, _) in live.items() if ref.expired()]:
                del live[ptr]
            peak[0] = max(peak[0], sum(n for _, n in live.values()))
            return out

    with _Track():
        fn()
    return peak[0]


def small_qps(N: int, m: int, dtype: torch.dtype, simplex: bool, seed: int, b_scale: float = 1.0, rank: int = 6):
    """Random small QPs as the engine builds them, for the kernel tests: H = CCᵀ + 0.1·I (N, m, m),
    a linear term b, valid slots (slot 0 always: the start code) and a feasible start (slot 0 for
    the simplex, 0 otherwise). Returns H, b, valid, u0."""
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(N, m, rank, dtype=dtype, generator=g)
    H = C @ C.transpose(1, 2) + 0.1 * torch.eye(m, dtype=dtype)
    b = b_scale * torch.randn(N, m, dtype=dtype, generator=g)
    valid = torch.rand(N, m, generator=g) < 0.85
    valid[:, 0] = True
    u0 = torch.zeros(N, m, dtype=dtype)
    if simplex:
        u0[:, 0] = 1
    return H, b, valid, u0
