"""The quantizers the runtime benchmark times, each as ``build(N, K, D, device, dtype) -> step``.

``step(z)`` runs forward (and backward, when asked) on a batch ``z (N, D)`` and returns the
weights of the solve (or ``None`` where there are none to compare). Every contender is optional:
``available()`` says which ones this machine can run and why not.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Optional

import torch

import scq

LAM = 0.1


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _with_codebook(module, codebook):
    """Every contender starts from the same codes."""
    with torch.no_grad():
        module.codebook.copy_(codebook)
    return module


def _scq_module(method: str):
    return lambda K, D, device, dtype, codebook: _with_codebook(
        scq.SCQ(D, K, lam=LAM, method=method).to(device, dtype), codebook)


def _vq(K, D, device, dtype, codebook):
    return _with_codebook(scq.VQ(D, K).to(device, dtype), codebook)


def _vqp(K, D, device, dtype, codebook):
    from vector_quantize_pytorch import VectorQuantize

    # Learnable codebook trained by the loss (as scq's VQ), no EMA, no k-means init.
    q = VectorQuantize(dim=D, codebook_size=K, learnable_codebook=True, ema_update=False)
    return _with_codebook(q.to(device, dtype), codebook)


def _svq(solver: str, alpha: Optional[float] = 20.0):
    """SVQ with α = ``alpha`` (sparse supports on the data-like codebook), or its own default
    (``None``: α = 0.1, where on its N(0, 1) codebook every support fills D)."""
    options = {} if alpha is None else dict(alpha=alpha)
    return lambda K, D, device, dtype, codebook: _with_codebook(
        scq.SVQ(D, K, solver=solver, **options).to(device, dtype), codebook)


class _QpthSCQ(torch.nn.Module):
    """SCQ through qpth's batched interior-point QP layer (a peer of cvxpylayers)."""

    def __init__(self, K, D, device, dtype, codebook):
        super().__init__()
        self.codebook = torch.nn.Parameter(codebook.clone())

    def forward(self, z):
        from qpth.qp import QPFunction

        E = self.codebook
        N, K = z.shape[0], E.shape[0]
        target = scq.problems.resolve_target(z, E, None)
        Q = 2 * (E @ E.T + LAM * torch.eye(K, dtype=z.dtype, device=z.device))
        p = -2 * (z @ E.T + LAM * target)
        G = -torch.eye(K, dtype=z.dtype, device=z.device)
        h = torch.zeros(K, dtype=z.dtype, device=z.device)
        A = torch.ones(1, K, dtype=z.dtype, device=z.device)
        b = torch.ones(1, dtype=z.dtype, device=z.device)
        # qpth averages the gradient of a broadcast Q: pass it expanded to the batch.
        w = QPFunction(verbose=-1)(Q.expand(N, K, K), p, G, h, A, b)
        return scq.QuantizerOutput(w @ E, w, w.argmax(-1), (w @ E - z).pow(2).mean())


BUILDERS: dict[str, Callable] = {
    "vq": _vq,
    "vector-quantize-pytorch": _vqp,
    "scq-relaxed": _scq_module("relaxed"),
    "scq-pgd": _scq_module("pgd"),
    "scq-exact": _scq_module("exact"),
    "qpth": _QpthSCQ,
    "svq-mlp": _svq("mlp"),
    "svq-lasso": _svq("lasso"),
    "svq-lasso-default": _svq("lasso", alpha=None),
}

# Which contenders compute SCQ weights (compared against the exact solution).
SCQ_SOLVERS = {"scq-relaxed", "scq-pgd", "scq-exact", "qpth"}


def available(name: str, device: str) -> Optional[str]:
    """None if ``name`` can run here, else the reason it cannot."""
    if name == "vector-quantize-pytorch" and not _has("vector_quantize_pytorch"):
        return "vector-quantize-pytorch not installed (pip install 'scq[bench]')"
    if name == "qpth" and not _has("qpth"):
        return "qpth not installed (pip install --no-deps qpth)"
    if name == "scq-exact" and device != "cpu":
        return "cvxpylayers runs on the CPU only"
    return None


def build(name: str, K: int, D: int, device: str, dtype: torch.dtype, codebook: torch.Tensor):
    return BUILDERS[name](K, D, device, dtype, codebook.to(device, dtype))


def output_of(module, z):
    """(quantized, weights, loss) of any contender's forward."""
    out = module(z if not _is_vqp(module) else z.unsqueeze(0))
    if _is_vqp(module):
        quantized, indices, loss = out
        return quantized.squeeze(0), None, loss.sum()
    return out.quantized, out.weights, out.loss


def _is_vqp(module) -> bool:
    return type(module).__module__.startswith("vector_quantize_pytorch")
