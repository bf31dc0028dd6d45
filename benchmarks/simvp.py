"""A small SimVP (Gao et al. 2022) for next-frames forecasting, with a quantizer where the SVQ
paper's released code puts it: on the spatial encoder's latent of every input frame, before the
translator (its default, ``post_vq=False``).

    frames (B, T, 1, H, W) → encoder (per frame, ×¼) → quantizer (per latent pixel, hid_s
    features) → translator (convolutions over the T·hid_s stacked channels) → decoder (per frame,
    ×4, with the encoder's first feature map as skip) → the next T frames

The skip from the encoder's first layer bypasses the quantizer, as in SimVP; the translator
sees only quantized latents.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1, transpose: bool = False) -> nn.Sequential:
    layer = (nn.ConvTranspose2d(cin, cout, 4, 2, 1) if transpose else nn.Conv2d(cin, cout, 3, stride, 1))
    return nn.Sequential(layer, nn.GroupNorm(2, cout), nn.SiLU())


class SimVP(nn.Module):
    """Encoder–translator–decoder; ``quantizer`` (``None``: none) acts on ``(B·T, h, w, hid_s)``."""

    def __init__(self, frames: int, quantizer: "nn.Module | None", hid_s: int = 16, hid_t: int = 64, n_t: int = 3):
        super().__init__()
        self.frames, self.hid_s = frames, hid_s
        self.enc1 = _conv(1, hid_s)
        self.enc2 = nn.Sequential(_conv(hid_s, hid_s, stride=2), _conv(hid_s, hid_s, stride=2))
        self.quantizer = quantizer
        chans = frames * hid_s
        blocks = [_conv(chans, hid_t)] + [_conv(hid_t, hid_t) for _ in range(n_t - 2)] + [nn.Conv2d(hid_t, chans, 3, 1, 1)]
        self.translator = nn.Sequential(*blocks)
        self.dec1 = nn.Sequential(_conv(hid_s, hid_s, transpose=True), _conv(hid_s, hid_s, transpose=True))
        self.dec2 = _conv(hid_s, hid_s)
        self.readout = nn.Conv2d(hid_s, 1, 1)

    def forward(self, x: torch.Tensor):
        """(predicted next frames (B, T, 1, H, W), quantizer output or None)."""
        B, T, C, H, W = x.shape
        skip = self.enc1(x.reshape(B * T, C, H, W))
        latent = self.enc2(skip)  # (B·T, hid_s, H/4, W/4)
        out = None
        if self.quantizer is not None:
            out = self.quantizer(latent.permute(0, 2, 3, 1))
            latent = out.quantized.permute(0, 3, 1, 2)
        h, w = latent.shape[-2:]
        hid = latent.reshape(B, T * self.hid_s, h, w)
        hid = hid + self.translator(hid)
        hid = hid.reshape(B * T, self.hid_s, h, w)
        y = self.readout(self.dec2(self.dec1(hid) + skip))
        return y.reshape(B, T, C, H, W), out
