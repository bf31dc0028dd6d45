"""A small convolutional autoencoder with a swappable quantizer on its latent vectors."""

from __future__ import annotations

import torch
from torch import nn


class AutoEncoder(nn.Module):
    """Encoder (two stride-2 convs) → quantizer on each latent pixel's D-vector → decoder.

    ``quantizer`` is any scq quantizer (``None``: no quantization, the ceiling). The same
    encoder and decoder serve every quantizer, so only the bottleneck differs.
    """

    def __init__(self, channels: int, dim: int, quantizer: "nn.Module | None", width: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * width, dim, 1),
        )
        self.quantizer = quantizer
        self.decoder = nn.Sequential(
            nn.Conv2d(dim, 2 * width, 1), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent vectors as (B, H, W, D): the layout quantizers take (``(..., dim)``)."""
        return self.encoder(x).permute(0, 2, 3, 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from (B, H, W, D) latent vectors (quantized or not)."""
        return self.decoder(z.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor):
        """(reconstruction, quantizer output or None)."""
        z = self.encode(x)
        out = None
        if self.quantizer is not None:
            out = self.quantizer(z)
            z = out.quantized
        return self.decode(z), out
