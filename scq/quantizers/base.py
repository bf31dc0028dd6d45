"""What every quantizer module shares: the output tuple, the codebook, input handling."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .. import _validation as v

INITS = ("normal", "uniform", "kaiming")


class QuantizerOutput(NamedTuple):
    """``quantized, weights, indices, loss = quantizer(x)``.

    Attributes:
        quantized: ``(..., dim)``, the quantized inputs, in the input dtype.
        weights: ``(..., K)``, the weight of each code (one-hot for VQ, on the simplex for SCQ,
            regression weights for SVQ).
        indices: ``(...)`` int64, the code with the largest weight (the hard code).
        loss: scalar tensor, the auxiliary loss to add to the training objective (0 if none).
    """

    quantized: torch.Tensor
    weights: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


def init_codebook_(codebook: torch.Tensor, init: str) -> None:
    """In-place codebook initialization.

    ``"normal"``: N(0, 1), codes on the scale of unit-variance features.
    ``"uniform"``: U(−1/K, 1/K), as in the original VQ-VAE.
    ``"kaiming"``: Kaiming-uniform over the code dimension, as for a linear layer's weight.
    """
    K = codebook.shape[0]
    with torch.no_grad():
        if init == "normal":
            nn.init.normal_(codebook)
        elif init == "uniform":
            nn.init.uniform_(codebook, -1.0 / K, 1.0 / K)
        elif init == "kaiming":
            nn.init.kaiming_uniform_(codebook, a=math.sqrt(5))
        else:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _check_loaded_codebook(module: "Quantizer", incompatible_keys) -> None:
    # A named function, not a lambda: modules must stay picklable (torch.save(model)).
    module.check_codebook()


class Quantizer(nn.Module):
    """Base class: a learnable (or frozen) codebook ``(codebook_size, dim)`` and input checks."""

    def __init__(self, dim: int, codebook_size: int, *, init: str = "normal", learnable_codebook: bool = True):
        super().__init__()
        self.dim = v.check_positive_int("dim", dim)
        self.codebook_size = v.check_positive_int("codebook_size", codebook_size)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.init = init
        self.codebook = nn.Parameter(torch.empty(codebook_size, dim), requires_grad=learnable_codebook)
        self.reset_parameters()
        self.register_load_state_dict_post_hook(_check_loaded_codebook)

    def reset_parameters(self) -> None:
        init_codebook_(self.codebook, self.init)

    @torch.no_grad()
    def init_codebook_from_data(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the codes to randomly chosen input vectors (with replacement if fewer than K)."""
        flat = self._flatten(x)[0].detach()
        if flat.shape[0] == 0:
            raise ValueError("x holds no vectors to initialize the codebook from")
        n = flat.shape[0]
        idx = torch.randperm(n, generator=generator)[: self.codebook_size] if n >= self.codebook_size \
            else torch.randint(n, (self.codebook_size,), generator=generator)
        self.codebook.copy_(flat[idx.to(flat.device)].to(self.codebook.dtype))

    def _flatten(self, x: torch.Tensor) -> "tuple[torch.Tensor, torch.Size]":
        """Checked ``(N, dim)`` view of ``x`` in the compute dtype, and the batch shape: the one
        validation of a forward (the module's own parameters were checked when set)."""
        v.check_tensor("x", x)
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")
        if x.device != self.codebook.device:
            raise ValueError(f"x is on {x.device} but the codebook is on {self.codebook.device}")
        v.check_finite("x", x)
        dtype = v.compute_dtype(x, self.codebook)
        return x.reshape(-1, self.dim).to(dtype), x.shape[:-1]

    def check_codebook(self) -> None:
        """Raise a ValueError if the codebook holds NaN or Inf (one host sync). Runs after
        ``load_state_dict``; call it yourself after editing the codebook by hand. Forwards do not
        check it up front: a solver that fails on a non-finite codebook is reported as this same
        ValueError, and one that returns an answer has it judged by the certificate, which NaN
        never passes (``last_info.converged`` False)."""
        v.check_finite("codebook", self.codebook.detach())

    def _codebook(self, dtype: torch.dtype) -> torch.Tensor:
        return self.codebook.to(dtype)

    def _output(self, quantized, weights, indices, loss, batch_shape, dtype) -> QuantizerOutput:
        return QuantizerOutput(
            quantized.to(dtype).reshape(*batch_shape, self.dim),
            weights.to(dtype).reshape(*batch_shape, self.codebook_size),
            indices.reshape(batch_shape),
            loss,
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size={self.codebook_size}, init={self.init!r}"


def commitment_loss(x: torch.Tensor, quantized: torch.Tensor, beta: float) -> torch.Tensor:
    """‖sg(x) − q‖² + β‖x − sg(q)‖² (means): pulls the codes to the inputs and commits the inputs."""
    if x.shape[0] == 0:
        return x.sum() * 0
    codebook_term = torch.mean((quantized - x.detach()) ** 2)
    commit_term = torch.mean((x - quantized.detach()) ** 2)
    return codebook_term + beta * commit_term
