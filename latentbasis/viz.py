"""Pictures: a basis's latent directions as images, with their singular values."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    """Write a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def direction_image(v: torch.Tensor) -> np.ndarray:
    """A latent vector [C, H, W] as an image: 1 channel -> signed values for a diverging map (in [-1, 1]);
    3 channels -> RGB centred on grey; other channel counts -> the first three channels centred on grey."""
    v = v.detach().float()
    v = v / v.abs().max().clamp(min=1e-12)
    if v.shape[0] == 1:
        return v[0].numpy()
    rgb = v[:3] if v.shape[0] >= 3 else torch.cat([v, v[:1].expand(3 - v.shape[0], -1, -1)])
    return (0.5 + 0.5 * rgb).permute(1, 2, 0).clamp(0, 1).numpy()


def to_display(x: torch.Tensor) -> np.ndarray:
    """An image tensor [C, H, W] in [-1, 1] -> [H, W] or [H, W, 3] in [0, 1]."""
    x = ((x.detach().float().clamp(-1, 1) + 1) / 2)
    return x[0].numpy() if x.shape[0] == 1 else x[:3].permute(1, 2, 0).numpy()


def render_basis(basis, path: str | os.PathLike, images: list[tuple[str, torch.Tensor]] = (),
                 title: str | None = None) -> Path:
    """PNG: some titled images in [-1, 1] (e.g. the sample and the denoised x_t), then each latent direction v_i
    titled with s_i (1 channel: blue-red, red where the direction brightens)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = basis.k
    panels = k + len(images)
    cols = min(panels, 10)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    flat = list(axes.flat)
    for ax, (name, im) in zip(flat, images):
        img = to_display(im)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
    for i in range(k):
        ax = flat[i + len(images)]
        img = direction_image(basis.latent[i])
        if img.ndim == 2:
            ax.imshow(img, cmap="RdBu_r", vmin=-1, vmax=1)
        else:
            ax.imshow(img)
        ax.set_title(f"v{i + 1}  s={float(basis.singular_values[i]):.3g}", fontsize=8)
    fig.suptitle(title or f"latent basis, {basis.model} t={basis.timestep}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi=120)


def render_edit_grid(images: torch.Tensor, row_labels: list[str], col_labels: list[str], path: str | os.PathLike,
                     title: str = "") -> Path:
    """PNG grid of edited images [rows, cols, C, H, W] in [-1, 1]; rows: directions, columns: strengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R, C = images.shape[:2]
    fig, axes = plt.subplots(R, C, figsize=(1.3 * C + 0.8, 1.3 * R + 0.6), squeeze=False)
    for r in range(R):
        for c in range(C):
            ax = axes[r][c]
            img = to_display(images[r, c])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_labels[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def image_pixels(x: torch.Tensor, size: int | None = None) -> np.ndarray:
    """Pixels [C, H, W] in [-1, 1] -> uint8 [H', W', 3], upscaled nearest-neighbour (pixels stay visible) by the
    whole factor that reaches `size` (None: none)."""
    img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return _upscaled(img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3], size)


def direction_pixels(v: torch.Tensor, size: int | None = None) -> np.ndarray:
    """A latent direction [C, H, W] as uint8 RGB (direction_image): blue-white-red for one channel, centred colours
    for three; upscaled as image_pixels."""
    from matplotlib import colormaps

    a = direction_image(v)
    rgb = colormaps["RdBu_r"]((a + 1) / 2)[..., :3] if a.ndim == 2 else a
    return _upscaled(torch.from_numpy((rgb * 255).round().astype(np.uint8)).permute(2, 0, 1), size)


def _upscaled(img: torch.Tensor, size: int | None) -> np.ndarray:
    f = max(1, (size or 0) // img.shape[-1])
    return img.repeat_interleave(f, 1).repeat_interleave(f, 2).permute(1, 2, 0).numpy()


def side_by_side(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """uint8 RGB pictures in a row, top-aligned on white, `gap` white pixels apart."""
    h = max(p.shape[0] for p in pictures)
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for p in pictures:
        parts += [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255), sep]
    return np.concatenate(parts[:-1], axis=1)


def save_png(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Pixels [C, H, W] in [-1, 1] as a PNG at their own size (grey for one channel), written atomically."""
    from PIL import Image

    pix = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = pix[0].numpy() if pix.shape[0] == 1 else pix[:3].permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)
