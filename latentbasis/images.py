"""Reading real images into a model's x space (pixels in [-1, 1], or VAE latents), with one clear error each."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import LatentBasisError
from .validate import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, regular_file


# The formats an image or a mask may be read in. Pillow's readers for these decode in-process; others (EPS and PS
# call Ghostscript, a program outside) are never tried, whatever the file's name says.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


def open_image(path: str | os.PathLike, what: str = "image"):
    """The one way latentbasis reads an image file (images, masks, the app's uploads): a PIL image, decoded.

    Refused with one message: a missing path or one that is not a regular file, more than validate.MAX_IMAGE_BYTES
    on disk or MAX_IMAGE_PIXELS pixels (checked from the header, before decoding), an animated file, and any format
    outside IMAGE_FORMATS, by its content, not its name."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    p = regular_file(path, what)
    size = p.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise LatentBasisError(f"{what} {p.name} is {size:,} bytes: larger than the {MAX_IMAGE_BYTES:,} read")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p, formats=IMAGE_FORMATS) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise LatentBasisError(f"{what} {p.name} is {w}x{h} pixels: more than the {MAX_IMAGE_PIXELS:,} "
                                           "read (resize it first)")
                if getattr(im, "n_frames", 1) > 1:
                    raise LatentBasisError(f"{what} {p.name} is animated ({im.n_frames} frames): give a single image")
                im.load()
                return im.copy()
    except LatentBasisError:
        raise
    except UnidentifiedImageError:
        raise LatentBasisError(f"{what} {p.name} is not a readable image (latentbasis reads "
                               f"{', '.join(IMAGE_FORMATS)}, by content, whatever the name)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning, EOFError,
            MemoryError) as e:
        raise LatentBasisError(f"{what} {p.name} is not a readable image ({type(e).__name__})") from None


def read_image(path: str | os.PathLike, channels: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """Image file -> ([channels, size, size] in [-1, 1], notes on what was converted).

    Centre-cropped to a square and resized (bicubic). Every bit depth is read at its full range (16-bit grey PNGs
    are scaled, not clipped); grey images given to an RGB model and colour images given to a grey model are
    converted (luminance, ITU-R 601), an alpha channel is dropped, palette and CMYK images become RGB, each with a
    note. Refused with one message: a missing, unreadable, animated, too large (validate.MAX_IMAGE_BYTES, _PIXELS),
    too small or too elongated image.
    """
    from PIL import Image

    p = Path(path)
    notes: list[str] = []
    img = open_image(p, "image")
    a = _as_float(img, notes, p.name)                         # [H, W] or [H, W, 3] in [0, 1]
    if channels == 1 and a.ndim == 3:
        a = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        notes.append(f"{p.name} is a colour image: converted to grey for this 1-channel model")
    elif channels == 3 and a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
        notes.append(f"{p.name} is a grey image: repeated into 3 channels for this RGB model")
    elif channels not in (1, 3):
        raise LatentBasisError(f"the model takes {channels}-channel images; latentbasis reads grey and RGB files")
    h, w = a.shape[:2]
    if min(w, h) < 8:
        raise LatentBasisError(f"{p.name} is {w}x{h} pixels: too small (at least 8x8)")
    if max(w, h) > 4 * min(w, h):
        raise LatentBasisError(f"{p.name} is {w}x{h} pixels: too elongated for a centre crop to a square "
                               "(crop it first)")
    sq = min(w, h)
    top, left = (h - sq) // 2, (w - sq) // 2
    a = a[top:top + sq, left:left + sq]
    planes = [a] if a.ndim == 2 else [a[..., c] for c in range(3)]
    resized = [np.asarray(Image.fromarray(pl, mode="F").resize((size, size), Image.Resampling.BICUBIC))
               for pl in planes]
    out = np.stack(resized) * 2.0 - 1.0
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).clamp(-1, 1), notes


def _as_float(img, notes: list[str], name: str) -> np.ndarray:
    """A PIL image as floats in [0, 1]: [H, W] for grey, [H, W, 3] for colour, at the file's full bit depth."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        scale = 1.0 if (mode == "F" and top <= 1.0) else 255.0 if top <= 255 else 65535.0 if top <= 65535 else None
        if scale is None or float(a.min()) < 0:
            raise LatentBasisError(f"{name}: {mode} pixel values outside 0..65535 are not an image latentbasis reads")
        if scale == 65535.0:
            notes.append(f"{name} is a 16-bit image: read at its full range")
        return (a / scale).astype(np.float32)
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if mode in ("LA", "La"):
        notes.append(f"{name} has an alpha channel: dropped")
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append(f"{name} has an alpha channel: dropped")
    elif mode not in ("RGB", "P"):
        notes.append(f"{name} is a {mode} image: converted to RGB")
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike, channels: int, size: int) -> torch.Tensor:
    """read_image without the notes: [channels, size, size] in [-1, 1]."""
    return read_image(path, channels, size)[0]


def image_to_x(model, image: torch.Tensor) -> torch.Tensor:
    """Pixels [C, H, W] in [-1, 1] -> x space: the image itself, or its VAE latent (the model's family decides)."""
    return model.image_to_x(image)


def x_to_image(model, x: torch.Tensor) -> torch.Tensor:
    """x [B, *x_shape] -> pixels [B, C, H, W] in [-1, 1] on the CPU (VAE decode for latent models)."""
    return model.x_to_image(x)


def pixel_size(model) -> tuple[int, int]:
    """(channels, size) of the images a model takes."""
    return model.pixel_size()
