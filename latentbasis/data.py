"""Training data the project has without a network.

`digits`: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, values 0..16), upscaled.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def digits_images(resolution: int = 16) -> tuple[torch.Tensor, np.ndarray]:
    """load_digits as images in [-1, 1].

    Returns (images [N, 1, resolution, resolution] float32, labels [N] int).
    Upscaling is bilinear from 8x8; `downsample_to_digits` is its inverse for classifiers.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # [N,1,8,8] in [0,1]
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1), d.target


def downsample_to_digits(images: torch.Tensor) -> np.ndarray:
    """[N, 1, R, R] in [-1, 1] -> [N, 64] in load_digits' 0..16 scale (area-averaged to 8x8)."""
    x = F.adaptive_avg_pool2d(images.float(), 8)
    return ((x.clamp(-1, 1) + 1) * 8.0).reshape(len(x), 64).numpy()
