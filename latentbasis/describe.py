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

import json
import math

import torch

from .basis import region_maps
from .errors import LatentBasisError, printable
from .geometry import band_pass
from .jacobian import JacobianOperator
from .motion import motion_fields, region_in_x
from .validate import model as check_model, parse_json

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
    words = [_word(p, coef.get(p, []), x_is_latent) + _where(p, coef.get(f"{p} where")) for p in chosen]
    if parts.get("outside") is not None:
        words.append("mostly outside the region" if parts["outside"] > 0.5 else "inside the region")
    return ", ".join(words)


def _where(part: str, background: list | None) -> str:
    """Where a level or colour change is, when nearly only one region's (registration's "brightness where" and
    "colour where": the background's part of the offset, >= 0.8 or <= 0.2): " the background", " in the content";
    "" otherwise."""
    if not background or 0.2 < background[0] < 0.8:
        return ""
    region = "the background" if background[0] >= 0.8 else "the content"
    return f" {region}" if part == "brightness" else f" in {region}"


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


def reading_text(descriptions: list[dict]) -> str:
    """What a basis' descriptions read: 'as edited from -6 to +6 and registered' (registration.describe_by_edits)
    or 'by the first-order change of x0_hat at x_t' (describe_basis; files without a reading are of that one)."""
    d = descriptions[0]
    where = (f" on each of {d['samples']} samples (carried onto each sample's basis; what most of them show)"
             if d.get("samples") else "")
    if d.get("reading") == "edit":
        return (f"as edited from {-d['strength']:+g} to {d['strength']:+g}{where} and registered "
                "(per unit strength)")
    return f"by the first-order change of x0_hat at x_t{where} (per unit strength)"


UNITS = ("box", "%", "deg")                                                             # _word's sizes
WHERE = (" in the background", " in the content", " the background", " the content")   # _where's places


def gist(name: str) -> str:
    """What a description's name says of its main part, without size or place: its first part's words, numbers,
    units and where it is left out ("shifts right 0.03 box, grows 5 %" -> "shifts right"; "darkens the background"
    -> "darkens"; "less blue in the content" -> "less blue")."""
    first = name.split(", ")[0]
    for where in WHERE:
        first = first.removesuffix(where)
    return " ".join(w for w in first.split() if w not in UNITS and not _is_number(w))


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def shared_descriptions(per_sample: list[list[dict | None]], reading: dict) -> list[dict]:
    """One description per direction of directions described on several samples (per_sample[j][i]: direction i
    on sample j, None where sample j's span does not hold it): the gist most samples give it (ties: the one the
    earliest sample gives), the description of the first sample that gives it, with "samples": n and "agreeing":
    how many give that gist (0 and no parts where no sample holds the direction). Global directions are described
    this way (transport.describe_global): "agreeing" says how far a direction does the same on every image.
    reading: the descriptions' reading fields ({"reading": "edit", "strength": s} or {"reading": "change"})."""
    if not per_sample or any(len(d) != len(per_sample[0]) for d in per_sample):
        raise LatentBasisError("shared descriptions need the same directions described on at least one sample")
    out = []
    for i in range(len(per_sample[0])):
        column = [d[i] for d in per_sample if d[i] is not None]
        if not column:
            out.append({"name": "held by none of the samples described", "shares": dict.fromkeys(PARTS, 0.0),
                        "outside": None, "coefficients": {}, "condition": None, **reading,
                        "samples": len(per_sample), "agreeing": 0})
            continue
        gists = [gist(d["name"]) for d in column]
        best = max(gists, key=lambda g: (gists.count(g), -gists.index(g)))
        out.append({**column[gists.index(best)], "samples": len(per_sample), "agreeing": gists.count(best)})
    return out


def agreement_text(d: dict) -> str:
    """How many samples a shared description holds on (shared_descriptions): "; the same on 3 of 4 samples", "; the
    same on all 4 samples", "; no two of 4 samples agree (...)"; "" for a description of one image (and where no
    sample held the direction: its name says so)."""
    n, m = d.get("samples"), d.get("agreeing")
    if not n:
        return ""
    if n == 1:
        return "; on 1 sample"
    if m == n:
        return f"; the same on all {n} samples"
    if m == 1:
        return f"; no two of {n} samples agree (the first sample's shown)"
    return f"; the same on {m} of {n} samples" if m else ""


def description_lines(basis) -> list[str]:
    """'v1  shifts right 0.30 box (shift 0.81, fine 0.10, scale 0.05)' for every direction, after a line saying
    which reading they are (reading_text); 'v1  no description' for a basis without them (older files)."""
    if not basis.descriptions:
        return [f"v{i + 1}  no description" for i in range(basis.k)]
    lines = [f"what each direction's + does, {reading_text(basis.descriptions)}:"]
    for i, d in enumerate(basis.descriptions):
        lines.append(f"v{i + 1}  {d['name']} ({shares_text(d)}){agreement_text(d)}")
        c = d.get("condition")
        if c:
            lines.append(f"    closest {c['kind']}: {c['condition']!r} (cos {c['cosine']:+.2f} with the change of h it "
                         f"makes: {'+' if c['cosine'] >= 0 else '-'} of the slider goes toward it)")
    return lines


def summary_lines(b) -> list[str]:
    """A basis in a few lines: its singular values, its cost, and what each direction does (description_lines)."""
    return [f"singular values: {', '.join(f'{float(s):.4g}' for s in b.singular_values)}",
            f"cost: {b.jvps} JVPs + {b.vjps} VJPs, {b.iterations} iterations, {b.seconds:.2f} s ({b.algorithm}); "
            f"max residual {float(b.residuals.max()):.1e}", *description_lines(b)]


def describe_basis(model, basis, conditions: bool = True) -> list[dict]:
    """A description of every direction of a basis: [{"name", "shares", "outside", "coefficients"}], from the
    change of x0_hat along v_i at the basis' point and timestep: the k products J_x0 v_i of the denoised
    estimate's Jacobian, in one batch through the JacobianOperator the bases use (float32 on the model's device,
    within the model's memory budget). Stored in basis.descriptions (and so in the basis file). conditions: also
    the label or prompt each direction follows (condition_alignment: one forward per label); the report's grid and
    the pick of a direction by its description, which read only the shares, leave it out."""
    model = check_model(model)
    if basis.timestep is None:
        raise LatentBasisError("the basis does not record its timestep: it cannot be described")
    x0, _ = region_maps(model, int(basis.timestep), basis.prompt, None)      # x_t [*x_shape] -> x0_hat
    op = JacobianOperator(x0, basis.point.to(model.device, torch.float32), chunk_size=None,
                          max_memory=getattr(model, "max_memory", None))
    image = op.h.detach().float().cpu()
    changes = op.jvp(basis.latent.reshape(basis.k, -1)).float().cpu().reshape(basis.k, *image.shape)
    region = region_in_x(model, basis.mask) if basis.mask is not None else None
    out = []
    for change in changes:
        parts = decompose_change(image, change, region)
        parts["name"] = name_change(parts, model.x_is_latent)
        parts["reading"] = "change"
        out.append(parts)
    basis.descriptions = with_conditions(model, basis, out, conditions)
    return out


def with_conditions(model, basis, descriptions: list[dict], conditions: bool = True) -> list[dict]:
    """The descriptions, each with "condition": the label or prompt its direction follows (condition_alignment)
    when `conditions`, else None; returned (the same list)."""
    for parts, closest in zip(descriptions, (conditions and condition_alignment(model, basis)) or
                              [None] * basis.k):
        parts["condition"] = closest
    return descriptions


def condition_alignment(model, basis, candidates: list[str] | None = None) -> list[dict] | None:
    """Per direction of an h basis, the condition whose change of h at the basis' point best aligns with it:

        delta_c = h(x_t; c) - h(x_t; c0)        (c0: the basis' own condition, or the unconditional one)
        cos_i(c) = <u_i, delta_c> / ||delta_c||  (u_i the unit tangent vector, J v_i = s_i u_i)

    and the c of largest |cos_i(c)|, as {"kind": "label" or "prompt", "condition": c, "cosine": cos_i(c)}: a
    positive cosine says "+" of the slider moves h toward c's features. candidates: a class-conditional model's
    labels "0".."N-1" when None; a text model's prompts must be given (there is no list of every prompt). None for
    an unconditional model, a text model without candidates, or an x0-space basis. One forward of the network up
    to h per candidate."""
    kind = {"class": "label", "text": "prompt"}.get(getattr(model, "conditioning", None))
    if kind is None or basis.space != "h" or basis.timestep is None:
        return None
    if candidates is None:
        if kind == "prompt":
            return None
        candidates = [str(c) for c in range(model.num_classes)]
    x = basis.point.to(model.device, torch.float32)
    own = basis.prompt if basis.prompt is not None else ""
    with torch.no_grad():
        h0 = model.features(int(basis.timestep), own, basis.layer)(x).reshape(-1).double().cpu()
        deltas = torch.stack([model.features(int(basis.timestep), c, basis.layer)(x).reshape(-1).double().cpu() - h0
                              for c in candidates])
    U = basis.tangent.reshape(basis.k, -1).double()
    cos = (U / U.norm(dim=1, keepdim=True).clamp(min=1e-300)) @ (
        deltas / deltas.norm(dim=1, keepdim=True).clamp(min=1e-300)).T          # [k, len(candidates)]
    best = cos.abs().argmax(dim=1)
    return [{"kind": kind, "condition": candidates[int(j)], "cosine": float(cos[i, j])} for i, j in enumerate(best)]


def descriptions_to_json(descriptions: list[dict] | None) -> str:
    return json.dumps([{"name": d["name"], "shares": d["shares"], "outside": d.get("outside"),
                        "reading": d.get("reading", "change"),
                        **({"strength": d["strength"]} if d.get("reading") == "edit" else {}),
                        **({"condition": d["condition"]} if d.get("condition") else {}),
                        **({"samples": d["samples"], "agreeing": d["agreeing"]} if d.get("samples") else {})}
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
        out.append({"name": printable(d["name"][:200]), "shares": shares, "outside": o, "coefficients": {},
                    "condition": _condition_from_json(d.get("condition")), **_reading_from_json(d),
                    **_agreement_from_json(d)})
    if len({(d["reading"], d.get("strength"), d.get("samples")) for d in out}) > 1:
        raise LatentBasisError("the basis file's descriptions are not all of one reading")
    return out or None


def _reading_from_json(d: dict) -> dict:
    """A stored description's reading, checked: {"reading": "edit", "strength": s} or {"reading": "change"} (what
    files from before the reading was stored hold)."""
    reading = d.get("reading", "change")
    if reading == "change":
        return {"reading": "change"}
    s = d.get("strength")
    if reading != "edit" or isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < float(s) <= 1e6:
        raise LatentBasisError("a description's reading in the basis file is not \"change\" or \"edit\" with a "
                               "positive strength")
    return {"reading": "edit", "strength": float(s)}


def _agreement_from_json(d: dict) -> dict:
    """A stored shared description's sample counts, checked: {"samples": n, "agreeing": m} with 0 <= m <= n, or {}
    (a description of one sample)."""
    if "samples" not in d and "agreeing" not in d:
        return {}
    n, m = d.get("samples"), d.get("agreeing")
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in (n, m)) or not 0 <= m <= n <= 10 ** 6 or n < 1:
        raise LatentBasisError("a description's sample counts in the basis file are not whole numbers with "
                               "0 <= agreeing <= samples")
    return {"samples": n, "agreeing": m}


def _condition_from_json(c) -> dict | None:
    """A stored condition_alignment entry, checked; None when absent."""
    if c is None:
        return None
    if not isinstance(c, dict) or c.get("kind") not in ("label", "prompt") or not isinstance(c.get("condition"), str):
        raise LatentBasisError("a description's condition in the basis file is not a label or prompt")
    cos = c.get("cosine")
    if isinstance(cos, bool) or not isinstance(cos, (int, float)) or not -1.0 - 1e-6 <= float(cos) <= 1.0 + 1e-6:
        raise LatentBasisError("a description's condition cosine in the basis file is not a number in [-1, 1]")
    return {"kind": c["kind"], "condition": printable(c["condition"][:200]), "cosine": float(cos)}


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
