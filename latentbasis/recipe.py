"""An edit as data: everything needed to reproduce it, as JSON ("latentbasis.recipe/1"), and the function that
runs it. `latentbasis edit` writes one beside every grid; `latentbasis edit --recipe FILE` replays it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LatentBasisError

FORMAT = "latentbasis.recipe/1"


@dataclass
class EditRecipe:
    model: str = "digits"
    model_hash: str = ""
    seed: int | None = 0                 # source: a seed's DDIM trajectory ...
    image: str | None = None             # ... or a real image, DDIM-inverted
    image_sha256: str | None = None
    prompt: str | None = None
    guidance: float = 1.0
    num_steps: int = 100
    timestep: int = 599                  # the trajectory is made to pass through it
    t_fraction: float = 0.6
    k: int = 4
    basis_file: str | None = None        # directions from a file (transported to this x_t if computed elsewhere)
    basis_sha256: str | None = None
    algorithm: str = "krylov"
    basis_seed: int = 0
    tol: float = 1e-3
    method: str = "guidance"
    n_iter: int = 16
    step: float = 1.0
    scale: float | None = None
    keep_norm: bool = False
    directions: list[int] | None = None  # None: all k
    strengths: list[float] = field(default_factory=lambda: [-6.0, -3.0, 0.0, 3.0, 6.0])
    # one combined edit instead of a sweep: {"direction index": strength}, d = sum_i strength_i v_i (the app's sliders)
    combination: dict[str, float] | None = None
    dtype: str = "float32"               # the network's forward while sampling and editing (bases are float32)
    device: str = ""                     # where it ran (informative: a replay runs where it is asked to)
    format: str = FORMAT
    version: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "EditRecipe":
        p = Path(path)
        if not p.is_file():
            raise LatentBasisError(f"recipe {p} does not exist")
        try:
            data = json.loads(p.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError) as e:
            raise LatentBasisError(f"{p} is not a readable edit recipe: {e}") from None


@dataclass
class EditResult:
    images: torch.Tensor      # [len(directions), len(strengths), C, H, W] pixels in [-1, 1]
    basis: object             # the Basis used (rows already transported when it came from elsewhere)
    trajectory: object
    recipe: EditRecipe
    reconstruction_psnr: float | None = None   # real images: PSNR of the unedited reconstruction (dB)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def run_recipe(r: EditRecipe, model=None) -> EditResult:
    """Run an edit recipe: trajectory (seed or inverted image), basis at x_t (computed, or loaded and
    transported), then the strength sweep of every direction in one batch (images [directions, strengths, ...]),
    or, for a recipe with a `combination`, the one combined edit (images [1, 1, ...])."""
    from . import __version__
    from .basis import latent_basis
    from .basisfile import load_basis
    from .devices import dtype_name
    from .editing import EditSettings, combine, edit_images, sweep_directions, transported_basis
    from .images import image_to_x, load_image, pixel_size, x_to_image
    from .loading import load_model
    from .sampling import denoise, invert, sample_trajectory

    model = model or load_model(r.model, dtype=r.dtype)
    if r.model_hash and r.model_hash != model.model_hash:
        raise LatentBasisError(f"the recipe was made with model weights {r.model_hash}, "
                               f"but {model.name!r} has {model.model_hash}")
    if r.combination is None and (r.directions == [] or not r.strengths):
        raise LatentBasisError("give at least one direction and one strength")
    given = None
    if r.basis_file:  # validate before any slow work
        given = load_basis(r.basis_file, model=model)
        if tuple(given.point.shape) != tuple(model.x_shape):
            raise LatentBasisError(f"{r.basis_file} is for x of shape {tuple(given.point.shape)}; this model's x_t "
                                   f"is {tuple(model.x_shape)}")
        r.basis_sha256, r.k = sha256_file(r.basis_file), given.k
    if r.combination is not None:
        if not r.combination:
            raise LatentBasisError("the combination is empty: give at least one direction")
        r.directions = sorted(int(i) for i in r.combination)
    r.directions = list(range(r.k)) if r.directions is None else r.directions
    bad = [i for i in r.directions if not 0 <= i < r.k]  # r.k is the file's k when a basis file is given
    if bad:
        raise LatentBasisError(f"direction {bad[0]} is out of range: the basis has k = {r.k} "
                               f"(indices 0..{r.k - 1})")
    recon = None
    if r.image:
        c, size = pixel_size(model)
        img = load_image(r.image, c, size)
        x_img = image_to_x(model, img)
        traj = invert(model, x_img, num_steps=r.num_steps, prompt=r.prompt, through=r.timestep)
        rec = denoise(model, traj.xs[:1], traj.timesteps, r.prompt, 1.0)
        recon = psnr(x_to_image(model, rec)[0], img)
        r.image_sha256 = sha256_file(r.image)
    else:
        traj = sample_trajectory(model, r.seed or 0, num_steps=r.num_steps, prompt=r.prompt, guidance=r.guidance,
                                 through=r.timestep)
    x_t = traj.at(r.timestep)
    if given is not None:
        basis = transported_basis(model, given, x_t, r.timestep, prompt=r.prompt, algorithm=r.algorithm,
                                  seed=r.basis_seed, tol=r.tol)
    else:
        basis = latent_basis(model, x_t, timestep=r.timestep, k=r.k, prompt=r.prompt, algorithm=r.algorithm,
                             seed=r.basis_seed, tol=r.tol)
    settings = EditSettings(r.method, r.n_iter, r.step, r.scale, r.keep_norm)
    if r.combination is not None:
        d = combine(basis.latent, {int(i): float(w) for i, w in r.combination.items()})[None]
        rows, cols = 1, 1
    else:
        d = sweep_directions(basis.latent, r.directions, r.strengths)
        rows, cols = len(r.directions), len(r.strengths)
    images = x_to_image(model, edit_images(model, traj, r.timestep, d, settings))
    r.model, r.model_hash, r.version = model.name, model.model_hash, __version__
    r.dtype, r.device = dtype_name(model.dtype), str(model.device)
    return EditResult(images.reshape(rows, cols, *images.shape[1:]), basis, traj, r, recon)

