"""A finished edit described by registration: the image edited at -strength carried onto the one at +strength by a
similarity motion of the content and a colour map per channel (register_change), the rest split by frequency, so
that the shares read as describe.decompose_change's do (describe_edit names them). Unlike describe.describe_basis
(the first-order change of x0_hat at x_t) it reads an edit's whole effect through every sampling step after t.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as tnf

from .describe import BANDS, PARTS, name_change
from .geometry import band_pass


@functools.lru_cache(maxsize=8)
def _pixel_coordinates(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) of each pixel's centre [h, w], float64, in coordinates of [-1, 1] across the image (grid_sample's with
    align_corners=False). Cached: the registration warps the same grid hundreds of times; callers do not mutate it."""
    return torch.meshgrid(*((torch.arange(n, dtype=torch.float64) + 0.5) * 2 / n - 1 for n in (h, w)), indexing="ij")


def _similarity_warp(image: torch.Tensor, p: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """image [C, h, w] with its content moved by p = (dx, dy, log scale, angle) about `centre` (x, y; None: the
    image's centre): the output at q is the image at T^-1 q, T q = c + e^ls R(angle) (q - c) + (dx, dy), in
    coordinates of [-1, 1] across the image (dx = 1: half the width; y down, so a positive angle turns clockwise on
    screen)."""
    c = torch.zeros(2, dtype=p.dtype) if centre is None else centre.to(p.dtype)
    s, a = torch.exp(-p[2]), -p[3]
    cos, sin = s * torch.cos(a), s * torch.sin(a)
    A = torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])])
    ys, xs = (v.to(p.dtype) for v in _pixel_coordinates(*image.shape[-2:]))
    t = c - A @ (c + p[:2])      # the grid affine_grid makes, written out (both are slow on small float64 grids)
    grid = torch.stack([A[0, 0] * xs + A[0, 1] * ys + t[0], A[1, 0] * xs + A[1, 1] * ys + t[1]], dim=-1)
    return tnf.grid_sample(image[None], grid[None], padding_mode="border", align_corners=False)[0]


def content_centre(image: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Where an image's content is, and how far it reaches: the centroid (x, y in [-1, 1]) of the squared
    deviation from each channel's median (a uniform background weighs nothing) and the RMS distance from it."""
    weight = ((image - image.flatten(1).median(dim=1).values[:, None, None]) ** 2).sum(0)
    weight = weight / weight.sum().clamp(min=1e-300)
    ys, xs = _pixel_coordinates(*image.shape[-2:])
    c = torch.stack([(xs * weight).sum(), (ys * weight).sum()])
    return c, float((((xs - c[0]) ** 2 + (ys - c[1]) ** 2) * weight).sum()) ** 0.5


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images [C, h, w] blurred by a Gaussian of `sigma` pixels (separable, edges replicated)."""
    r = max(1, int(3 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    C = x.shape[0]
    y = tnf.conv2d(tnf.pad(x[None], (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return tnf.conv2d(tnf.pad(y, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)[0]


def _register(src: torch.Tensor, dst: torch.Tensor, motion: bool, colour: bool,
              centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The similarity motion p (about `centre`) and per-channel colour map (gain g, offset o) with
    g * warp(src, p) + o closest to dst in least squares: Levenberg-Marquardt on the few parameters (Jacobian by
    central differences: grid_sample has no forward-mode derivative), first on images blurred by 2 pixels, then
    sharp. Returns (p [4], g_o [2, C])."""
    C = src.shape[0]
    identity = torch.cat([torch.zeros(4), torch.ones(C), torch.zeros(C)]).double()
    free = torch.tensor([motion] * 4 + [colour] * (2 * C))

    def unpack(theta):
        full = torch.where(free, theta, identity)
        return full[:4], full[4:].reshape(2, C)

    theta = identity.clone()
    for sigma in (2.0, 0.0):
        a, b = (_blur(src, sigma), _blur(dst, sigma)) if sigma else (src, dst)

        def residual(th):
            p, go = unpack(th)
            w = _similarity_warp(a, p, centre) if motion else a
            return (go[0][:, None, None] * w + go[1][:, None, None] - b).reshape(-1)

        r = residual(theta)
        loss, damping = float(r @ r), 1e-3
        floor = 1e-12 * float(b.pow(2).sum() + a.pow(2).sum())
        for _ in range(20):
            Jt = torch.stack([(residual(theta + 1e-6 * e) - residual(theta - 1e-6 * e)) / 2e-6
                              for e in torch.eye(len(theta), dtype=theta.dtype)[free]])     # J^T [n, N]
            JtJ, g = (Jt[:, None] * Jt[None]).sum(-1), (Jt * r).sum(-1)   # not matmul: slow in small float64
            step = torch.linalg.solve(JtJ + damping * torch.diag(JtJ.diagonal().clamp(min=1e-12)), -g)
            trial = theta.clone()
            trial[free] = theta[free] + step
            r_new = residual(trial)
            new = float(r_new @ r_new)
            if new < loss:
                done = loss - new <= 1e-8 * loss or new <= floor
                theta, r, loss, damping = trial, r_new, new, max(damping / 3, 1e-9)
                if done:
                    break
            else:
                damping *= 10
                if damping > 1e8:
                    break
    return unpack(theta)


def register_change(minus: torch.Tensor, plus: torch.Tensor, strength: float) -> dict:
    """What carries the image edited at -strength to the one edited at +strength, by part: decompose_change's
    result (shares adding up to 1, coefficients per unit strength) read from a registration instead of a linear fit.

    plus ~ g * warp(minus, p) + o: a similarity motion p of the content (shift, scale, rotation about the
    content's centre, content_centre) and a colour map per channel (gain g_c, offset o_c), fitted jointly
    (_register; at most 64 pixels a side). With E0 = ||plus - minus||^2 and E the joint fit's error, the explained
    1 - E / E0 goes to motion and to colour in proportion to what each adds to the other (the error of the fit
    without it, minus E); motion splits into shift, scale and rotation by the squared displacement each makes
    (content at its RMS radius), colour into brightness (the mean offset),
    contrast (the mean gain) and colour (the channels' differences) by the energy of each one's change; the rest,
    E / E0, is split into the coarse, mid and fine bands of the residual. Coefficients are per unit strength over
    the 2 * strength between the images: shift in half-widths (the whole image is the box), scale relative,
    rotation in radians, brightness an offset, colour each channel's offset from their mean."""
    src, dst = minus.detach().double().cpu(), plus.detach().double().cpu()
    if max(src.shape[-2:]) > 64:
        src, dst = (tnf.interpolate(x[None], size=(64, 64), mode="area")[0] for x in (src, dst))
    shares, C = dict.fromkeys(PARTS, 0.0), src.shape[0]
    e0 = float(((dst - src) ** 2).sum())
    if e0 <= 1e-24:
        return {"shares": shares, "outside": None, "coefficients": {}}
    centre, radius = content_centre(src)
    p, go = _register(src, dst, True, True, centre)
    warped = _similarity_warp(src, p, centre)
    fitted = go[0][:, None, None] * warped + go[1][:, None, None]
    rest = dst - fitted
    e = float((rest ** 2).sum())
    without = {}   # the error of the fit without each kind of change
    for name, m, c in (("colour", True, False), ("motion", False, True)):
        q, g = _register(src, dst, m, c, centre)
        w = _similarity_warp(src, q, centre) if m else src
        without[name] = float(((g[0][:, None, None] * w + g[1][:, None, None] - dst) ** 2).sum())
    explained = max(0.0, 1.0 - e / e0)
    adds = {k: max(0.0, v - e) for k, v in without.items()}   # what each adds to the other
    total = adds["motion"] + adds["colour"]
    motion_share = explained * adds["motion"] / total if total > 0 else 0.0
    colour_share = explained - motion_share
    # motion: squared displacement of the content at its RMS radius from its centre (in half-widths)
    moves = {"shift": float(p[0] ** 2 + p[1] ** 2), "scale": float(torch.expm1(p[2]) ** 2) * radius ** 2,
             "rotation": float(p[3] ** 2) * radius ** 2}
    # colour: the energy of the common offset, the common gain and the channels' differences of the map's change
    g, o = go[0], go[1]
    centred = warped - warped.mean()
    fields = {"brightness": (o.mean() + (g.mean() - 1) * warped.mean()) * torch.ones_like(warped),
              "contrast": (g.mean() - 1) * centred}
    fields["colour"] = (fitted - warped) - fields["brightness"] - fields["contrast"]
    level = {k: float((v ** 2).sum()) for k, v in fields.items()}
    for energy, share in ((moves, motion_share), (level, colour_share)):
        tot = sum(energy.values())
        for k in energy:
            shares[k] = share * energy[k] / tot if tot > 0 else 0.0
    for part, (lo, hi) in BANDS.items():
        shares[part] = float((band_pass(rest[None], lo, hi) ** 2).sum()) / e0
    span = 2.0 * float(strength)
    mean_change = (fitted - warped).mean(dim=(1, 2))
    coefficients = {"shift": [float(p[0]) / span, float(p[1]) / span], "scale": [float(torch.expm1(p[2])) / span],
                    "rotation": [float(p[3]) / span], "brightness": [float(mean_change.mean()) / span],
                    "colour": [float(v) / span for v in mean_change - mean_change.mean()] if C > 1 else [],
                    "contrast": [float(g.mean() - 1) / span]}
    return {"shares": shares, "outside": None, "coefficients": coefficients}


def describe_edit(plus: torch.Tensor, minus: torch.Tensor, strength: float, x_is_latent: bool = False) -> dict:
    """A description of what an edit did to the finished image, from the images edited at +strength and
    -strength ([C, h, w] pixels; x for a latent model): register_change, named by name_change. Unlike
    describe_basis (the first-order change of x0_hat at x_t) it reads the edit's whole effect through every
    sampling step after t, large motions included, at the cost of the two edits."""
    parts = register_change(minus, plus, strength)
    parts["name"] = name_change(parts, x_is_latent)
    return parts
