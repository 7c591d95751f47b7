"""Regions of interest: a mask on the image, and the same region in x (for latent models, at the latent's size).

A mask is given as a box "x0,y0,x1,y1" in pixels of the image the model makes (x to the right, y down; x1, y1
exclusive) or as a grey PNG of the image's size (non-zero: inside). In x it is boolean [C, h, w]: every channel of a
pixel, for latent models the latent pixels at least half covered by the region (area-averaged down).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .errors import LatentBasisError
from .images import open_image
from .validate import MAX_IMAGE_PIXELS


def parse_mask(spec: str | os.PathLike | np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """A boolean mask [size, size] on the image from a box "x0,y0,x1,y1", a PNG path, or an array."""
    if isinstance(spec, (np.ndarray, torch.Tensor)):
        m = torch.as_tensor(np.asarray(spec)).bool()
        if tuple(m.shape) != (size, size):
            raise LatentBasisError(f"the mask is {tuple(m.shape)}, the image is {size}x{size}")
        return _non_empty(m)
    text = str(spec)
    box = re.fullmatch(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*", text)
    if box:
        x0, y0, x1, y1 = (int(v) for v in box.groups())
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise LatentBasisError(f"the mask box {x0},{y0},{x1},{y1} is not inside the {size}x{size} image "
                                   "(x0,y0,x1,y1 with 0 <= x0 < x1 <= size, the same for y)")
        m = torch.zeros(size, size, dtype=torch.bool)
        m[y0:y1, x0:x1] = True
        return m
    p = Path(text)
    if not p.is_file():
        raise LatentBasisError(f"the mask {text!r} is neither a box x0,y0,x1,y1 nor an existing PNG file")

    im = open_image(p, "the mask")
    if im.size != (size, size):
        raise LatentBasisError(f"the mask {p.name} is {im.size[0]}x{im.size[1]} pixels, the image is {size}x{size}")
    a = np.asarray(im.convert("L"))
    return _non_empty(torch.from_numpy(a > 0))


def _non_empty(m: torch.Tensor) -> torch.Tensor:
    if not bool(m.any()):
        raise LatentBasisError("the mask is empty: it marks no pixel")
    return m


def mask_in_x(model, mask: torch.Tensor) -> torch.Tensor:
    """The image mask [S, S] as a boolean mask of x [C, h, w] (area-averaged down to a latent's size, >= 1/2).
    A mask of another size or shape, or with a value that is not a number, is refused (not stretched to fit)."""
    C, h, w = model.x_shape
    S = model.pixel_size()[1]
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != (S, S):
        raise LatentBasisError(f"the mask has shape {tuple(mask.shape)}; the model's images are {S}x{S} pixels, so a "
                               f"mask is [{S}, {S}]")
    if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
        raise LatentBasisError("the mask holds a value that is not a finite number")
    m = mask.float()[None, None]
    if m.shape[-1] != w:
        m = torch.nn.functional.adaptive_avg_pool2d(m, (h, w))
    inside = (m[0, 0] >= 0.5)
    if not bool(inside.any()):
        raise LatentBasisError("the mask is too small to cover one latent pixel: make it larger")
    return inside[None].expand(C, h, w).clone()


def mask_sha256(mask: torch.Tensor) -> str:
    """sha256 of a mask's shape and bits (what a basis file records of its region)."""
    h = hashlib.sha256(str(tuple(mask.shape)).encode())
    h.update(mask.bool().contiguous().numpy().tobytes())
    return h.hexdigest()


def painted_mask(layer, size: int) -> torch.Tensor | None:
    """The region painted on a picture of the image, as a mask [size, size]: `layer` an RGBA picture (an array
    [H, W, 4], or a file, opened as uploads are: the pixel limit read before decoding), non-zero alpha where
    painted; a pixel of the image is in when at least half of it is painted (area pooling). None when nothing is."""
    if isinstance(layer, (str, os.PathLike)):
        layer = open_image(layer, "the painted layer").convert("RGBA")
    a = np.asarray(layer)
    if a.ndim >= 2 and a.shape[0] * a.shape[1] > MAX_IMAGE_PIXELS:
        raise LatentBasisError(f"the painted layer is {a.shape[1]}x{a.shape[0]} pixels: more than the "
                               f"{MAX_IMAGE_PIXELS:,} read")
    if a.ndim != 3 or a.shape[-1] < 4 or not (a[..., 3] > 0).any():
        return None
    m = torch.from_numpy((a[..., 3] > 0).astype(np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(m, (size, size))[0, 0] >= 0.5


def save_mask_png(mask: torch.Tensor, path: str | os.PathLike) -> Path:
    """A mask [S, S] as a grey PNG (255 inside), which parse_mask reads back to the same mask; written atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray((mask.bool().numpy() * 255).astype(np.uint8)).save(tmp, format="PNG")
    return Path(path)
