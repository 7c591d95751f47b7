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

from . import validate as v
from .basis import ALGORITHMS, latent_basis
from .basisfile import load_basis, save_basis
from .describe import agreement_text, describe_basis, pick_direction, summary_lines
from .describe import shares_text as part_shares
from .devices import DTYPE_NAMES, dtype_name
from .registration import describe_by_edits, describe_edit, description_reading
from .editing import METHODS, EditSettings, combine, edit_images, edit_steps, sweep_directions
from .errors import LatentBasisError
from .images import pixel_size, x_to_image
from .loading import load_model
from .masks import mask_sha256, parse_mask
from .sampling import denoise, predict_x0, sample_to, trajectory_for, trajectory_grid
from .transport import TRANSFERS, motion_refusal, shares_text, transported_basis
from .validate import read_json_object
from .version import __version__
from .viz import render_basis, render_edit_grid
from .atomic import all_or_nothing, write_text_atomic

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
    guidance_scale: float | None = None  # the embedded guidance of a guidance-distilled model (FLUX.1-dev)
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
    direction: str | None = None         # or the one whose description matches ("shift right": latentbasis.describe);
                                         # directions then records the pick, made again on a replay
    strengths: list[float] = field(default_factory=lambda: [-6.0, -3.0, 0.0, 3.0, 6.0])
    # one combined edit instead of a sweep: {"direction index": strength}, d = sum_i strength_i v_i (the app's sliders)
    combination: dict[str, float] | None = None
    space: str = "h"                     # "h" (the pullback of h) or "x0" (the Jacobian of x0_hat) ...
    mask: str | None = None              # ... of a region: a box "x0,y0,x1,y1" or a PNG file
    mask_sha256: str | None = None
    null_rank: int = 0                   # keep the directions off the rest's top null_rank directions
    transport_rank: int | None = None    # transport into a local basis of this rank (None: the given k)
    transfer: str = "tangent"            # carry a file's directions as tangent vectors, or as motions of the region
    dtype: str = "float32"               # the network's forward while sampling and editing (bases are float32)
    device: str = ""                     # where it ran (informative: a replay runs where it is asked to)
    format: str = FORMAT
    version: str = ""

    def to_json(self) -> str:
        """The recipe as JSON, read back and checked as from_file checks a file (validate) before it is handed
        out: a recipe that `edit --recipe` would refuse (a NaN that reached a field) is one message, never a file."""
        text = json.dumps(dataclasses.asdict(self), indent=1)
        try:
            type(self)(**json.loads(text)).validate()
        except LatentBasisError as e:
            raise LatentBasisError(f"the edit's recipe would not replay, so it is not written: {e}") from None
        return text

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "EditRecipe":
        """A recipe from JSON, every field checked (validate): a wrong type, a value out of range or work beyond
        the bounds is one message, before anything runs."""
        p = Path(path)
        data = read_json_object(p, "edit recipe")
        if data.get("format") != FORMAT:
            raise LatentBasisError(f"{p} is not a readable edit recipe: format {str(data.get('format'))[:40]!r}, "
                                   f"expected {FORMAT!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LatentBasisError(f"{p} is not a readable edit recipe: unknown field {unknown[0][:40]!r}")
        r = cls(**data)
        try:
            r.validate()
        except LatentBasisError as e:
            raise LatentBasisError(f"{p}: {e}") from None
        return r

    def input_files(self) -> dict[str, str | None]:
        """The files a replay reads, by what the user knows them as (validate.check_outputs keeps outputs off)."""
        return {"the recipe's basis_file": self.basis_file, "the recipe's image": self.image,
                "the recipe's mask": self.mask, "the recipe's model": self.model}

    def validate(self) -> "EditRecipe":
        """Check every field's type and range (latentbasis.validate); returns self."""
        v.optional_string(self.model, "model", 4096)
        if not isinstance(self.model, str) or not self.model:
            raise LatentBasisError("model must be a model name or folder")
        for name in ("model_hash", "image_sha256", "basis_sha256", "image", "basis_file", "device", "version"):
            v.optional_string(getattr(self, name), name, 4096)
        v.optional_string(self.prompt, "prompt")
        if self.seed is not None:
            v.seed(self.seed)
        if (self.seed is None) == (self.image is None):
            raise LatentBasisError("give exactly one source: a seed or an image")
        v.guidance(self.guidance)
        if self.guidance_scale is not None:
            v.guidance(self.guidance_scale, "guidance_scale")
        v.count(self.num_steps, "num_steps", v.MAX_STEPS, lo=2)
        v.integer(self.timestep, "timestep", 0, 100_000)
        v.number(self.t_fraction, "t_fraction", lo=0, hi=1)
        v.count(self.k, "k", v.MAX_K)
        v.choice(self.algorithm, "algorithm", ALGORITHMS)
        v.seed(self.basis_seed, "basis_seed")
        v.tolerance(self.tol)
        v.choice(self.method, "method", METHODS)
        v.count(self.n_iter, "n_iter", v.MAX_N_ITER)
        v.number(self.step, "step", lo=-v.MAX_STRENGTH, hi=v.MAX_STRENGTH)
        if self.scale is not None:
            v.number(self.scale, "scale", lo=-v.MAX_STRENGTH, hi=v.MAX_STRENGTH)
        if not isinstance(self.keep_norm, bool):
            raise LatentBasisError(f"keep_norm must be true or false, got {self.keep_norm!r}")
        v.optional_string(self.direction, "direction", 100)
        if self.direction is not None and self.combination is not None:   # (directions: the last pick, redone)
            raise LatentBasisError("give a combination of directions or one direction by its description, not both")
        if self.directions is not None:
            if not isinstance(self.directions, list) or len(self.directions) > v.MAX_K:
                raise LatentBasisError(f"directions must be a list of at most {v.MAX_K} indices")
            for i in self.directions:
                v.integer(i, "direction index", 0, v.MAX_K - 1)
        if self.combination is None:
            v.strengths(self.strengths)
        else:
            if not isinstance(self.combination, dict) or len(self.combination) > v.MAX_K:
                raise LatentBasisError(f"combination must map at most {v.MAX_K} direction indices to strengths")
            for key, w in self.combination.items():
                if not isinstance(key, str) or not key.isdigit():
                    raise LatentBasisError(f"combination keys must be direction indices like \"0\", got {key!r}")
                v.strength(w, f"strength of direction {key}")
            if not isinstance(self.strengths, list):
                raise LatentBasisError("strengths must be a list")
        v.choice(self.dtype, "dtype", DTYPE_NAMES)
        v.choice(self.space, "space", ("h", "x0"))
        v.optional_string(self.mask, "mask", 4096)
        v.optional_string(self.mask_sha256, "mask_sha256", 64)
        v.integer(self.null_rank, "null_rank", 0, v.MAX_X_ELEMENTS)
        if self.transport_rank is not None:
            v.count(self.transport_rank, "transport_rank", v.MAX_K)
        v.choice(self.transfer, "transfer", TRANSFERS)
        if self.transfer != "tangent" and not self.basis_file:
            raise LatentBasisError(f"transfer {self.transfer!r} carries the directions of a basis file: give one")
        if self.format != FORMAT:
            raise LatentBasisError(f"format {str(self.format)[:40]!r}, expected {FORMAT!r}")
        return self


def edit_outputs(out: str | os.PathLike, replayed: str | os.PathLike | None = None,
                 name: str = "out") -> tuple[Path, Path | None]:
    """The files an edit writes: its PNG grid `out` and the recipe beside it (`out` with .json), or None for the
    recipe when that is the file `replayed` (a replay leaves the recipe it replays alone)."""
    out = v.output_file(out, name)
    if out.suffix.lower() != ".png":
        raise LatentBasisError(f"{name} {out.name}: the edit grid is a PNG; give a path ending in .png (its recipe "
                               "goes beside it as .json)")
    recipe = out.with_suffix(".json")
    same = replayed is not None and recipe.exists() and Path(replayed).exists() and \
        recipe.resolve() == Path(replayed).resolve()
    return out, None if same else recipe


@dataclass
class EditResult:
    images: torch.Tensor      # [len(directions), len(strengths), C, H, W] pixels in [-1, 1]
    basis: object             # the Basis used (rows already transported when it came from elsewhere)
    trajectory: object
    recipe: EditRecipe
    reconstruction_psnr: float | None = None   # real images: PSNR of the unedited reconstruction (dB)
    notes: list[str] = field(default_factory=list)   # what was converted on the way in (an RGB photo made grey, ...)
    kept: list[float] | None = None   # transported directions: the share of each the target's tangent span keeps
    model_name: str = ""              # the model's name, as the grid's title says it

    def grid_labels(self) -> tuple[list[str], list[str]]:
        """(a label per row, a label per column) of the edit grid: directions with their singular values and
        strengths, or one combined edit."""
        r = self.recipe
        if r.combination is not None:
            return [", ".join(f"v{int(i) + 1} {float(w):+g}" for i, w in sorted(r.combination.items(),
                                                                               key=lambda kv: int(kv[0])))], ["combined"]
        return ([f"v{i + 1}  s={float(self.basis.singular_values[i]):.3g}" for i in r.directions],
                [f"{s:+g}" for s in r.strengths])

    def write(self, out: str | os.PathLike, recipe_path: str | os.PathLike | None = None) -> list[str]:
        """The edit grid as a PNG at `out` (rows: directions, columns: strengths) and, with `recipe_path`, the recipe
        that replays it (both or neither); returns what `latentbasis edit` prints: notes, measurements, what was
        written."""
        r = self.recipe
        src = f"image {Path(r.image).name}" if r.image else f"seed {r.seed}"
        with all_or_nothing():
            render_edit_grid(self.images, *self.grid_labels(), out,
                             f"{self.model_name}, {src}, t={r.timestep}, {r.method}")
            if recipe_path is not None:
                write_text_atomic(recipe_path, r.to_json())
        shape = ("1 combined edit" if r.combination is not None
                 else f"{len(r.directions)} directions x {len(r.strengths)} strengths")
        return ([f"note: {n}" for n in self.notes] + self.summary_lines()
                + [f"wrote {out}{'' if recipe_path is None else f' and {recipe_path}'} ({shape})"])

    def summary_lines(self) -> list[str]:
        """What the edit measured beside its images: the reconstruction of a real image, how much of each carried
        direction the target keeps, and how much of it is a motion of the region."""
        lines = []
        if self.reconstruction_psnr is not None:
            lines.append(f"inversion: reconstruction PSNR {self.reconstruction_psnr:.2f} dB ({self.recipe.num_steps} "
                         "steps)")
        if self.kept is not None:
            lines.append(f"transported into a tangent span of rank {self.basis.extra.get('transport_rank')}: kept "
                         f"{shares_text(self.kept)} of each direction (a low share: the direction means little here)")
        share = self.basis.extra.get("motion_share")
        if share is not None:
            lines.append(f"carried as motions of the region: {shares_text(share)} of each direction is a motion or "
                         "colour offset there (a low share: it is not, and its carry means little)")
        return lines + self.result_lines()

    def result_lines(self) -> list[str]:
        """What each row of a sweep did to the finished image, from its lowest to its highest strength
        (registration.describe_edit: a registration of the two images, about a second a row): "v1 from -6 to +6:
        shifts right 0.03 box (shift 0.81, ...)", and where the basis came from a file that describes it (and no
        --direction picked the row), what the file says: "; the file says: darkens; the same on all 4 samples". None
        for one combined edit or a single strength."""
        r = self.recipe
        if r.combination is not None or max(r.strengths) <= min(r.strengths):
            return []
        lo, hi = r.strengths.index(min(r.strengths)), r.strengths.index(max(r.strengths))
        half = (r.strengths[hi] - r.strengths[lo]) / 2
        said = self.basis.extra.get("given_descriptions") if self.basis is not None and r.direction is None else None
        out = []
        for row, i in enumerate(r.directions):
            d = describe_edit(self.images[row, hi], self.images[row, lo], half)
            file = f"; the file says: {said[i]['name']}{agreement_text(said[i])}" if said else ""
            out.append(f"v{i + 1} from {r.strengths[lo]:+g} to {r.strengths[hi]:+g}: {d['name']} ({part_shares(d)})"
                       + file)
        return out


@dataclass
class BasisRun:
    basis: object                       # the Basis, described (basis.descriptions)
    image: torch.Tensor | None = None   # the sample the trajectory ends in, or the real image as read [C, H, W]
    denoised: torch.Tensor | None = None   # x0_hat at x_t, as an image [C, H, W]
    notes: list[str] = field(default_factory=list)   # what reading a real image converted
    source: str = ""                    # "seed N" or "image NAME"

    def write(self, out: str | os.PathLike, png: str | os.PathLike | None = None) -> list[str]:
        """Save the basis to `out` and, with `png`, its picture (the sample or image, the denoised x_t, then each
        direction), both or neither; returns what `latentbasis basis` prints: the point, the summary, what was
        written."""
        b = self.basis
        with all_or_nothing():
            save_basis(b, out)
            if png is not None:
                render_basis(b, png, images=[("image" if self.source.startswith("image") else "sample", self.image),
                                             ("denoised x_t", self.denoised)],
                             title=f"{b.model}  {self.source}  t={b.timestep} ({b.t_fraction:.2f} T)")
        return [f"model {b.model} (weights {b.model_hash}), timestep {b.timestep} ({b.t_fraction:.3f} T), k = {b.k}",
                *summary_lines(b), f"wrote {out}" + (f" and {png}" if png is not None else "")]


def basis_for(model, *, timestep: int, t_fraction: float | None = None, k: int = 8, seed: int = 0, image=None,
              num_steps: int = 100, prompt: str | None = None, guidance: float = 1.0, pictures: bool = True,
              describe: str | None = None, describe_strength: float = 6.0, stage=None, **basis_kw) -> BasisRun:
    """The basis at x_t of a seed's DDIM trajectory, or of a DDIM-inverted image (the same x_t as an edit recipe's
    of the same seed, steps and timestep), described, with the pictures `latentbasis basis` draws when `pictures`.
    describe: "edit", what each direction's guidance edit at -describe_strength and +describe_strength does to the
    finished image (registration.describe_by_edits: 2k edits, the reading `edit` prints), or "change", the
    first-order change of x0_hat at x_t (describe.describe_basis: k JVPs, no edits); None: as
    registration.description_reading chooses ("edit" on pixels, "change" on a VAE's latent).
    basis_kw go to latent_basis (layer, algorithm, tol, init, space, mask, null_rank, callback, ...); the basis'
    random start is `seed`. stage: as trajectory_for's."""
    model = v.model(model)
    stage = stage or (lambda desc, total: None)
    describe = description_reading(model, describe)
    v.describing_strength(describe_strength)
    if image is None and not pictures and describe == "change":   # only down to t
        n = len([g for g in trajectory_grid(model.num_train_timesteps, num_steps, timestep) if g > timestep])
        x_t, traj, img, notes = sample_to(model, seed, timestep=timestep, num_steps=num_steps, prompt=prompt,
                                          guidance=guidance, progress=stage("sampling", n)), None, None, []
    else:
        traj, img, notes = trajectory_for(model, timestep=timestep, seed=seed, image=image, num_steps=num_steps,
                                          prompt=prompt, guidance=guidance, stage=stage)
        x_t = traj.at(timestep)
    b = latent_basis(model, x_t, timestep=timestep, k=k, prompt=prompt, seed=seed, **basis_kw)
    if t_fraction is not None:
        b.t_fraction = t_fraction
    if describe == "edit":
        settings = EditSettings("guidance")
        describe_by_edits(model, b, traj, describe_strength, settings,
                          progress=stage(f"describing: {2 * k} edits", edit_steps(traj, timestep, settings)))
    else:
        describe_basis(model, b)
    run = BasisRun(b, notes=notes, source=f"image {Path(image).name}" if image is not None else f"seed {seed}")
    if pictures:
        run.image = img if image is not None else x_to_image(model, traj.x0[None])[0]
        run.denoised = x_to_image(model, predict_x0(model, x_t[None], timestep, prompt))[0]
    return run


def sha256_file(path: str | os.PathLike, what: str = "file") -> str:
    """The file's sha256, read in 1 MiB chunks; only a regular file is opened (a FIFO would wait for a writer, a
    device could be endless)."""
    h = hashlib.sha256()
    with open(v.regular_file(path, what), "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checked_sha256(path: str, recorded: str | None, what: str) -> str:
    """The file's sha256; when the recipe recorded one, it must be the same (the recipe's input has not changed)."""
    digest = sha256_file(path, what)
    if recorded and recorded != digest:
        raise LatentBasisError(f"the {what} {path} is not the one the recipe was made with (sha256 {digest[:12]}..., "
                               f"the recipe says {str(recorded)[:12]}...)")
    return digest


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def run_recipe(r: EditRecipe, model=None, progress=None) -> EditResult:
    """Run an edit recipe: trajectory (seed or inverted image), basis at x_t (computed, or loaded and
    transported), then the strength sweep of every direction in one batch (images [directions, strengths, ...]),
    or, for a recipe with a `combination`, the one combined edit (images [1, 1, ...]).

    progress: a stage reporter, progress(description, total steps or None) -> a function called with the number
    of steps done since its last call (the CLI's progress bars; the app's progress)."""
    stage = progress or (lambda desc, total: None)
    r.validate()
    model = model or load_model(r.model, dtype=r.dtype)
    if r.model_hash and r.model_hash != model.model_hash:
        raise LatentBasisError(f"the recipe was made with model weights {r.model_hash}, "
                               f"but {model.name!r} has {model.model_hash}")
    model.set_guidance(r.guidance_scale)
    if r.combination is None and (r.directions == [] or not r.strengths):
        raise LatentBasisError("give at least one direction and one strength")
    given = None
    if r.basis_file:  # validate before any slow work
        given = load_basis(r.basis_file, model=model, layer=model.default_layer)
        r.basis_sha256, r.k = _checked_sha256(r.basis_file, r.basis_sha256, "basis file"), given.k
    if r.combination is not None:
        if not r.combination:
            raise LatentBasisError("the combination is empty: give at least one direction")
        r.directions = sorted(int(i) for i in r.combination)
    r.directions = list(range(r.k)) if r.directions is None else r.directions
    bad = [i for i in r.directions if not 0 <= i < r.k]  # r.k is the file's k when a basis file is given
    if bad:
        raise LatentBasisError(f"direction {bad[0]} is out of range: the basis has k = {r.k} "
                               f"(indices 0..{r.k - 1})")
    if given is not None:   # the local basis it is transported onto is of its own kind
        r.space, r.null_rank = given.space, given.null_rank
        why = motion_refusal(given) if r.transfer == "motion" else None
        if why:   # before any slow work
            raise LatentBasisError(f"{r.basis_file}: {why}")
        if given.mask_sha256 and not r.mask and given.mask is None:
            raise LatentBasisError(f"{r.basis_file} is a basis of a region and does not hold its mask (a file from an "
                                   "older version): give the region here too (mask; a region of the same number of "
                                   "pixels)")
    mask = given.mask if given is not None and not r.mask else None   # a region basis' own region, where not given
    if r.mask:
        mask = parse_mask(r.mask, pixel_size(model)[1])
        digest = mask_sha256(mask)
        if r.mask_sha256 and r.mask_sha256 != digest:
            raise LatentBasisError(f"the mask {r.mask} is not the one the recipe was made with")
        r.mask_sha256 = digest
        if r.space != "x0":
            raise LatentBasisError("a mask needs space x0 (the Jacobian of x0_hat over the region)")
    ts_max = model.num_train_timesteps - 1
    if r.timestep > ts_max:
        raise LatentBasisError(f"timestep {r.timestep} is outside the schedule [0, {ts_max}]")
    if r.image:   # before any slow work
        r.image_sha256 = _checked_sha256(r.image, r.image_sha256, "image")
    traj, img, notes = trajectory_for(model, timestep=r.timestep, seed=r.seed, image=r.image, num_steps=r.num_steps,
                                      prompt=r.prompt, guidance=r.guidance, stage=stage)
    recon = None
    if r.image:
        rec = denoise(model, traj.xs[:1], traj.timesteps, r.prompt, 1.0,
                      progress=stage("reconstruction", len(traj.timesteps)))
        recon = psnr(x_to_image(model, rec)[0], img)
    x_t = traj.at(r.timestep)
    step = stage("basis", None)
    basis_kw = dict(algorithm=r.algorithm, seed=r.basis_seed, tol=r.tol, mask=mask, null_rank=r.null_rank,
                    callback=(lambda info: step(1)) if step else None)
    if given is not None:
        basis = transported_basis(model, given, x_t, r.timestep, prompt=r.prompt, rank=r.transport_rank,
                                   transfer=r.transfer, **basis_kw)
    else:
        basis = latent_basis(model, x_t, timestep=r.timestep, k=r.k, prompt=r.prompt, space=r.space, **basis_kw)
    settings = EditSettings(r.method, r.n_iter, r.step, r.scale, r.keep_norm)
    latent = basis.latent
    if r.direction is not None:   # the direction whose edit does what is asked, along its "+" or its "-"
        strength = max(abs(float(s)) for s in r.strengths) or 6.0     # the edit's own range (6: the default's)
        described = describe_by_edits(model, basis, traj, strength, settings, conditions=False,
                                      progress=stage("describing", edit_steps(traj, r.timestep, settings)))
        i, sign, what = pick_direction(described, r.direction)
        notes.append(f"picked {what}")
        r.directions = [i]
        latent = basis.latent.clone()
        latent[i] *= sign
    if r.combination is not None:
        d = combine(basis.latent, {int(i): float(w) for i, w in r.combination.items()})[None]
        rows, cols = 1, 1
    else:
        d = sweep_directions(latent, r.directions, r.strengths)
        rows, cols = len(r.directions), len(r.strengths)
    images = x_to_image(model, edit_images(model, traj, r.timestep, d, settings,
                                           progress=stage("edits", edit_steps(traj, r.timestep, settings))))
    r.model, r.model_hash, r.version = model.name, model.model_hash, __version__
    r.dtype, r.device = dtype_name(model.dtype), str(model.device)
    r.guidance_scale = getattr(model, "distilled_guidance", None)
    return EditResult(images.reshape(rows, cols, *images.shape[1:]), basis, traj, r, recon, notes,
                      basis.extra.get("kept"), model.name)


def recipe_for(model, basis, trajectory, weights: dict[int, float], *, timestep: int, t_fraction: float | None,
               num_steps: int, seed: int | None = None, image: str | None = None, basis_file: str | None = None,
               method: str = "guidance", mask_file: str | None = None) -> EditRecipe:
    """The recipe of one combined edit sum_i weights[i] v_i of `basis` at `timestep` of `trajectory` (a seed's, or
    the inversion of `image`, on trajectory_grid(T, num_steps, timestep)), which run_recipe replays to the same
    pixels (the app's export)."""
    return EditRecipe(
        model=model.name, model_hash=model.model_hash, seed=seed, image=image,
        image_sha256=sha256_file(image) if image else None, prompt=trajectory.prompt,
        guidance=trajectory.guidance, num_steps=num_steps, timestep=timestep, t_fraction=t_fraction, k=basis.k, basis_file=basis_file,
        basis_sha256=sha256_file(basis_file) if basis_file else None, algorithm=basis.algorithm,
        basis_seed=basis.seed, tol=1e-3, method=method, directions=None, strengths=[],
        combination={str(i): float(w) for i, w in sorted(weights.items())} or {"0": 0.0},
        dtype=dtype_name(model.dtype), device=str(model.device), space=basis.space, mask=mask_file,
        null_rank=basis.null_rank)
