"""Directions that explain themselves: what a basis direction does to the denoised image, without supervision.

A direction v at x_t changes the denoised estimate by u = J_x0 v (J_x0 = d x0_hat / d x_t, one JVP): the first-order
change of the image the slider's "+" makes, per unit of strength. u [C, h, w] is fitted by least squares with the
fields of all the named parts at once, u = sum_g F_g c_g + rest; the named parts share ||proj||^2 / ||u||^2 in
proportion to ||F_g c_g||^2 (exact where u is one part's field: that part gets all of it), and the rest, orthogonal
to every field, is split by frequency, so the shares add up to 1:

    shift      the content moving along x and along y: -grad I . (hx, 0), -grad I . (0, hy)  (I = x0_hat)
    scale      the content growing about the centre of its box: -grad I . (p - c)
    rotation   the content turning about it: -grad I . (-(y - cy), x - cx)       (latentbasis.motion.motion_fields)
    brightness the same offset in every channel
    colour     offsets between the channels (C > 1)
    contrast   the image's own deviation from its mean, scaled: I - mean(I)
    coarse / mid / fine   what is left, split by radial frequency at 1/8 and 1/4 cycles per pixel (Parseval: the
               three bands are orthogonal and add up to it)
Within a region (a mask) the fields live inside it and the box is the region's; the change outside is reported as
its own share (`outside`), and the parts divide the inside.

The name says "+" of the slider from the largest parts (those of at least a quarter of the change, at most two,
or the largest), with sign and size per unit strength (two significant digits): "shifts right 0.03 box",
"grows 1.2 %", "turns 0.5 deg",
"brightens", "more red", "more contrast", "coarse shape", "fine detail".
"""
from __future__ import annotations

import functools
import json
import math

import torch
import torch.nn.functional as tnf

from .errors import LatentBasisError
from .geometry import band_pass
from .motion import motion_fields, region_in_x
from .validate import parse_json, printable

PARTS = ("shift", "scale", "rotation", "brightness", "colour", "contrast", "coarse", "mid", "fine")
BANDS = {"coarse": (0.0, 0.125), "mid": (0.125, 0.25), "fine": (0.25, math.inf)}
CHANNEL_NAMES = ("red", "green", "blue")
NAMED_SHARE = 0.25       # a part names the direction when it holds at least this share of the change


def _fields(image: torch.Tensor, region: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fields of each non-frequency part, {part: [n, C, h, w]} (float64, zero outside the region)."""
    C = image.shape[0]
    G = motion_fields(image, region)                       # shift x, shift y, scale, rotation, C channel offsets
    r = region.double()
    inside = image.double()[region]
    centred = (image.double() - inside.mean()) * r
    offsets = G[4:]
    return {"shift": G[0:2], "scale": G[2:3], "rotation": G[3:4], "brightness": offsets.sum(0, keepdim=True),
            "colour": offsets[: C - 1] if C > 1 else offsets[:0], "contrast": centred[None]}


def decompose_change(image: torch.Tensor, change: torch.Tensor, region: torch.Tensor | None = None) -> dict:
    """Shares of a change of the denoised image by part (see the module docstring).

    image, change: [C, h, w] (x0_hat and u = J_x0 v); region: bool [C, h, w] or None (the whole image).
    Returns {"shares": {part: share}, "outside": share or None, "coefficients": {...}} where the coefficients
    give sign and size: shift (x, y) in half-box units, scale (relative), rotation (radians), brightness (offset),
    colour (offset of each channel from their mean), contrast (relative)."""
    image, u = image.detach().double().cpu(), change.detach().double().cpu()
    if image.shape != u.shape or image.dim() != 3:
        raise LatentBasisError(f"image {tuple(image.shape)} and change {tuple(u.shape)} must both be [C, h, w]")
    region = torch.ones(image.shape, dtype=torch.bool) if region is None else region.bool().cpu()
    total = float((u ** 2).sum())
    outside = float((u[~region] ** 2).sum()) / total if region.any() and not region.all() and total > 0 else None
    u = u * region.double()
    norm2 = float((u ** 2).sum())
    shares = dict.fromkeys(PARTS, 0.0)
    coefficients: dict = {}
    if norm2 == 0:
        return {"shares": shares, "outside": outside, "coefficients": coefficients}
    fields = {p: F for p, F in _fields(image, region).items() if F.shape[0]}
    A = torch.cat([F.reshape(F.shape[0], -1) for F in fields.values()]).T          # [D, n], all parts at once
    coef = torch.linalg.lstsq(A, u.reshape(-1, 1), driver="gelsd").solution[:, 0]
    proj = A @ coef
    rest = u.reshape(-1) - proj                                                    # orthogonal to every field
    raw, at = {}, 0
    for part, F in fields.items():
        c = coef[at: at + F.shape[0]]
        raw[part] = float(((F.reshape(F.shape[0], -1).T @ c) ** 2).sum())
        coefficients[part] = [float(v) for v in c]
        at += F.shape[0]
    named = float(proj @ proj) / norm2
    for part, r in raw.items():
        shares[part] = named * r / max(sum(raw.values()), 1e-300)
    rest = rest.reshape(u.shape)
    for part, (lo, hi) in BANDS.items():
        b = band_pass(rest[None], lo, hi)
        shares[part] = float((b ** 2).sum()) / norm2
    coefficients["colour"] = _channel_offsets(u, region) if image.shape[0] > 1 else []
    return {"shares": shares, "outside": outside, "coefficients": coefficients}


def _channel_offsets(u: torch.Tensor, region: torch.Tensor) -> list[float]:
    """Each channel's mean change inside the region minus the channels' mean."""
    means = torch.stack([u[c][region[c]].mean() if region[c].any() else u.new_zeros(()) for c in range(u.shape[0])])
    return [float(m) for m in means - means.mean()]


def name_change(parts: dict, x_is_latent: bool = False) -> str:
    """A short name of "+" from decompose_change's result: the parts of at least NAMED_SHARE (at most two; else
    the largest), each with its sign and size."""
    shares, coef = parts["shares"], parts["coefficients"]
    ranked = sorted(shares, key=lambda p: -shares[p])
    chosen = [p for p in ranked if shares[p] >= NAMED_SHARE][:2] or ranked[:1]
    words = [_word(p, coef.get(p, []), x_is_latent) for p in chosen]
    if parts.get("outside") is not None:
        words.append("mostly outside the region" if parts["outside"] > 0.5 else "inside the region")
    return ", ".join(words)


def _word(part: str, c: list, x_is_latent: bool) -> str:
    if part == "shift":
        dx, dy = (c + [0.0, 0.0])[:2]
        if abs(dx) >= abs(dy):
            return f"shifts {'right' if dx > 0 else 'left'} {abs(dx) / 2:.2g} box"
        return f"shifts {'down' if dy > 0 else 'up'} {abs(dy) / 2:.2g} box"
    if part == "scale":
        s = c[0] if c else 0.0
        return f"{'grows' if s > 0 else 'shrinks'} {abs(s) * 100:.2g} %"
    if part == "rotation":
        r = c[0] if c else 0.0
        return f"turns {'clockwise' if r > 0 else 'counter-clockwise'} {abs(math.degrees(r)):.2g} deg"
    if part == "brightness":
        up = (c[0] if c else 0.0) > 0
        return ("raises the latent's level" if up else "lowers the latent's level") if x_is_latent else \
            ("brightens" if up else "darkens")
    if part == "colour":
        if not c:
            return "shifts colour"
        i = max(range(len(c)), key=lambda j: abs(c[j]))
        label = CHANNEL_NAMES[i] if len(c) == 3 and not x_is_latent else f"channel {i + 1}"
        return f"{'more' if c[i] > 0 else 'less'} {label}"
    if part == "contrast":
        return "more contrast" if (c[0] if c else 0.0) > 0 else "less contrast"
    return {"coarse": "coarse shape", "mid": "mid-scale detail", "fine": "fine detail"}[part]


def shares_text(parts: dict, top: int = 3) -> str:
    """'shift 0.62, scale 0.20, fine 0.08': the largest shares."""
    s = parts["shares"]
    return ", ".join(f"{p} {s[p]:.2f}" for p in sorted(s, key=lambda p: -s[p])[:top])


GROUPS = {"motion": ("shift", "scale", "rotation"), "level and colour": ("brightness", "colour", "contrast"),
          "coarse": ("coarse",), "mid": ("mid",), "fine": ("fine",)}


def group_shares(descriptions: list[dict]) -> dict[str, float]:
    """The mean share of each group of parts (GROUPS) over a basis' directions: how much of what the basis does
    is motion, level and colour, and each frequency band."""
    return {g: float(sum(sum(d["shares"][p] for p in parts) for d in descriptions) / len(descriptions))
            for g, parts in GROUPS.items()}


def description_lines(basis) -> list[str]:
    """'v1  shifts right 0.30 box (shift 0.81, fine 0.10, scale 0.05)' for every direction; 'v1  no description'
    for a basis without them (older files)."""
    if not basis.descriptions:
        return [f"v{i + 1}  no description" for i in range(basis.k)]
    return [f"v{i + 1}  {d['name']} ({shares_text(d)})" for i, d in enumerate(basis.descriptions)]


def summary_lines(b) -> list[str]:
    """A basis in a few lines: its singular values, its cost, and what each direction does (description_lines)."""
    return [f"singular values: {', '.join(f'{float(s):.4g}' for s in b.singular_values)}",
            f"cost: {b.jvps} JVPs + {b.vjps} VJPs, {b.iterations} iterations, {b.seconds:.2f} s ({b.algorithm}); "
            f"max residual {float(b.residuals.max()):.1e}", *description_lines(b)]


def describe_basis(model, basis) -> list[dict]:
    """A description of every direction of a basis: [{"name", "shares", "outside", "coefficients"}], from the
    change of x0_hat along v_i at the basis' point and timestep (k JVPs through the denoised estimate; float32 on
    the model's device). Stored in basis.descriptions (and so in the basis file)."""
    from torch.func import jvp

    if basis.timestep is None:
        raise LatentBasisError("the basis does not record its timestep: it cannot be described")
    x0 = model.denoised_function(int(basis.timestep), model.encode_prompt(basis.prompt))
    x = basis.point.to(model.device, torch.float32)[None]
    with torch.no_grad():
        image = x0(x)[0].float().cpu()
    region = region_in_x(model, basis.mask) if basis.mask is not None else None
    out = []
    for v in basis.latent:
        change = jvp(x0, (x,), (v.to(model.device, torch.float32)[None],))[1][0].float().cpu()
        parts = decompose_change(image, change, region)
        parts["name"] = name_change(parts, model.x_is_latent)
        out.append(parts)
    basis.descriptions = out
    return out


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


def descriptions_to_json(descriptions: list[dict] | None) -> str:
    return json.dumps([{"name": d["name"], "shares": d["shares"], "outside": d.get("outside")}
                       for d in descriptions or []])


def descriptions_from_json(text: str, k: int) -> list[dict] | None:
    """The descriptions a basis file stores, each field checked (a file is data: names are printed escaped);
    None for an empty list (older files)."""
    data = parse_json(text, "the basis file's descriptions")
    if not isinstance(data, list) or (data and len(data) != k):
        raise LatentBasisError(f"the basis file's descriptions are not a list of {k}")
    out = []
    for d in data:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not isinstance(d.get("shares"), dict):
            raise LatentBasisError("a description in the basis file has no name or shares")
        shares = {}
        for p in PARTS:
            s = d["shares"].get(p, 0.0)
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) <= 1.0 + 1e-6:
                raise LatentBasisError(f"a description's share {p!r} in the basis file is not a number in [0, 1]")
            shares[p] = float(s)
        o = d.get("outside")
        if o is not None and (isinstance(o, bool) or not isinstance(o, (int, float)) or not 0.0 <= float(o) <= 1.0):
            raise LatentBasisError("a description's outside share in the basis file is not a number in [0, 1]")
        out.append({"name": printable(d["name"][:200]), "shares": shares, "outside": o, "coefficients": {}})
    return out or None


# what a user may ask for: words -> (part, component, sign); component indexes the part's coefficients
QUERIES = {
    "shift right": ("shift", 0, 1), "shift left": ("shift", 0, -1), "shift down": ("shift", 1, 1),
    "shift up": ("shift", 1, -1), "motion:x+": ("shift", 0, 1), "motion:x-": ("shift", 0, -1),
    "motion:y+": ("shift", 1, 1), "motion:y-": ("shift", 1, -1), "grow": ("scale", 0, 1), "shrink": ("scale", 0, -1),
    "motion:scale+": ("scale", 0, 1), "motion:scale-": ("scale", 0, -1), "turn": ("rotation", 0, 1),
    "motion:rotation+": ("rotation", 0, 1), "motion:rotation-": ("rotation", 0, -1), "brighten": ("brightness", 0, 1),
    "darken": ("brightness", 0, -1), "more contrast": ("contrast", 0, 1), "less contrast": ("contrast", 0, -1),
    "colour": ("colour", None, 1), "coarse shape": ("coarse", None, 1), "mid-scale detail": ("mid", None, 1),
    "fine detail": ("fine", None, 1),
}


def pick_direction(descriptions: list[dict], query: str) -> tuple[int, int, str]:
    """The direction whose description best matches a query ("shift right", "motion:x+", "grow", "fine detail";
    QUERIES lists them): the largest share of the asked part, times, for a motion along one axis, the fraction of
    the motion along it. Returns (index, sign, what was picked): sign -1 when the direction's "+" goes the other
    way (the edit then runs along -v)."""
    q = " ".join(str(query).lower().split())
    if q not in QUERIES:
        raise LatentBasisError(f"direction {str(query)[:40]!r} is not one latentbasis can look for; ask for one of "
                               f"{', '.join(QUERIES)}")
    part, comp, want = QUERIES[q]
    best, score, sign = None, -1.0, 1
    for i, d in enumerate(descriptions):
        c = d.get("coefficients", {}).get(part, [])
        frac, s = 1.0, 1
        if comp is not None and c:
            frac = abs(c[comp]) / max(math.sqrt(sum(x * x for x in c)), 1e-300)
            s = 1 if c[comp] * want >= 0 else -1
        value = d["shares"][part] * frac
        if value > score:
            best, score, sign = i, value, s
    if best is None:
        raise LatentBasisError("the basis has no directions to choose from")
    what = (f"{q}: v{best + 1}{' (its -)' if sign < 0 else ''}, {part} share {descriptions[best]['shares'][part]:.2f}"
            f" ({descriptions[best]['name']})")
    return best, sign, what
