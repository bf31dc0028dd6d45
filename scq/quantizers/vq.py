r"""Plain vector quantization, the baseline (docs/math.md §1).

    k* = argmin_k ‖x − e_k‖²,   q = e_{k*},   quantized = x + sg(q − x)   (straight-through)
    loss = ‖sg(x) − q‖² + β‖x − sg(q)‖²    (van den Oord et al. 2017)

With ``ema_update=True`` the codebook is not trained by gradients but follows the inputs assigned
to it (VQ-VAE-2, SoundStream; docs/math.md §8), and the loss keeps only the commitment term:

    n_k ← γ n_k + (1 − γ) |{x : k*(x) = k}|,    s_k ← γ s_k + (1 − γ) Σ_{k*(x)=k} x,
    e_k = s_k / ñ_k,   ñ_k = (n_k + ε) / (Σ_j n_j + Kε) · Σ_j n_j   (Laplace smoothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validation as v
from .. import distributed as dist_utils
from ..problems import nearest_codes
from ..solvers.solution import SparseWeights
from .base import Quantizer, _Quantized, commitment_loss


class VQ(Quantizer):
    """Nearest-code vector quantization with the straight-through estimator.

    Args:
        dim: input dimension D (inputs are ``(..., dim)``).
        codebook_size: number of codes K.
        beta: weight of the commitment term ‖x − sg(q)‖² in ``loss``.
        init: codebook initialization (``"normal"``, ``"uniform"``, ``"kaiming"``, ...).
        ema_update: the codebook is an exponential moving average of the inputs assigned to each
            code (decay ``decay``, Laplace smoothing ``eps``) instead of a trained parameter;
            statistics in buffers ``ema_cluster_size`` and ``ema_embed_sum``.
        eps: Laplace smoothing of the EMA cluster sizes.
        **kwargs: the training features of :class:`~scq.quantizers.base.Quantizer`
            (``kmeans_init``, ``dead_code_threshold``, ``decay``, ``heads``,
            ``separate_codebook_per_head``, ``use_cosine_sim``, ``channel_dim``,
            ``sync_distributed``, ``learnable_codebook``).

    ``forward(x)`` returns :class:`QuantizerOutput`; ``weights`` are one-hot. Distances are
    computed in float32 (or float64) even under ``torch.autocast``, so low precision never
    changes which code wins.
    """

    def __init__(self, dim: int, codebook_size: int, *, beta: float = 0.25, init: str = "normal",
                 ema_update: bool = False, eps: float = 1e-5, **kwargs):
        if ema_update:
            kwargs["learnable_codebook"] = False
        super().__init__(dim, codebook_size, init=init, **kwargs)
        self.beta = v.check_nonnegative("beta", beta)
        self.ema_update = bool(ema_update)
        self.eps = v.check_positive("eps", eps)
        if self.ema_update:
            # Every code starts as its own mean of weight 1, so a code no input picks stays put
            # (its statistics decay together) until dead-code replacement moves it.
            self.register_buffer("ema_cluster_size", torch.ones(self.num_codebooks, codebook_size))
            self.register_buffer("ema_embed_sum", self._books(self.codebook.detach()).clone())

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "ema_update", False):
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(self._books(self.codebook.detach()))

    def _quantize(self, vectors: torch.Tensor, codebook: torch.Tensor, book: int) -> _Quantized:
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            indices = nearest_codes(vectors.detach(), codebook.detach())
            q = F.embedding(indices, codebook)
            if self.ema_update:
                loss = self.beta * torch.mean((vectors - q.detach()) ** 2) if vectors.shape[0] else vectors.sum() * 0
                if self._updates_state():
                    self._ema_step(book, vectors.detach(), indices)
            else:
                loss = commitment_loss(vectors, q, self.beta)
            quantized = vectors + (q - vectors).detach()
            if self.return_weights == "dense":
                # (in the input's dtype at once: one_hot's int64 (N, K) and its copy held 3 buffers)
                weights = vectors.new_zeros(vectors.shape[0], self.codebook_size).scatter_(
                    1, indices.unsqueeze(1), 1.0)
            else:  # one slot per row: no (N, K) tensor at all
                weights = SparseWeights(indices.unsqueeze(1), torch.ones_like(vectors[:, :1]), self.codebook_size)
        return _Quantized(quantized, weights, indices, loss)

    def _usage_mass(self, part: _Quantized) -> torch.Tensor:
        # (the caller casts: the weights may be SparseWeights, or dropped, with return_weights)
        return torch.bincount(part.indices, minlength=self.codebook_size)

    @torch.no_grad()
    def _ema_step(self, book: int, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        # Runs after q was taken from the codebook, which is a buffer-like parameter without
        # gradient: nothing in the graph saved it, so updating it here is safe.
        sync = self._sync()
        counts = torch.bincount(indices, minlength=self.codebook_size).to(self.ema_cluster_size.dtype)
        sums = vectors.new_zeros(self.codebook_size, vectors.shape[1]).index_add_(0, indices, vectors)
        counts = dist_utils.all_reduce_sum(counts, sync)
        sums = dist_utils.all_reduce_sum(sums.to(self.ema_embed_sum.dtype), sync)
        gamma = self.decay
        self.ema_cluster_size[book].mul_(gamma).add_(counts, alpha=1 - gamma)
        self.ema_embed_sum[book].mul_(gamma).add_(sums, alpha=1 - gamma)
        n_k = self.ema_cluster_size[book]
        total = n_k.sum()
        smoothed = (n_k + self.eps) / (total + self.codebook_size * self.eps) * total
        self._books(self.codebook.data)[book].copy_(self.ema_embed_sum[book] / smoothed.unsqueeze(-1))

    def _codes_replaced(self, book, mask, codes, usage) -> None:
        if not self.ema_update:
            return
        # A replaced code restarts as the mean of `weight` vectors equal to itself.
        weight = usage if usage is not None else torch.full_like(self.ema_cluster_size[book], max(self.dead_code_threshold, 1.0))
        weight = weight.to(self.ema_cluster_size.dtype).clamp_min(1.0)
        self.ema_cluster_size[book] = torch.where(mask, weight, self.ema_cluster_size[book])
        self.ema_embed_sum[book] = torch.where(mask.unsqueeze(-1), codes * weight.unsqueeze(-1), self.ema_embed_sum[book])

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", beta={self.beta}"
        return s + (f", ema_update=True, decay={self.decay}" if self.ema_update else "")
