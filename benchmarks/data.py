"""Real images that ship inside packages, cut into patches (nothing is downloaded).

- ``photo patches``: 32×32 RGB crops of scikit-learn's two sample photographs and scikit-image's
  bundled photographs. Train and held-out patches come from *different* photographs.
- ``digits``: scikit-learn's 8×8 handwritten digits (1,797 images), a second, smaller set.
- ``bundled patches`` (the study): square RGB crops of *every* image bundled with scikit-image
  and scikit-learn (grey images repeated over three channels), split into training and held-out
  images (``BUNDLED_TRAIN``, ``BUNDLED_HELDOUT``).
- ``moving digits`` (the study's forecasting task): digits moving and bouncing on a canvas.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

TRAIN_PHOTOS = ("sklearn:china.jpg", "skimage:astronaut", "skimage:rocket", "skimage:coffee")
TEST_PHOTOS = ("sklearn:flower.jpg", "skimage:chelsea")


# Every image that ships inside scikit-image 0.2x (those its ``data`` module would download are
# left out, as is ``cat``, the same photograph as ``chelsea``) and scikit-learn, split by image:
# the held-out images are never seen in training. Both sides mix photographs, textures, scans
# and drawings.
BUNDLED_TRAIN = (
    "sklearn:china.jpg", "skimage:astronaut", "skimage:rocket", "skimage:coffee", "skimage:brick", "skimage:grass",
    "skimage:coins", "skimage:moon", "skimage:hubble_deep_field", "skimage:retina", "skimage:clock", "skimage:horse",
    "skimage:logo", "skimage:colorwheel", "skimage:microaneurysms", "skimage:text", "skimage:checkerboard",
    "skimage:cell",
)
BUNDLED_HELDOUT = (
    "sklearn:flower.jpg", "skimage:chelsea", "skimage:camera", "skimage:gravel", "skimage:immunohistochemistry",
    "skimage:page", "skimage:shepp_logan_phantom",
)


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """An image as float32 (H, W, 3) in [0, 1] (grey repeated over three channels, alpha dropped)."""
    source, key = name.split(":")
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(key)
    else:
        import skimage.data

        img = getattr(skimage.data, key)()
    img = np.asarray(img)
    scale = 255.0 if img.dtype == np.uint8 else 1.0  # bool and float images are already in [0, 1]
    img = img.astype(np.float32) / scale
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    img.flags.writeable = False  # cached: shared by every caller
    return img


def photo_patches(n: int, photos=TRAIN_PHOTOS, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``n`` random ``size``×``size`` RGB patches in [0, 1], as (n, 3, size, size), spread over ``photos``."""
    rng = np.random.default_rng(seed)
    images = [_photo(p) for p in photos]
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        img = images[i % len(images)]
        y = rng.integers(0, img.shape[0] - size + 1)
        x = rng.integers(0, img.shape[1] - size + 1)
        out[i] = img[y : y + size, x : x + size].transpose(2, 0, 1)
    return torch.from_numpy(out)


def digits(seed: int = 0, test_fraction: float = 0.25) -> "tuple[torch.Tensor, torch.Tensor]":
    """(train, test) digits as (n, 1, 8, 8) in [0, 1], split at random with ``seed``."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0).unsqueeze(1)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = int(test_fraction * x.shape[0])
    return x[perm[n_test:]], x[perm[:n_test]]


def moving_digits(n: int, digits: torch.Tensor, frames: int = 8, canvas: int = 32, n_digits: int = 2,
                  scale: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` sequences of ``frames`` frames, (n, frames, 1, canvas, canvas) in [0, 1]: ``n_digits``
    digits (drawn from ``digits`` (m, 1, 8, 8), enlarged ``scale`` times) moving at constant
    velocity and bouncing off the canvas's edges, overlaid by their maximum (Moving MNIST on
    scikit-learn's digits)."""
    rng = np.random.default_rng(seed)
    src = torch.nn.functional.interpolate(digits, scale_factor=scale, mode="nearest").numpy()[:, 0]
    size = src.shape[-1]
    room = canvas - size
    out = np.zeros((n, frames, 1, canvas, canvas), dtype=np.float32)
    for i in range(n):
        for _ in range(n_digits):
            glyph = src[rng.integers(src.shape[0])]
            pos = rng.uniform(0, room, size=2)
            vel = rng.uniform(1.0, 3.0, size=2) * rng.choice((-1.0, 1.0), size=2)
            for t in range(frames):
                y, x = int(round(pos[0])), int(round(pos[1]))
                frame = out[i, t, 0]
                np.maximum(frame[y : y + size, x : x + size], glyph, out=frame[y : y + size, x : x + size])
                pos += vel
                for a in range(2):  # bounce off the edges
                    if pos[a] < 0 or pos[a] > room:
                        vel[a] = -vel[a]
                        pos[a] = np.clip(pos[a], 0, room)
    return torch.from_numpy(out)
