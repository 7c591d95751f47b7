"""The basis file: one safetensors file, readable by any safetensors reader (format "latentbasis.basis/1").

Tensors (float32):  latent [k, *x_shape], tangent [k, *h_shape], singular_values [k], point [*x_shape].
Header metadata (all strings; lists as JSON): format, model, model_hash, layer, timestep, t_fraction, prompt,
k, algorithm, jvps, vjps, residuals, seed, version, device and weights_dtype (where it was computed, always in float32, through weights in that dtype), plus
iterations and seconds (the only fields that differ between two runs of the same command).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .atomic import atomic_path
from .basis import Basis
from .errors import LatentBasisError

FORMAT = "latentbasis.basis/1"
TENSORS = ("latent", "tangent", "singular_values", "point")


def _version() -> str:
    from . import __version__

    return __version__


def basis_metadata(b: Basis) -> dict[str, str]:
    return {
        "format": FORMAT, "model": b.model, "model_hash": b.model_hash, "layer": b.layer,
        "timestep": "" if b.timestep is None else str(int(b.timestep)),
        "t_fraction": "" if b.t_fraction is None else repr(float(b.t_fraction)),
        "prompt": b.prompt or "", "k": str(b.k), "algorithm": b.algorithm, "jvps": str(b.jvps),
        "vjps": str(b.vjps), "residuals": json.dumps([float(r) for r in b.residuals]), "seed": str(b.seed),
        "version": _version(), "iterations": str(b.iterations), "seconds": f"{b.seconds:.3f}",
        "device": b.device, "weights_dtype": b.weights_dtype,
    }


def save_basis(b: Basis, path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, then a rename (never a half-written file)."""
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.is_dir():
        raise LatentBasisError(f"cannot write {path}: folder {path.parent} does not exist")
    tensors = {name: getattr(b, name).detach().to(torch.float32).contiguous() for name in TENSORS}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=basis_metadata(b))
    return path


def load_basis(path: str | os.PathLike, model=None) -> Basis:
    """Read a basis file; with `model`, check that it was computed with that model's weights (model_hash)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LatentBasisError(f"basis file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in TENSORS}
    except Exception as e:
        raise LatentBasisError(f"{path} is not a readable basis file (corrupt or not safetensors): {e}") from None
    if meta.get("format") != FORMAT:
        raise LatentBasisError(f"{path} is not a latentbasis basis file (format {meta.get('format')!r}, expected {FORMAT!r})")
    k = tensors["singular_values"].shape[0]
    if (tensors["latent"].shape[0] != k or tensors["tangent"].shape[0] != k
            or tuple(tensors["latent"].shape[1:]) != tuple(tensors["point"].shape)):
        raise LatentBasisError(f"{path} is inconsistent: tensor shapes do not agree with k = {k}")
    if model is not None and meta.get("model_hash") != model.model_hash:
        raise LatentBasisError(
            f"{path} was computed with model {meta.get('model')!r} (weights {meta.get('model_hash')}), "
            f"not with {model.name!r} (weights {model.model_hash}); compute a basis for this model")
    try:
        return Basis(latent=tensors["latent"], tangent=tensors["tangent"],
                     singular_values=tensors["singular_values"], point=tensors["point"],
                     residuals=torch.tensor(json.loads(meta.get("residuals", "[]")), dtype=torch.float32),
                     jvps=int(meta.get("jvps", 0)), vjps=int(meta.get("vjps", 0)),
                     algorithm=meta.get("algorithm", ""), seed=int(meta.get("seed", 0)),
                     iterations=int(meta.get("iterations", 0)), seconds=float(meta.get("seconds", 0)),
                     timestep=int(meta["timestep"]) if meta.get("timestep") else None,
                     t_fraction=float(meta["t_fraction"]) if meta.get("t_fraction") else None,
                     prompt=meta.get("prompt") or None, layer=meta.get("layer", "mid_block"),
                     model=meta.get("model", ""), model_hash=meta.get("model_hash", ""),
                     device=meta.get("device", "cpu"), weights_dtype=meta.get("weights_dtype", "float32"))
    except (ValueError, KeyError) as e:
        raise LatentBasisError(f"{path} has a corrupt header: {e}") from None
