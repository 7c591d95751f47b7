"""Motions of a region's content: how an image changes under a small shift, scaling, rotation and colour offset of
what is inside a region, and the same motion re-made on another image (motion transport).

Motion transport (for x0_hat bases, of a region or the whole image) re-makes a change u0 of one image on another:
u0 is read as an affine motion of the region's content plus a colour offset (least squares on motion_fields), and
the same motion, in units of the other region's box, is made of the other image's own content.
"""
from __future__ import annotations

import torch

from .errors import LatentBasisError
from .masks import mask_in_x


def motion_fields(image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """How an image changes under small affine motions of a region's content, and under a colour offset there.

    image [C, h, w] (an x0_hat, in x); region bool [C, h, w] (every channel of a pixel alike), with bounding box
    of centre c = (cx, cy) and half-sizes (hx, hy) in pixels. Moving the content by a displacement field w(p)
    changes the image, to first order, by
        dI(p) = -grad I(p) . w(p)
    for w = (hx, 0) and (0, hy) (a shift by half the box along x and along y), w = p - c (a scaling about the
    centre) and w = (-(y - cy), x - cx) (a rotation about it); the last C fields add 1 to one channel each.
    grad I: central differences (torch.gradient). Returns G [4 + C, C, h, w], every field zero outside the region.
    """
    C, h, w = image.shape
    inside = region.any(0)
    ys, xs = inside.nonzero(as_tuple=True)
    if len(ys) == 0:
        raise LatentBasisError("the region is empty: it marks no pixel")
    cy, cx = (float(ys.min()) + float(ys.max())) / 2, (float(xs.min()) + float(xs.max())) / 2
    hy, hx = (float(ys.max() - ys.min()) + 1) / 2, (float(xs.max() - xs.min()) + 1) / 2
    img = image.double()
    gy, gx = torch.gradient(img, dim=(1, 2))
    yy = (torch.arange(h, dtype=torch.float64) - cy)[:, None].expand(h, w)
    xx = (torch.arange(w, dtype=torch.float64) - cx)[None, :].expand(h, w)
    fields = [-gx * hx, -gy * hy, -(gx * xx + gy * yy), -(-gx * yy + gy * xx)]
    for c in range(C):
        o = torch.zeros_like(img)
        o[c] = 1.0
        fields.append(o)
    return torch.stack(fields) * region.double()


def motion_transport(u0: torch.Tensor, image0: torch.Tensor, region0: torch.Tensor, image1: torch.Tensor,
                     region1: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The same motion on another image: a change u0 [C, h, w] of image0 in region0, re-made in region1 of image1.

        c = argmin_c ||G0 c - u0||  (least squares),   u1 = G1 c,   share = ||G0 c|| / ||u0||
    with G = motion_fields(image, region). The coefficients are in units of each region's box (a shift by half the
    box, a relative scaling, an angle, a colour offset), so a larger shape moves in proportion, and u1 is made of
    image1's own gradients (its colours, its edges). share: how much of u0 is such a motion and offset (1: all of
    it; near 0: u0 is not a motion of the region, and its transport means little). Returns (u1 [C, h, w], share).
    """
    G0 = motion_fields(image0, region0).reshape(-1, u0.numel()).T
    u = u0.reshape(-1).double()
    c = torch.linalg.lstsq(G0, u[:, None]).solution[:, 0]
    share = float((G0 @ c).norm() / u.norm().clamp(min=1e-300))
    u1 = torch.einsum("j,j...->...", c, motion_fields(image1, region1))
    return u1.float(), share


def motion_carried_row(row: torch.Tensor, image0: torch.Tensor, region0: torch.Tensor, image1: torch.Tensor,
                       region1: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One tangent row of an x0_hat basis, carried to another image as the same motion of its region's content.

    row: the change of x0_hat inside region0 (its entries in region0's order, [n0]); region0, region1 bool
    [C, h, w] (all True: the whole image). The row is placed in image0's shape, re-made on image1 by
    motion_transport, and read back inside region1: the tangent vector of the target's region basis, ready for
    transport. Returns (row1 [n1], share)."""
    u0 = torch.zeros(region0.shape)
    u0[region0] = row.reshape(-1).float()
    u1, share = motion_transport(u0, image0, region0, image1, region1)
    return u1[region1], share


def region_in_x(model, mask: torch.Tensor | None) -> torch.Tensor:
    """The region of an image mask [S, S] in x (bool [*x_shape]); all of x for None (the whole image)."""
    return mask_in_x(model, mask) if mask is not None else torch.ones(model.x_shape, dtype=torch.bool)
