"""Real images that ship inside packages, cut into patches (nothing is downloaded).

- ``photo patches``: 32×32 RGB crops of scikit-learn's two sample photographs and scikit-image's
  bundled photographs. Train and held-out patches come from *different* photographs.
- ``digits``: scikit-learn's 8×8 handwritten digits (1,797 images), a second, smaller set.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN_PHOTOS = ("sklearn:china.jpg", "skimage:astronaut", "skimage:rocket", "skimage:coffee")
TEST_PHOTOS = ("sklearn:flower.jpg", "skimage:chelsea")


def _photo(name: str) -> np.ndarray:
    source, key = name.split(":")
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(key)
    else:
        import skimage.data

        img = getattr(skimage.data, key)()
    return np.asarray(img, dtype=np.float32)[..., :3] / 255.0


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
