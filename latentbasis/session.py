"""An editing session: one source (a seed's sample, or a real image DDIM-inverted) at a timestep, the basis found
there, and the combined edit along it. Each function is one user action (the editor app's buttons call them; a
notebook can too), checks its inputs with validate.py's bounds, and leaves the session as it was when it refuses.

    s = EditSession()
    sample(model, s, seed=0, t=0.6)                 # or upload(model, s, "photo.png", t=0.6)
    find_directions(model, s, k=6)                  # s.basis: the latent basis at x_t, described
    img = apply_edit(model, s, {0: 3.0})            # sum_i strength_i v_i, then DDIM to 0 (pixels [C, H, W])
    carried = carry(model, s, seeds=[1, 2, 3])      # the same edit on other samples (transport.carry_edit)
    recipe_of(model, s).to_json()                   # replays to the same pixels (latentbasis edit --recipe)

Stage reporters (`stage(description, total) -> step counter or None`) and basis callbacks report progress.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import validate as v
from .atomic import all_or_nothing, write_text_atomic
from .basis import SPACES, latent_basis
from .basisfile import load_basis, save_basis
from .describe import describe_basis
from .editing import METHODS, EditSettings, combine, edit_images, edit_pairs, edit_steps, preview_images
from .errors import LatentBasisError
from .images import x_to_image
from .loading import resolve_timestep
from .masks import save_mask_png
from .recipe import EditRecipe, psnr, recipe_for
from .registration import describe_pairs
from .sampling import denoise, trajectory_for
from .transport import CarriedEdit, carry_edit, transported_basis
from .viz import save_png


@dataclass
class EditSession:
    """The source, its trajectory through the timestep, the basis there and the current edit."""

    num_steps: int = 50               # DDIM grid of the trajectories: an edit from t re-runs at most this many steps
    seed: int | None = None
    image: str | None = None          # path of a real image (DDIM-inverted)
    prompt: str | None = None
    guidance: float = 1.0
    timestep: int | None = None
    t_fraction: float | None = None
    trajectory: object = None
    basis: object = None
    basis_file: str | None = None     # an imported basis file, transported to this point
    strengths: dict = field(default_factory=dict)   # {direction: strength} of the current edit
    method: str = "guidance"
    edited: torch.Tensor | None = None  # the current edited image, pixels [C, H, W]
    region: dict = field(default_factory=dict)  # the basis' space, mask and null rank (transport needs the same)


def _t(model, t) -> tuple[int, float]:
    return resolve_timestep(model.num_train_timesteps, fraction=v.number(t, "t"))


def condition_of(model, prompt) -> str | None:
    """A text model's prompt, or a class-conditional model's label as the string "7"; None for "" (checked by the
    model's own encoder: a label out of range, a prompt its tokenizer refuses)."""
    prompt = v.optional_string((str(prompt) if prompt is not None else "").strip() or None, "the prompt")
    if prompt and not model.conditional:
        raise LatentBasisError(f"{model.name} is not a text model: it takes no prompt")
    if prompt:
        model.encode_prompt(prompt)
    return prompt


def _reset(s: EditSession, **kw) -> None:
    for k, val in kw.items():
        setattr(s, k, val)
    s.basis, s.basis_file, s.strengths, s.region = None, None, {}, {}


def sample(model, s: EditSession, seed, t, prompt=None, guidance=1.0, stage=None) -> torch.Tensor:
    """Source = the DDIM sample of `seed` through t (a text model's prompt and guidance); returns it [C, H, W]."""
    model = v.model(model)
    seed, guidance = v.seed(seed, "the seed"), v.guidance(guidance)
    prompt, (ts, frac) = condition_of(model, prompt), _t(model, t)
    guidance = guidance if model.conditional else 1.0
    traj, _, _ = trajectory_for(model, timestep=ts, seed=seed, num_steps=s.num_steps, prompt=prompt,
                                guidance=guidance, stage=stage)
    _reset(s, seed=seed, image=None, prompt=prompt, guidance=guidance, timestep=ts, t_fraction=frac, trajectory=traj)
    s.edited = x_to_image(model, traj.x0[None])[0]
    return s.edited


def upload(model, s: EditSession, path, t, prompt=None, stage=None) -> tuple[torch.Tensor, float, list[str]]:
    """Source = a real image, read for the model and DDIM-inverted through t. Returns (its reconstruction from t
    [C, H, W], the reconstruction's PSNR in dB, notes on what reading converted)."""
    model = v.model(model)
    if not path:
        raise LatentBasisError("no image was uploaded")
    prompt, (ts, frac) = condition_of(model, prompt), _t(model, t)
    traj, img, notes = trajectory_for(model, timestep=ts, image=str(path), num_steps=s.num_steps, prompt=prompt,
                                      stage=stage)
    _reset(s, seed=None, image=str(path), prompt=prompt, guidance=1.0, timestep=ts, t_fraction=frac, trajectory=traj)
    i = traj.index(ts)
    stage = stage or (lambda desc, total: None)
    s.edited = x_to_image(model, denoise(model, traj.xs[i][None], traj.timesteps[i:], prompt,
                                         progress=stage("reconstruction", len(traj.timesteps) - i)))[0]
    return s.edited, psnr(s.edited, img), notes


def move_to(model, s: EditSession, t, stage=None) -> None:
    """Make the session's trajectory pass through t (a new t re-samples or re-inverts the same source)."""
    model = v.model(model)
    ts, frac = _t(model, t)
    if s.trajectory is None:
        raise LatentBasisError("choose a source first: press Sample, or upload an image")
    if ts not in s.trajectory.timesteps:
        s.trajectory = trajectory_for(model, timestep=ts, seed=s.seed, image=s.image, num_steps=s.num_steps,
                                      prompt=s.prompt, guidance=s.guidance, stage=stage)[0]
    s.timestep, s.t_fraction = ts, frac


def find_directions(model, s: EditSession, t, k, method: str = "guidance", space: str = "h", mask=None,
                    null_rank=0, max_k: int = 1024, stage=None, callback=None):
    """The top-k latent basis at x_t (after move_to(t)), described (what each direction does to x0_hat), kept as
    s.basis. space "x0" takes the Jacobian of x0_hat, of the region `mask` (an image mask [S, S]) when given,
    optionally kept off the rest's top null_rank directions (LOCO-Edit). callback: latent_basis's."""
    k, s.method = v.count(k, "k", max_k), v.choice(method, "edit method", METHODS)
    move_to(model, s, t, stage)
    space, null_rank = v.choice(space, "space", SPACES), v.integer(null_rank or 0, "the null rank")
    if mask is not None and not bool(torch.as_tensor(mask).any()):
        raise LatentBasisError("the painted region is empty: paint over the image, or clear it")
    region = dict(space=space, mask=mask if space == "x0" else None, null_rank=null_rank if space == "x0" else 0)
    if region["null_rank"] and region["mask"] is None:
        raise LatentBasisError("a null rank needs a painted region: it keeps the edit off the rest of the image")
    basis = latent_basis(model, s.trajectory.at(s.timestep), timestep=s.timestep, k=k, prompt=s.prompt,
                         callback=callback, **region)
    describe_basis(model, basis)     # what each direction does (k JVPs)
    s.basis, s.basis_file, s.strengths, s.region = basis, None, {}, region
    return basis


def previews(model, s: EditSession, strength: float = 6.0, progress=None) -> torch.Tensor:
    """Each direction of the basis at -strength and +strength: images [k, 2, C, H, W] (one batch; progress(1)
    after each of its network steps)."""
    return edit_pairs(model, s.trajectory, s.timestep, _basis(s).latent, strength, EditSettings(method=s.method),
                      progress)


def preview_descriptions(s: EditSession, images: torch.Tensor, strength: float = 6.0) -> list[dict]:
    """What each direction of s.basis did to the finished image, from its previews (images [k, 2, C, H, W] at
    -strength and +strength, as previews() returns them): registration.describe_pairs, the reading `latentbasis
    edit` prints, `latentbasis basis` stores and benchmarks/describe_shapes.py measures; for a region's basis the
    share of the change outside the region too. They become the basis' descriptions (an exported basis file holds
    what the captions said), each keeping the label its first-order description found (condition_alignment)."""
    b = _basis(s)
    described = describe_pairs(images, strength, b.mask)
    for d, old in zip(described, b.descriptions or [{}] * b.k):
        d["condition"] = old.get("condition")
    b.descriptions = described
    return described


def preview_steps(s: EditSession) -> int:
    """How many network steps previews() makes (for a progress bar)."""
    return edit_steps(s.trajectory, s.timestep, EditSettings(method=s.method))


def _basis(s: EditSession):
    if s.basis is None:
        raise LatentBasisError("press Find directions first")
    return s.basis


def weights(s: EditSession, strengths) -> dict[int, float]:
    """{direction: strength} of a list of strengths (one per direction of the basis, in order), those at 0 left
    out, each held to the library's bounds. More values than directions may follow only at 0 (the app's hidden
    sliders): a nonzero strength past the basis' k directions names no direction and is refused, not dropped."""
    b = _basis(s)
    if isinstance(strengths, torch.Tensor) or type(strengths).__module__ == "numpy":
        strengths = strengths.tolist()      # a NumPy array or a tensor of strengths: its numbers
    if not isinstance(strengths, (list, tuple)):
        raise LatentBasisError(f"the strengths must be a list of numbers, one per direction, got "
                               f"{type(strengths).__name__}")
    if len(strengths) > v.MAX_STRENGTHS:
        raise LatentBasisError(f"the strengths: {len(strengths)} values, at most {v.MAX_STRENGTHS}")
    w = {i: v.strength(x, f"the strength of direction {i + 1}") for i, x in enumerate(strengths)}
    extra = [i for i, x in w.items() if i >= b.k and x != 0]
    if extra:
        raise LatentBasisError(f"direction {extra[0] + 1} has strength {w[extra[0]]:g}, but the basis has {b.k} "
                               f"direction{'s' if b.k != 1 else ''}")
    return {i: x for i, x in w.items() if x != 0}


def preview_edit(model, s: EditSession, strengths, method: str = "guidance", steps: int = 6) -> torch.Tensor:
    """A quick look at the combined edit (editing.preview_images: DDIM in `steps` steps from t); the source itself
    when every strength is 0. [C, H, W]"""
    method, w = v.choice(method, "edit method", METHODS), weights(s, strengths)
    if not w:
        return s.trajectory.x0 if s.trajectory.x0 is not None else s.edited
    d = combine(s.basis.latent, w)[None]
    return x_to_image(model, preview_images(model, s.trajectory, s.timestep, d, EditSettings(method=method),
                                            steps=steps))[0]


def apply_edit(model, s: EditSession, strengths, method: str = "guidance") -> torch.Tensor:
    """The combined edit d = sum_i strength_i v_i at x_t, then DDIM on the trajectory's grid; kept as s.edited."""
    w = weights(s, strengths)
    s.method, s.strengths = v.choice(method, "edit method", METHODS), w
    d = combine(s.basis.latent, w)[None]
    s.edited = x_to_image(model, edit_images(model, s.trajectory, s.timestep, d, EditSettings(method=s.method)))[0]
    return s.edited


def carry(model, s: EditSession, seeds, strengths=None, method: str | None = None, progress=None) -> list[CarriedEdit]:
    """The current edit (or `strengths`) carried to the samples of `seeds` (transport.carry_edit, in the basis'
    space and region; x0 directions of one image carried as the same motion of the region's content)."""
    w = weights(s, strengths) if strengths is not None else dict(s.strengths)
    if not w:
        raise LatentBasisError("move a slider first: there is no edit to carry")
    return carry_edit(model, _basis(s), w, seeds, num_steps=s.num_steps, prompt=s.prompt, guidance=s.guidance,
                      method=v.choice(method or s.method, "edit method", METHODS), mask=s.region.get("mask"),
                      null_rank=s.region.get("null_rank", 0), progress=progress)


def import_basis(model, s: EditSession, path, max_k: int = 1024):
    """The directions of a basis file here: checked against this model, transported to this x_t."""
    model = v.model(model)
    if s.trajectory is None or s.timestep is None:
        raise LatentBasisError("choose a source first: press Sample, or upload an image")
    if not path:
        raise LatentBasisError("no basis file was given")
    given = load_basis(path, model=model, layer=model.default_layer)
    if given.k > max_k:
        raise LatentBasisError(f"the basis has k = {given.k} directions; at most {max_k} are shown")
    s.basis = transported_basis(model, given, s.trajectory.at(s.timestep), s.timestep, prompt=s.prompt)
    s.basis_file, s.strengths = str(path), {}
    return s.basis


def recipe_of(model, s: EditSession, mask_file: str | None = None) -> EditRecipe:
    """The current edit as a recipe that run_recipe (latentbasis edit --recipe) replays to the same pixels; a
    region's mask is referenced as `mask_file` (export writes it)."""
    model = v.model(model)
    return recipe_for(model, _basis(s), s.trajectory, s.strengths, timestep=s.timestep, t_fraction=s.t_fraction,
                      num_steps=s.num_steps, seed=s.seed, image=s.image, basis_file=s.basis_file, method=s.method,
                      mask_file=mask_file)


def export(model, s: EditSession, folder: str | Path) -> list[Path]:
    """basis.safetensors, edited.png, recipe.json and, for a region, mask.png in `folder` (all of them or, where
    one cannot be written, none); returns their paths."""
    model = v.model(model)
    if _basis(s) is None or s.edited is None:
        raise LatentBasisError("press Find directions first")
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    mask = s.region.get("mask")
    with all_or_nothing():
        files = [save_basis(s.basis, d / "basis.safetensors"), save_png(s.edited, d / "edited.png")]
        files += [save_mask_png(mask, d / "mask.png")] if mask is not None else []
        write_text_atomic(d / "recipe.json",
                          recipe_of(model, s, str(files[2]) if mask is not None else None).to_json())
    return files[:2] + [d / "recipe.json"] + files[2:]
