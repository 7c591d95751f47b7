"""The basis file: one safetensors file, readable by any safetensors reader (format "latentbasis.basis/1").

Tensors (float32):  latent [k, *x_shape], tangent [k, *h_shape], singular_values [k], point [*x_shape], and for
a basis of a region, mask [S, S] (1 inside, 0 outside, on the image; its sha256 in the header's mask_sha256).
Header metadata (all strings; lists as JSON): format, model, model_hash, layer, timestep, t_fraction, prompt,
k, algorithm, jvps, vjps, residuals, seed, version, device and weights_dtype (where it was computed, always in
float32, through weights in that dtype), plus iterations and seconds (seconds is the one field that differs between
two runs of the same command on the same machine). Full description: docs/basis-format.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .atomic import atomic_path, file_path
from .basis import ALGORITHMS, Basis, GlobalDirections, Provenance, Region
from .describe import description_lines, descriptions_from_json, descriptions_to_json
from .errors import LatentBasisError, printable
from .images import pixel_size
from .masks import mask_in_x, mask_sha256
from .validate import model as check_model
from .validate import (MAX_ITERS, MAX_K, MAX_SEED, number, optional_string, parent_folder, parse_json,
                       regular_file)
from .version import __version__

FORMAT = "latentbasis.basis/1"
TENSORS = ("latent", "tangent", "singular_values", "point")


def basis_metadata(b: Basis) -> dict[str, str]:
    return {
        "format": FORMAT, "model": b.model, "model_hash": b.model_hash, "layer": b.layer,
        "timestep": "" if b.timestep is None else str(int(b.timestep)),
        "t_fraction": "" if b.t_fraction is None else repr(float(b.t_fraction)),
        "prompt": b.prompt or "", "k": str(b.k), "algorithm": b.algorithm, "jvps": str(b.jvps),
        "vjps": str(b.vjps), "residuals": json.dumps([float(r) for r in b.residuals]), "seed": str(b.seed),
        "version": __version__, "iterations": str(b.iterations), "seconds": f"{b.seconds:.3f}",
        "device": b.device, "weights_dtype": b.weights_dtype, "space": b.space, "mask_sha256": b.mask_sha256,
        "null_rank": str(b.null_rank),
        "descriptions": descriptions_to_json(b.descriptions),
    }


def save_basis(b: Basis, path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, then a rename (never a half-written file). The
    temporary file is read back by load_basis first: what would not load (a NaN from a broken model, a description
    out of range) is one message and no file, not a file that its own reader refuses later."""
    from safetensors.torch import save_file

    if not isinstance(b, Basis):
        raise LatentBasisError(f"save_basis takes a Basis (latent_basis' result), got {type(b).__name__}")
    path = file_path(path)
    parent_folder(path)
    # own copies: rows that share memory (a tangent that is the latent, say) would make safetensors refuse the file
    tensors = {name: getattr(b, name).detach().to(torch.float32).contiguous().clone() for name in TENSORS}
    if b.mask is not None:
        tensors["mask"] = b.mask.detach().to(torch.float32).contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=basis_metadata(b))
        try:
            load_basis(tmp)
        except LatentBasisError as e:
            raise LatentBasisError(f"{path} was not written: the basis would not load back "
                                   f"({str(e).replace(str(tmp), 'the file')})") from None
    return path


def _header_number(meta: dict, key: str, path: Path, *, integer: bool = False, lo=None, hi=None, default=None):
    """A number from the string header, checked (validate.number); missing -> default (None: required)."""
    raw = meta.get(key, "")
    if raw == "":
        if default is None:
            raise LatentBasisError(f"{path} has a corrupt header: {key} is missing")
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise LatentBasisError(f"{path} has a corrupt header: {key} = {raw[:40]!r} is not a number") from None
    try:
        return number(value, f"{path}: {key}", integer=integer, lo=lo, hi=hi)
    except LatentBasisError as e:
        raise LatentBasisError(f"{e} (corrupt header)") from None


def _check_tensors(tensors: dict, meta: dict, path: Path) -> int:
    """Shapes, dtypes and values of the tensors against each other and the header; returns k."""
    bad = lambda why: LatentBasisError(f"{path} is not a valid basis file: {why}")  # noqa: E731
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise bad(f"{name} is {str(t.dtype).removeprefix('torch.')}, not float32")
        if not bool(torch.isfinite(t).all()):
            raise bad(f"{name} holds NaN or infinite values")
    sv, latent, tangent, point = (tensors[n] for n in ("singular_values", "latent", "tangent", "point"))
    if sv.dim() != 1 or not 1 <= sv.shape[0] <= MAX_K:
        raise bad(f"singular_values has shape {tuple(sv.shape)} (one value per direction, 1 to {MAX_K})")
    k = int(sv.shape[0])
    if latent.shape[0] != k or tangent.shape[0] != k or tuple(latent.shape[1:]) != tuple(point.shape) \
            or latent.dim() < 2 or tangent.dim() < 2:
        raise bad(f"tensor shapes do not agree with k = {k} (latent {tuple(latent.shape)}, tangent "
                  f"{tuple(tangent.shape)}, point {tuple(point.shape)})")
    if str(k) != meta.get("k"):
        raise bad(f"the header says k = {meta.get('k')!r} but the tensors hold {k} directions")
    for name, rows in (("latent", latent), ("tangent", tangent)):
        norms = rows.reshape(k, -1).norm(dim=1)
        if bool(((norms - 1).abs() > 1e-3).any()):
            raise bad(f"the rows of {name} are not unit vectors")
    if bool((sv < 0).any()) or bool((sv[1:] > sv[:-1] * (1 + 1e-5) + 1e-6).any()):
        raise bad("singular values must be non-negative and descending")
    return k


def _checked_mask(mask: torch.Tensor, digest: str, path: Path) -> torch.Tensor:
    """The file's region: a square of 0s and 1s, not empty, whose sha256 is the header's mask_sha256."""
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1] or mask.dtype != torch.float32 \
            or not bool(((mask == 0) | (mask == 1)).all()) or not bool(mask.any()):
        raise LatentBasisError(f"{path} is not a valid basis file: its mask must be a square of 0s and 1s, not "
                               "empty")
    m = mask.bool()
    if mask_sha256(m) != digest:
        raise LatentBasisError(f"{path} is not a valid basis file: its mask does not match the header's "
                               "mask_sha256")
    return m


def load_basis(path: str | os.PathLike, model=None, layer: str | None = None) -> Basis:
    """Read a basis file, every tensor and header field checked (one message for anything wrong); with `model`,
    also that it was computed with that model's weights (model_hash) and fits its x and schedule."""
    from safetensors import safe_open

    path = regular_file(path, "basis file")
    if model is not None:
        model = check_model(model)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            missing = [n for n in TENSORS if n not in fh.keys()]
            if missing:
                raise ValueError(f"no tensor {missing[0]!r}")
            tensors = {name: fh.get_tensor(name) for name in TENSORS}
            mask = fh.get_tensor("mask") if "mask" in fh.keys() else None
    except Exception as e:
        raise LatentBasisError(f"{path} is not a readable basis file (corrupt or not safetensors: "
                               f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise LatentBasisError(f"{path} is not a latentbasis basis file (format {str(meta.get('format'))[:40]!r}, "
                               f"expected {FORMAT!r})")
    k = _check_tensors(tensors, meta, path)

    try:
        residuals = parse_json(meta.get("residuals", "[]"), "residuals")
    except LatentBasisError:
        residuals = None
    if not isinstance(residuals, list) or len(residuals) != k or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and r == r and 0 <= r < float("inf")
            for r in residuals):
        raise LatentBasisError(f"{path} has a corrupt header: residuals must be a list of {k} finite numbers >= 0")
    algorithm = meta.get("algorithm", "")
    if algorithm not in (*ALGORITHMS, "global"):
        raise LatentBasisError(f"{path} has a corrupt header: algorithm {algorithm[:40]!r} is not one of "
                               f"{', '.join(ALGORITHMS)}")
    num = lambda key, **kw: _header_number(meta, key, path, **kw)  # noqa: E731
    T = model.num_train_timesteps if model is not None else 100_000
    provenance = Provenance(
        jvps=num("jvps", integer=True, lo=0, default=0), vjps=num("vjps", integer=True, lo=0, default=0),
        algorithm=algorithm, seed=num("seed", integer=True, lo=0, hi=MAX_SEED, default=0),
        iterations=num("iterations", integer=True, lo=0, hi=MAX_ITERS, default=0), seconds=num("seconds", lo=0, default=0.0),
        timestep=(num("timestep", integer=True, lo=0, hi=T - 1) if meta.get("timestep") else None),
        t_fraction=(num("t_fraction", lo=0, hi=1) if meta.get("t_fraction") else None),
        prompt=optional_string(meta.get("prompt"), f"{path}: prompt") or None,
        layer=optional_string(meta.get("layer", "mid_block"), f"{path}: layer", 200) or "mid_block",
        model=optional_string(meta.get("model", ""), f"{path}: model", 4096) or "",
        model_hash=optional_string(meta.get("model_hash", ""), f"{path}: model_hash", 64) or "",
        device=optional_string(meta.get("device", "cpu"), f"{path}: device", 40) or "cpu",
        weights_dtype=optional_string(meta.get("weights_dtype", "float32"), f"{path}: weights_dtype", 20) or "float32")
    region = Region(space=meta.get("space", "h"), null_rank=num("null_rank", integer=True, lo=0, hi=10**9, default=0),
                    mask_sha256=optional_string(meta.get("mask_sha256", ""), f"{path}: mask_sha256", 64) or "")
    kind = GlobalDirections if algorithm == "global" else Basis
    b = kind(latent=tensors["latent"], tangent=tensors["tangent"], singular_values=tensors["singular_values"],
             point=tensors["point"], residuals=torch.tensor(residuals, dtype=torch.float32), provenance=provenance,
             region=region)
    try:
        b.descriptions = descriptions_from_json(meta.get("descriptions", "[]"), k)
    except LatentBasisError as e:
        raise LatentBasisError(f"{path} has a corrupt header: {e}") from None
    if b.space not in ("h", "x0"):
        raise LatentBasisError(f"{path} has a corrupt header: space {b.space[:20]!r} is not h or x0")
    if mask is not None:
        b.mask = _checked_mask(mask, b.mask_sha256, path)
    if model is not None:
        if b.model_hash != model.model_hash:
            raise LatentBasisError(
                f"{path} was computed with model {b.model!r} (weights {b.model_hash}), not with {model.name!r} "
                f"(weights {model.model_hash}); compute a basis for this model")
        if tuple(b.point.shape) != tuple(model.x_shape):
            raise LatentBasisError(f"{path} is for x of shape {tuple(b.point.shape)}; this model's x_t is "
                                   f"{tuple(model.x_shape)}")
        if b.mask is not None:     # a region basis: its tangent rows are x0_hat's entries inside the region

            size = pixel_size(model)[1]
            if tuple(b.mask.shape) != (size, size):
                raise LatentBasisError(f"{path} has a region of {b.mask.shape[1]}x{b.mask.shape[0]} pixels; this "
                                       f"model's images are {size}x{size}")
            n = int(mask_in_x(model, b.mask).sum())
            if b.tangent[0].numel() != n:
                raise LatentBasisError(f"{path} is not a valid basis file: its region covers {n} entries of x, its "
                                       f"tangent vectors have {b.tangent[0].numel()}: the mask is not theirs")
    if layer is not None and b.space == "h" and b.layer != layer:   # another layer of the same shape is no match
        raise LatentBasisError(f"{path} was computed at the layer {b.layer[:80]!r}; here h is the layer {layer!r}: "
                               f"compute a basis at this layer (or use the basis' own layer, {b.layer[:80]!r})")
    if b.mask_sha256 and b.timestep is None:
        raise LatentBasisError(f"{path} has a corrupt header: a basis of a region without the timestep it was "
                               "computed at")
    return b


def info_lines(path: str | os.PathLike) -> list[str]:
    """What `latentbasis info` prints of a basis file: every header field (escaped: a header is the file's word,
    it may not drive a terminal), the tensors' shapes, and a line per direction saying what it does. The file is
    checked first (load_basis): one that is not a valid basis gets one message."""
    from safetensors import safe_open

    b = load_basis(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    lines = [f"{printable(key)}: {printable(meta[key])}" for key in sorted(meta) if key != "descriptions"]
    lines.append(f"latent: {tuple(b.latent.shape)}  tangent: {tuple(b.tangent.shape)}  point: {tuple(b.point.shape)}")
    return lines + description_lines(b)
