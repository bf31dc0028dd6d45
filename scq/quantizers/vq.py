r"""Plain vector quantization, the baseline (docs/math.md §1).

    k* = argmin_k ‖x − e_k‖²,   q = e_{k*},   quantized = x + sg(q − x)   (straight-through)
    loss = ‖sg(x) − q‖² + β‖x − sg(q)‖²    (van den Oord et al. 2017)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validation as v
from ..problems import nearest_codes
from .base import Quantizer, QuantizerOutput, commitment_loss


class VQ(Quantizer):
    """Nearest-code vector quantization with the straight-through estimator.

    Args:
        dim: input dimension D (inputs are ``(..., dim)``).
        codebook_size: number of codes K.
        beta: weight of the commitment term ‖x − sg(q)‖² in ``loss``.
        init: codebook initialization (``"normal"``, ``"uniform"``, ``"kaiming"``).

    ``forward(x)`` returns :class:`QuantizerOutput`; ``weights`` are one-hot.
    """

    def __init__(self, dim: int, codebook_size: int, *, beta: float = 0.25, init: str = "normal"):
        super().__init__(dim, codebook_size, init=init)
        self.beta = v.check_nonnegative("beta", beta)

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        flat, batch_shape = self._flatten(x)
        E = self._codebook(flat.dtype)
        indices = nearest_codes(flat.detach(), E.detach())
        q = F.embedding(indices, E)
        loss = commitment_loss(flat, q, self.beta)
        quantized = flat + (q - flat).detach()
        weights = F.one_hot(indices, self.codebook_size).to(flat.dtype)
        return self._output(quantized, weights, indices, loss, batch_shape, x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", beta={self.beta}"
