"""Reading real images into a model's x space (pixels in [-1, 1], or VAE latents), with one clear error each."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import LatentBasisError

def load_image(path: str | os.PathLike, channels: int, size: int) -> torch.Tensor:
    """Image file -> [channels, size, size] in [-1, 1]: centre-cropped to a square, resized (bicubic).

    Grey images go to 1-channel models and RGB images to 3-channel models; anything else is refused rather than
    guessed at (convert it first).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise LatentBasisError(f"image {p} does not exist")
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            img = im.copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise LatentBasisError(f"{p} is not a readable image ({type(e).__name__})") from None
    have = {"1": 1, "L": 1, "I;16": 1, "I": 1, "F": 1, "P": 3, "RGB": 3, "LA": 2, "RGBA": 4, "CMYK": 4}.get(mode, 0)
    if mode == "P":
        img = img.convert("RGB")
    elif mode in ("1", "I;16", "I", "F"):
        img = img.convert("L")
    if have != channels:
        raise LatentBasisError(f"{p} has {have} channel(s) ({mode}); the model takes {channels}-channel "
                               f"{'grey' if channels == 1 else 'RGB'} images")
    w, h = img.size
    if min(w, h) < 8:
        raise LatentBasisError(f"{p} is {w}x{h} pixels: too small (at least 8x8)")
    if max(w, h) > 4 * min(w, h):
        raise LatentBasisError(f"{p} is {w}x{h} pixels: too elongated for a centre crop to a square (crop it first)")
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a)).clamp(-1, 1)


def image_to_x(model, image: torch.Tensor) -> torch.Tensor:
    """Pixels [C, H, W] in [-1, 1] -> x space: the image itself, or its VAE latent (the model's family decides)."""
    return model.image_to_x(image)


def x_to_image(model, x: torch.Tensor) -> torch.Tensor:
    """x [B, *x_shape] -> pixels [B, C, H, W] in [-1, 1] on the CPU (VAE decode for latent models)."""
    return model.x_to_image(x)


def pixel_size(model) -> tuple[int, int]:
    """(channels, size) of the images a model takes."""
    return model.pixel_size()
