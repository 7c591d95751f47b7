"""A finished edit described by registration: the image edited at -strength carried onto the one at +strength by a
similarity motion of its content and a colour map that treats the content and the background apart (register_change),
the rest split by frequency, so that the shares read as describe.decompose_change's do (describe_edit names them).
Unlike describe.describe_basis (the first-order change of x0_hat at x_t) it reads an edit's whole effect through
every sampling step after t.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as tnf

from .describe import BANDS, PARTS, name_change, with_conditions
from .editing import EditSettings, edit_pairs
from .geometry import band_pass
from . import validate


@functools.lru_cache(maxsize=8)
def _pixel_coordinates(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, x) of each pixel's centre [h, w], float64, in coordinates of [-1, 1] across the image (grid_sample's with
    align_corners=False). Cached: the registration warps the same grid hundreds of times; callers do not mutate it."""
    return torch.meshgrid(*((torch.arange(n, dtype=torch.float64) + 0.5) * 2 / n - 1 for n in (h, w)), indexing="ij")


def _similarity_warp(image: torch.Tensor, p: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """image [C, h, w] with its content moved by p = (dx, dy, log scale, angle) about `centre` (x, y; None: the
    image's centre): the output at q is the image at T^-1 q, T q = c + e^ls R(angle) (q - c) + (dx, dy), in
    coordinates of [-1, 1] across the image (dx = 1: half the width; y down, so a positive angle turns clockwise on
    screen). p may be a batch of motions [B, 4]: then [B, C, h, w], one grid_sample for all."""
    one = p.dim() == 1
    p = p[None] if one else p                                          # [B, 4]
    c = torch.zeros(2, dtype=p.dtype) if centre is None else centre.to(p.dtype)
    s, a = torch.exp(-p[:, 2]), -p[:, 3]
    cos, sin = s * torch.cos(a), s * torch.sin(a)
    A = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)      # [B, 2, 2]
    ys, xs = (v.to(p.dtype) for v in _pixel_coordinates(*image.shape[-2:]))
    t = c - (A @ (c + p[:, :2])[..., None])[..., 0]   # the grid affine_grid makes, written out (both are slow on
    A, t = A[:, :, :, None, None], t[:, :, None, None]  # small float64 grids)
    grid = torch.stack([A[:, 0, 0] * xs + A[:, 0, 1] * ys + t[:, 0], A[:, 1, 0] * xs + A[:, 1, 1] * ys + t[:, 1]],
                       dim=-1)                                        # [B, h, w, 2]
    out = tnf.grid_sample(image[None].expand(len(p), *image.shape), grid, padding_mode="border", align_corners=False)
    return out[0] if one else out


def content_mask(image: torch.Tensor) -> torch.Tensor:
    """Where an image's content is, softly [h, w] in [0, 1]: each pixel's colour distance from the image's median
    colour (the background, where it covers most of the image), relative to the content's level (the median
    distance among the pixels at least half as far as the farthest); 1 from there up. For one flat-coloured object
    that is each pixel's coverage (an edge pixel half covered reads 0.5); a shaded or grey-stroked content counts
    whole (relative to the farthest pixel alone, a digit's grey strokes were half content, and the registration
    zoomed a 16-pixel digit sevenfold to fit its change)."""
    dev = ((image - image.flatten(1).median(dim=1).values[:, None, None]) ** 2).sum(0).sqrt()
    top = float(dev.max())
    if top <= 0:
        return torch.zeros_like(dev)
    level = float(dev[dev >= 0.5 * top].median())
    return (dev / level).clamp(max=1.0)


def content_centre(image: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The centroid (x, y in [-1, 1]) of an image's content_mask and the square root of its area (in the same
    units: the content's extent)."""
    m = content_mask(image)
    area = m.sum().clamp(min=1e-300)
    ys, xs = _pixel_coordinates(*image.shape[-2:])
    c = torch.stack([(xs * m).sum() / area, (ys * m).sum() / area])
    return c, float(area * 4 / m.numel()) ** 0.5


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images [C, h, w] blurred by a Gaussian of `sigma` pixels (separable, edges replicated)."""
    r = max(1, int(3 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    C = x.shape[0]
    y = tnf.conv2d(tnf.pad(x[None], (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return tnf.conv2d(tnf.pad(y, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)[0]


def _modelled(src: torch.Tensor, mask: torch.Tensor, theta: torch.Tensor, centre: torch.Tensor):
    """The registration's model of the edited image, with theta = (p [4], G [C], o_in [C], o_out [C]):

        model = w + (G - 1) (w - b) + m o_in + (1 - m) o_out,   w = warp(src, p), m = warp(mask, p)

    a similarity motion p of the content (about `centre`), a gain per channel of each pixel's deviation from the
    background colour b (src's median colour), and a colour offset per channel inside the moved content and one
    outside it. Returns (model, w, m); theta may be a batch [B, 3C + 4], then each has a leading B."""
    C = src.shape[0]
    one = theta.dim() == 1
    th = theta[None] if one else theta
    p, G, o_in, o_out = th[:, :4], th[:, 4:4 + C], th[:, 4 + C:4 + 2 * C], th[:, 4 + 2 * C:4 + 3 * C]
    both = _similarity_warp(torch.cat([src, mask[None]]), p, centre)       # content and mask, one warp
    w, m = both[:, :C], both[:, C:]
    b = src.flatten(1).median(dim=1).values[:, None, None]
    G, o_in, o_out = (v[:, :, None, None] for v in (G, o_in, o_out))
    model = w + (G - 1) * (w - b) + m * o_in + (1 - m) * o_out
    m = m[:, 0]
    return (model[0], w[0], m[0]) if one else (model, w, m)


def _register(src: torch.Tensor, dst: torch.Tensor, mask: torch.Tensor, centre: torch.Tensor,
              start: torch.Tensor | None = None, rotation: bool = True) -> torch.Tensor:
    """The parameters theta of _modelled closest to dst in least squares, the motion and the colour map together
    (rotation=False: the motion's angle held at 0): Levenberg-Marquardt on the few parameters (Jacobian by central
    differences: grid_sample has no forward-mode derivative), from `start` (theta's first entries, the motion's or
    all; None: the identity), first on images blurred by 2 pixels, then sharp."""
    C = src.shape[0]
    identity = torch.cat([torch.zeros(4), torch.ones(C), torch.zeros(2 * C)]).double()
    free = torch.tensor([True] * 3 + [rotation] + [True] * (3 * C))
    theta = identity.clone()
    if start is not None:                    # the free parameters it gives (the motion's, or the motion's and colour's)
        theta[:len(start)] = torch.where(free[:len(start)], start.to(theta.dtype), theta[:len(start)])
    for sigma in (2.0, 0.0):
        a, b, mk = (_blur(src, sigma), _blur(dst, sigma), _blur(mask[None], sigma)[0]) if sigma else (src, dst, mask)

        def residual(th):      # one theta [P] -> [N], or a batch [B, P] -> [B, N]
            return (_modelled(a, mk, torch.where(free, th, identity), centre)[0] - b).reshape(*th.shape[:-1], -1)

        r = residual(theta)
        loss, damping = float(r @ r), 1e-3
        floor = 1e-12 * float(b.pow(2).sum() + a.pow(2).sum())
        steps = 1e-6 * torch.eye(len(theta), dtype=theta.dtype)[free]
        for _ in range(20):
            both = residual(torch.cat([theta + steps, theta - steps]))      # every difference in one batch
            Jt = (both[:len(steps)] - both[len(steps):]) / 2e-6              # J^T [n, N]
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
    return torch.where(free, theta, identity)


TURN_OVERLAP = 0.9   # a turn is named only where the turned content's outline covers the edited one's this well


def outline_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """The soft intersection over union of two content masks [h, w] in [0, 1], sum min(a, b) / sum max(a, b): 1 for
    one outline, 0.84 for a square against the circle of its area, 0.79 for a square against itself turned by
    20 degrees; 1 where both are empty."""
    union = float(torch.maximum(a, b).sum())
    return float(torch.minimum(a, b).sum()) / union if union > 0 else 1.0


def _error(src, dst, mask, theta, centre) -> float:
    return float(((_modelled(src, mask, theta, centre)[0] - dst) ** 2).sum())


def register_change(minus: torch.Tensor, plus: torch.Tensor, strength: float) -> dict:
    """What carries the image edited at -strength to the one edited at +strength, by part: decompose_change's
    result (shares adding up to 1, coefficients per unit strength) read from a registration instead of a linear fit.

    plus ~ _modelled(minus): a similarity motion p of the content (shift, scale, rotation about the content's
    centre, content_centre), a gain per channel of the deviation from the background colour and a colour offset
    per channel inside the content and one outside it, fitted jointly (_register; at most 64 pixels a side), from
    no motion, from the motion the contents' centroids and areas suggest (a jump is out of a local fit's reach),
    and from that motion with the contents' and backgrounds' mean colour change (a large recolouring is too), the
    best kept (or none, where no fit comes closer than the image at -strength itself). With E0 = ||plus -
    minus||^2 and E the joint fit's error (a fit that turns the content is kept only where the turned content's
    outline covers the edited one's, outline_overlap >= TURN_OVERLAP; elsewhere the turn was a least-squares
    stand-in for a change of outline, and the fit is made again without one), the explained 1 - E / E0 goes to
    motion and to colour in proportion to the pixel change each makes alone, ||warp(minus, p) - minus||^2 against
    ||colour map(minus) - minus||^2 (the currency of the shares: a jump of the object counts its whole area twice, a
    recolouring once). Motion splits
    into shift, scale and rotation the same way (||warp(minus, that part of p) - minus||^2); colour by the energy
    of the parts of the colour map's change L: colour its channels' differences, brightness its channel mean where
    that is one level inside the content and one outside (least squares), contrast the rest of the mean (shading
    within a region). The rest, E / E0, is split into the coarse, mid and fine bands of the residual. Coefficients
    are per unit strength over the 2 * strength between the images: shift in half-widths (the whole image is the
    box), scale relative, rotation in radians, brightness the mean offset, colour each channel's mean offset from
    their mean, contrast the mean gain; "brightness where" and "colour where" give the background's part of that
    change (its level, or its colour offset's size, outside the content against inside; 1: only the
    background's)."""
    src, dst = minus.detach().double().cpu(), plus.detach().double().cpu()
    if max(src.shape[-2:]) > 64:
        src, dst = (tnf.interpolate(x[None], size=(64, 64), mode="area")[0] for x in (src, dst))
    shares, C = dict.fromkeys(PARTS, 0.0), src.shape[0]
    e0 = float(((dst - src) ** 2).sum())
    if e0 <= 1e-24:
        return {"shares": shares, "outside": None, "coefficients": {}}
    mask = content_mask(src)
    (centre, extent), (centre1, extent1) = content_centre(src), content_centre(dst)
    start = torch.cat([centre1 - centre, torch.tensor([torch.log(torch.tensor(max(extent1, 1e-12) /
                                                                              max(extent, 1e-12))), 0.0])]).double()
    bg0, bg1 = (x.flatten(1).median(dim=1).values for x in (src, dst))
    mask1 = content_mask(dst)
    mean0, mean1 = ((x * mk).sum((1, 2)) / mk.sum().clamp(min=1e-12) for x, mk in ((src, mask), (dst, mask1)))
    recoloured = torch.cat([start, torch.ones(C, dtype=start.dtype), mean1 - mean0, bg1 - bg0])
    identity = torch.cat([torch.zeros(4), torch.ones(C), torch.zeros(2 * C)]).double()

    def best(rotation: bool) -> torch.Tensor:
        fits = [_register(src, dst, mask, centre, s, rotation) for s in (start, None, recoloured)]
        # the identity too: a fit refined on blurred images can end sharp farther off than no change at all, and
        # then the rest would hold more than the whole change (shares over 1)
        return min(fits + [identity], key=lambda th: _error(src, dst, mask, th, centre))

    theta = best(rotation=True)
    if float(theta[3]) != 0.0 and outline_overlap(_modelled(src, mask, theta, centre)[2], mask1) < TURN_OVERLAP:
        theta = best(rotation=False)   # the turn did not carry the outline onto the outline: a change of outline
    fitted, warped, m = _modelled(src, mask, theta, centre)
    rest = dst - fitted
    e = float((rest ** 2).sum())
    explained = max(0.0, 1.0 - e / e0)
    p = theta[:4]

    def alone(*i):   # the pixel change of one part of the motion (all four: the whole motion)
        q = torch.zeros(4, dtype=p.dtype)
        q[list(i)] = p[list(i)]
        return float(((_similarity_warp(src, q, centre) - src) ** 2).sum())

    still = torch.cat([torch.zeros(4, dtype=theta.dtype), theta[4:]])
    alone_motion = alone(0, 1, 2, 3)
    alone_colour = float(((_modelled(src, mask, still, centre)[0] - src) ** 2).sum())
    motion_share = explained * alone_motion / (alone_motion + alone_colour) if alone_motion + alone_colour > 0 else 0.0
    colour_share = explained - motion_share

    moves = {"shift": alone(0, 1), "scale": alone(2), "rotation": alone(3)}
    # the colour map's change L = fitted - warped: its channels' differences are colour; its channel mean, where it
    # is one level inside the content and one outside, brightness; the rest of the mean (shading) contrast
    change = fitted - warped
    mean = change.mean(0)
    inout = torch.stack([m.reshape(-1), (1 - m).reshape(-1)], 1)                  # [N, 2]
    levels = torch.linalg.lstsq(inout, mean.reshape(-1, 1)).solution[:, 0]         # inside, outside
    piecewise = (inout @ levels).reshape(mean.shape)
    fields = {"brightness": piecewise.expand_as(change), "colour": change - mean,
              "contrast": (mean - piecewise).expand_as(change)}
    G = theta[4:4 + C]
    level = {k: float((v ** 2).sum()) for k, v in fields.items()}
    for energy, share in ((moves, motion_share), (level, colour_share)):
        tot = sum(energy.values())
        for k in energy:
            shares[k] = share * energy[k] / tot if tot > 0 else 0.0
    for part, (lo, hi) in BANDS.items():
        shares[part] = float((band_pass(rest[None], lo, hi) ** 2).sum()) / e0
    span = 2.0 * float(strength)
    mean_change = change.mean(dim=(1, 2))
    inside = (fields["colour"] * m).sum(dim=(1, 2)) / m.sum().clamp(min=1e-12)         # per channel
    outside = (fields["colour"] * (1 - m)).sum(dim=(1, 2)) / (1 - m).sum().clamp(min=1e-12)

    def where(a: float, b: float) -> list[float]:   # the background's part of an offset's size
        return [b / (a + b)] if a + b > 0 else []

    coefficients = {"shift": [float(p[0]) / span, float(p[1]) / span], "scale": [float(torch.expm1(p[2])) / span],
                    "rotation": [float(p[3]) / span], "brightness": [float(mean_change.mean()) / span],
                    "colour": [float(v) / span for v in mean_change - mean_change.mean()] if C > 1 else [],
                    "contrast": [float(G.mean() - 1) / span],
                    "brightness where": where(abs(float(levels[0])), abs(float(levels[1]))),
                    "colour where": where(float(inside.norm()), float(outside.norm()))}
    return {"shares": shares, "outside": None, "coefficients": coefficients}


def describe_edit(plus: torch.Tensor, minus: torch.Tensor, strength: float, x_is_latent: bool = False,
                  mask: torch.Tensor | None = None) -> dict:
    """A description of what an edit did to the finished image, from the images edited at +strength and
    -strength ([C, h, w] pixels; x for a latent model): register_change, named by name_change, marked as this
    reading ("reading": "edit", "strength"). Unlike describe_basis (the first-order change of x0_hat at x_t) it
    reads the edit's whole effect through every sampling step after t, large motions included, at the cost of the
    two edits. With a region (an image mask [h, w], a local basis') "outside" is the share of the change outside
    it, ||(plus - minus) off the mask||^2 / ||plus - minus||^2, and the name says where the change is, as
    describe_basis' names do."""
    parts = register_change(minus, plus, strength)
    if mask is not None:
        change2 = ((plus.double() - minus.double()) ** 2).sum(0)
        total = float(change2.sum())
        parts["outside"] = float(change2[~mask.bool()].sum()) / total if total > 0 else None
    parts["name"] = name_change(parts, x_is_latent)
    parts["reading"], parts["strength"] = "edit", float(strength)
    return parts


def describe_pairs(images: torch.Tensor, strength: float, mask: torch.Tensor | None = None) -> list[dict]:
    """describe_edit of each direction's pair of edited images, images [k, 2, C, H, W] at -strength and +strength
    (pixels); mask: a region's, as describe_edit's."""
    return [describe_edit(plus, minus, strength, mask=mask) for minus, plus in images]


READINGS = ("edit", "change")


def description_reading(model, reading: str | None) -> str:
    """The reading a basis of `model` is described by: `reading` ("edit": registered edits, describe_by_edits;
    "change": the first-order change of x0_hat, describe.describe_basis) checked, or where None, "edit" where x is
    the image and "change" where it is a VAE's latent (there each edit runs the whole network through every step
    after t and decodes: 2k of them cost several times the basis; at Stable Diffusion size on a CPU an estimated
    hour)."""
    if reading is None:
        return "change" if model.x_is_latent else "edit"
    return validate.choice(reading, "describe", READINGS)


def describe_by_edits(model, basis, trajectory, strength: float = 6.0, settings: EditSettings | None = None,
                      conditions: bool = True, progress=None) -> list[dict]:
    """A description of every direction of a basis by what its edit does to the finished image: each v_i applied at
    -strength and +strength from the basis' timestep of `trajectory` (the trajectory whose x_t the basis was
    computed at; 2k edits, editing.edit_pairs with `settings`, the published guidance by default),
    the pairs described by describe_pairs (register_change, named by name_change). The reading `latentbasis edit`
    prints for its rows and benchmarks/describe_shapes.py measures; describe.describe_basis is the first-order one
    (the change of x0_hat at x_t, k JVPs, no edits). conditions: also the label each direction follows
    (describe.condition_alignment). Stored in basis.descriptions (and so in the basis file); returned."""
    validate.describing_strength(strength)
    images = edit_pairs(model, trajectory, int(basis.timestep), basis.latent, strength,
                        settings or EditSettings("guidance"), progress)
    basis.descriptions = with_conditions(model, basis, describe_pairs(images, strength, basis.mask), conditions)
    return basis.descriptions
