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


SHAPE_KINDS = ("square", "circle", "triangle")
SHAPE_FACTORS = ("kind", "x", "y", "size", "hue", "background")
# each kind's area at size (half-extent) 1, as render_shapes draws it: square (2 s)^2, circle pi s^2, triangle with
# its vertices at distance s from the centre 3 sqrt(3) / 4 s^2; equal areas across kinds: s_b = s_a sqrt(A_a / A_b)
SHAPE_AREA = (4.0, float(np.pi), float(3 * np.sqrt(3) / 4))


def shape_factors(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Independent factors of variation for `shapes`: kind in {0,1,2} (SHAPE_KINDS), centre x, y in [0.25, 0.75]
    (fractions of the width), size (half-extent) in [0.10, 0.22], hue in [0, 1), background grey in [0, 0.5]."""
    rng = np.random.default_rng(seed)
    return {"kind": rng.integers(0, 3, n), "x": rng.uniform(0.25, 0.75, n), "y": rng.uniform(0.25, 0.75, n),
            "size": rng.uniform(0.10, 0.22, n), "hue": rng.uniform(0.0, 1.0, n),
            "background": rng.uniform(0.0, 0.5, n)}


def render_shapes(factors: dict[str, np.ndarray], resolution: int = 32, supersample: int = 4) -> torch.Tensor:
    """Anti-aliased RGB images [n, 3, R, R] in [-1, 1] of one coloured shape on a grey background.

    Coverage is the fraction of supersample x supersample points per pixel inside the shape:
    square |u - x|, |v - y| <= s; circle (u - x)^2 + (v - y)^2 <= s^2; triangle: upward, vertices at distance s
    from the centre. Colour: HSV(hue, 0.9, 0.95); background: grey level `background`.
    """
    from matplotlib.colors import hsv_to_rgb

    R, S = resolution, supersample
    g = (np.arange(R * S) + 0.5) / (R * S)
    u, v = np.meshgrid(g, g, indexing="xy")                   # u: x to the right, v: y downwards
    n = len(factors["kind"])
    out = np.empty((n, 3, R, R), dtype=np.float32)
    for i in range(n):
        kind, x, y, s = int(factors["kind"][i]), factors["x"][i], factors["y"][i], factors["size"][i]
        du, dv = u - x, v - y
        if kind == 0:
            inside = (np.abs(du) <= s) & (np.abs(dv) <= s)
        elif kind == 1:
            inside = du ** 2 + dv ** 2 <= s ** 2
        else:  # equilateral triangle, apex up: three half-planes
            h = s * 1.5
            inside = (dv <= s / 2) & (np.sqrt(3) * du - dv <= s) & (-np.sqrt(3) * du - dv <= s) & (dv >= s / 2 - h)
        alpha = inside.reshape(R, S, R, S).mean(axis=(1, 3))
        colour = hsv_to_rgb([factors["hue"][i], 0.9, 0.95])
        bg = factors["background"][i]
        out[i] = alpha[None] * colour[:, None, None] + (1 - alpha[None]) * bg
    return torch.from_numpy(out * 2 - 1)


SHAPES_TRAIN_SIZE = 20000


def shapes_images(n: int = SHAPES_TRAIN_SIZE, seed: int = 0, resolution: int = 32) -> tuple[torch.Tensor, dict]:
    """The `shapes` training set: (images [n, 3, R, R] in [-1, 1], factors). Reproducible from the seed."""
    f = shape_factors(n, seed)
    return render_shapes(f, resolution), f


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = ("a handwritten {word}", "the digit {word}", "number {word}", "the number {num}",
                     "a handwritten digit {num}", "digit {num}")


def digit_caption(label: int, template: int) -> str:
    """Caption of a digit label in one of CAPTION_TEMPLATES' wordings ("the digit seven", "number 7", ...)."""
    return CAPTION_TEMPLATES[template].format(word=DIGIT_WORDS[label], num=str(label))


def caption_vocabulary() -> list[str]:
    """Every word the digit captions use, in a fixed order (the text model's tokenizer vocabulary)."""
    words: list[str] = []
    for label in range(10):
        for t in range(len(CAPTION_TEMPLATES)):
            words += digit_caption(label, t).split()
    return list(dict.fromkeys(words))
