"""The latentbasis editor: find the directions a diffusion model considers most important and slide along them.

    latentbasis app [--model digits] [--host 127.0.0.1] [--port 0] [--share] [--device auto] [--dtype float32]

A thin Gradio layer over the Python API. Every handler is a plain function of (model, session, inputs) so tests call
them directly; `build_app(model)` wires them into a Blocks page. Per-session state lives in a gr.State (one Session
per browser tab); the model is shared and read-only. A session's events run one at a time (its lock), so a click
while an upload is still being read waits for it. Bad input raises AppError; in the page it becomes a message in
one place (the status line) and every other output stays as it was. Messages never show server paths.
"""
from __future__ import annotations

import inspect
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latentbasis.atomic import process_running
from latentbasis.basis import latent_basis
from latentbasis.basisfile import load_basis, save_basis
from latentbasis.describe import describe_basis
from latentbasis.editing import (EditSettings, combine, edit_images, edit_steps, motion_refusal, sweep_directions,
                                 transported_basis)
from latentbasis.errors import LatentBasisError
from latentbasis.images import image_to_x, open_image, pixel_size, read_image, x_to_image
from latentbasis.loading import resolve_timestep
from latentbasis.recipe import EditRecipe, sha256_file
from latentbasis.sampling import Trajectory, invert, sample_trajectory, trajectory_grid
from latentbasis.validate import MAX_IMAGE_PIXELS

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network at run time

MAX_K = 12            # sliders made (the k slider goes up to this)
APP_STEPS = 50        # DDIM grid of the app's trajectories: an edit from t re-runs at most 50 steps
PREVIEW_STEPS = 6     # DDIM steps from t of a slider's quick preview (the full image follows)
PREVIEW = 6.0         # strength of the -/+ previews
DISPLAY = 192         # pixels of the shown images (nearest-neighbour upscaling of small models)
MAX_UPLOAD = "16mb"   # the largest file the page accepts
WORK_ROOT = Path(tempfile.gettempdir()) / "latentbasis-app"


@dataclass
class Session:
    """One browser tab's state: the source, its trajectory, the basis and the current edit."""

    seed: int | None = None
    image: str | None = None          # path of an uploaded image (DDIM-inverted)
    prompt: str | None = None
    guidance: float = 1.0
    timestep: int | None = None
    t_fraction: float | None = None
    trajectory: object = None
    basis: object = None
    basis_file: str | None = None     # an imported basis file, transported to this point
    strengths: dict = field(default_factory=dict)
    method: str = "guidance"
    edited: torch.Tensor | None = None  # the current edited image, pixels [C, H, W]
    region: dict = field(default_factory=dict)  # the basis' space, mask and null rank (transport needs the same)
    workdir: str = field(default_factory=lambda: _new_workdir())
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def close(self) -> None:
        """Remove the session's folder (exports, uploads copied there, reports)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def _work_root() -> Path:
    """The app's temporary root, private to this user: WORK_ROOT created 0700. Where that path is a link, not a
    folder, or another user's, it is left alone (never followed, never deleted) and a fresh private folder is made
    instead (tempfile.mkdtemp); this user's own folder is set to 0700."""
    global WORK_ROOT
    import stat

    root = WORK_ROOT
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError:
        root = None
    if root is not None:
        st = os.lstat(root)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            if st.st_mode & 0o077:
                os.chmod(root, 0o700)
            return root
    WORK_ROOT = Path(tempfile.mkdtemp(prefix="latentbasis-app-"))
    return WORK_ROOT


_WORKDIR_NAME = re.compile(r"(\d+)-[0-9a-f]{12}")


def _new_workdir() -> str:
    """A folder for one session (0700), named after this process so stale ones can be told apart
    (remove_stale_workdirs)."""
    d = _work_root() / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.mkdir(d, 0o700)
    return str(d)


def remove_stale_workdirs() -> int:
    """Remove session folders left by app processes that are no longer running; returns how many. Only folders
    the app made: named as _new_workdir names them, real folders (not links), this user's."""
    import stat

    removed = 0
    root = _work_root()
    for d in root.iterdir():
        m = _WORKDIR_NAME.fullmatch(d.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        if process_running(int(m.group(1))):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed += 1
    return removed


class AppError(Exception):
    """Bad input: shown as a message in the page's status line."""


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^/\\\s'\"():,]+)+[/\\]([^/\\\s'\"():,]+)")


def public(message: str) -> str:
    """A message for the page: every absolute path shortened to its file name."""
    return _PATH.sub(r"\1", message)


# ---------------------------------------------------------------- pictures

def display(x: torch.Tensor, size: int = DISPLAY) -> np.ndarray:
    """Pixels [C, H, W] in [-1, 1] -> uint8 [size, size, 3] (nearest-neighbour, so pixels stay visible)."""
    img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    img = img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]
    f = max(1, size // img.shape[-1])
    return img.repeat_interleave(f, 1).repeat_interleave(f, 2).permute(1, 2, 0).numpy()


def direction_picture(v: torch.Tensor, size: int = DISPLAY // 2) -> np.ndarray:
    """A latent direction [C, H, W] as uint8 RGB: blue-white-red for one channel, centred colours for three."""
    from matplotlib import colormaps

    from latentbasis.viz import direction_image

    a = direction_image(v)
    rgb = colormaps["RdBu_r"]((a + 1) / 2)[..., :3] if a.ndim == 2 else a
    t = torch.from_numpy((rgb * 255).round().astype(np.uint8)).permute(2, 0, 1)
    f = max(1, size // t.shape[-1])
    return t.repeat_interleave(f, 1).repeat_interleave(f, 2).permute(1, 2, 0).numpy()


def legend(model) -> str:
    """How to read a direction's picture (HTML): the colour scale of the gallery's first picture."""
    if model.x_shape[0] == 1 and not model.x_is_latent:
        bar = ("<span style='display:inline-block;width:140px;height:12px;vertical-align:middle;"
               "background:linear-gradient(to right,#2166ac,#f7f7f7,#b2182b)'></span>")
        return (f"<div id='legend'>direction v: <b>blue</b> {bar} <b>red</b> &nbsp; red where moving along +v "
                "brightens the pixel, blue where it darkens it; white: no change. Then the image at -6 and +6.</div>")
    return ("<div id='legend'>direction v: its first three channels shown around grey (grey: no change; a colour: "
            "the channels +v raises there). Then the image at -6 and +6.</div>")


def _strip(pictures: list[np.ndarray], gap: int = 4) -> np.ndarray:
    h = max(p.shape[0] for p in pictures)
    sep = np.full((h, gap, 3), 255, np.uint8)
    parts = []
    for p in pictures:
        parts += [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255), sep]
    return np.concatenate(parts[:-1], axis=1)


# ---------------------------------------------------------------- handlers (plain functions; tests call these)

def _checked_t(model, t: float) -> tuple[int, float]:
    try:
        return resolve_timestep(model.num_train_timesteps, fraction=float(t))
    except (LatentBasisError, TypeError, ValueError) as e:
        raise AppError(str(e)) from None


def _checked_prompt(model, prompt) -> str | None:
    """The condition: a text model's prompt, or a class-conditional model's label as the string "7"."""
    prompt = (str(prompt) if prompt is not None else "").strip() or None
    if prompt and not model.conditional:
        raise AppError(f"{model.name} is not a text model: it takes no prompt")
    if prompt and len(prompt) > 2000:
        raise AppError("the prompt is longer than 2000 characters")
    if prompt:
        try:
            model.encode_prompt(prompt)
        except LatentBasisError as e:
            raise AppError(str(e)) from None
    return prompt


def new_sample(model, s: Session, seed, t, prompt: str = "", guidance: float = 1.0, progress=None) -> np.ndarray:
    """Source = the DDIM sample of a seed (a text model's prompt and guidance); returns its picture."""
    try:
        seed = int(seed)
    except (TypeError, ValueError, OverflowError):
        raise AppError(f"the seed must be a whole number, got {seed!r}") from None
    if not 0 <= seed <= 2**63 - 1:
        raise AppError(f"the seed must be in [0, 2^63 - 1], got {seed}")
    prompt = _checked_prompt(model, prompt)
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise AppError(f"guidance must be a number, got {guidance!r}") from None
    if not 0 <= guidance <= 100:
        raise AppError(f"guidance {guidance} is out of range [0, 100]")
    ts, frac = _checked_t(model, t)
    n = len(trajectory_grid(model.num_train_timesteps, APP_STEPS, ts))
    traj = sample_trajectory(model, seed, num_steps=APP_STEPS, prompt=prompt, guidance=guidance, through=ts,
                             progress=_steps(progress, "sampling", n))
    _reset(s, seed=seed, image=None, prompt=prompt, guidance=guidance if model.conditional else 1.0,
           timestep=ts, t_fraction=frac, trajectory=traj)
    s.edited = x_to_image(model, traj.x0[None])[0]
    return display(s.edited)


def _steps(progress, desc: str, total: int):
    """A step counter feeding a Gradio progress (progress(fraction, desc)) with real steps; None without one."""
    if progress is None or total <= 0:
        return None
    done = [0]

    def step(n: int = 1) -> None:
        done[0] += n
        progress(min(1.0, done[0] / total), desc=f"{desc}: step {done[0]} of {total}")

    return step


def upload_image(model, s: Session, path, t, prompt: str = "", progress=None) -> tuple[np.ndarray, str]:
    """Source = an uploaded image, DDIM-inverted to t; returns (its reconstruction's picture, a status line with
    what was converted on the way in)."""
    from latentbasis.recipe import psnr
    from latentbasis.sampling import denoise

    if not path:
        raise AppError("no image was uploaded")
    prompt = _checked_prompt(model, prompt)
    ts, frac = _checked_t(model, t)
    img, traj, notes = _inverted(model, path, prompt, ts, progress)
    _reset(s, seed=None, image=str(path), prompt=prompt, guidance=1.0, timestep=ts, t_fraction=frac, trajectory=traj)
    i = traj.index(ts)
    rec = x_to_image(model, denoise(model, traj.xs[i][None], traj.timesteps[i:], prompt,
                                    progress=_steps(progress, "reconstruction", len(traj.timesteps) - i)))[0]
    s.edited = rec
    msg = f"Inverted {Path(path).name}: reconstruction from t = {frac:.2f} at {psnr(rec, img):.1f} dB PSNR."
    return display(rec), "".join(f"Note: {n}. " for n in notes) + msg


def _inverted(model, path, prompt: str | None, ts: int, progress=None):
    """(the image read for the model [C, H, W], its DDIM inversion on the app's grid through ts, notes)."""
    c, size = pixel_size(model)
    try:
        img, notes = read_image(path, c, size)
    except LatentBasisError as e:
        raise AppError(str(e)) from None
    n = len(trajectory_grid(model.num_train_timesteps, APP_STEPS, ts))
    traj = invert(model, image_to_x(model, img), num_steps=APP_STEPS, prompt=prompt, through=ts,
                  progress=_steps(progress, "inversion", n))
    return img, traj, notes


def _reset(s: Session, **kw) -> None:
    for k, v in kw.items():
        setattr(s, k, v)
    s.basis, s.basis_file, s.strengths, s.region = None, None, {}, {}


def _move_to_t(model, s: Session, t, progress=None) -> None:
    """Make the session's trajectory pass through t (a new t re-samples or re-inverts the same source)."""
    ts, frac = _checked_t(model, t)
    if s.trajectory is None:
        raise AppError("choose a source first: press Sample, or upload an image")
    if ts in s.trajectory.timesteps:
        s.timestep, s.t_fraction = ts, frac
        return
    if s.image:
        s.trajectory = _inverted(model, s.image, s.prompt, ts, progress)[1]
    else:
        n = len(trajectory_grid(model.num_train_timesteps, APP_STEPS, ts))
        s.trajectory = sample_trajectory(model, s.seed, num_steps=APP_STEPS, prompt=s.prompt, guidance=s.guidance,
                                         through=ts, progress=_steps(progress, "sampling", n))
    s.timestep, s.t_fraction = ts, frac


def region_mask(model, painted) -> torch.Tensor | None:
    """The region painted over the shown image (an ImageEditor value: its first layer's painted pixels) as a mask
    of the model's images [S, S] (a pixel is in when at least half of it is painted); None when nothing is."""
    if not painted:
        return None
    layers = painted.get("layers") if isinstance(painted, dict) else None
    if not layers:
        return None
    layer = layers[0]
    if isinstance(layer, (str, os.PathLike)):   # the page sends a file: opened as uploads are, limits before decoding
        try:
            layer = open_image(layer, "the painted layer").convert("RGBA")
        except LatentBasisError as e:
            raise AppError(str(e)) from None
    a = np.asarray(layer)
    if a.ndim >= 2 and a.shape[0] * a.shape[1] > MAX_IMAGE_PIXELS:   # the limit uploads are held to
        raise AppError(f"the painted layer is {a.shape[1]}x{a.shape[0]} pixels: more than the {MAX_IMAGE_PIXELS:,} "
                       "read")
    if a.ndim != 3 or a.shape[-1] < 4 or not (a[..., 3] > 0).any():
        return None
    S = model.pixel_size()[1]
    m = torch.from_numpy((a[..., 3] > 0).astype(np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(m, (S, S))[0, 0] >= 0.5


def find_directions(model, s: Session, t, k, method: str, progress=None, space: str = "h", mask=None,
                    null_rank=0) -> list[tuple[np.ndarray, str]]:
    """The top-k latent basis at x_t; returns the gallery: per direction (picture | -preview | +preview, caption).
    space "x0" takes the Jacobian of x0_hat, of the region `mask` (an image mask [S, S]) when given, optionally kept
    off the rest's top null_rank directions (LOCO-Edit). progress(fraction, desc): the basis by its residual (it
    falls from ~1 to the tolerance 1e-3), then the previews by their real DDIM steps."""
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise AppError(f"k must be a whole number, got {k!r}") from None
    if not 1 <= k <= MAX_K:
        raise AppError(f"k = {k} is out of range: 1 <= k <= {MAX_K}")
    s.method = _checked_method(method)
    _move_to_t(model, s, t, progress)
    x_t = s.trajectory.at(s.timestep)

    def report(info):
        r = info["residual"]
        frac = min(1.0, max(0.0, np.log10(r) / -3.0)) if np.isfinite(r) and r > 0 else 0.0
        progress(frac, desc=f"basis: iteration {info['iteration']}, residual {r:.1e} (stops at 1e-3)")

    if space not in ("h", "x0"):
        raise AppError(f"unknown space {space!r}")
    if mask is not None and not bool(torch.as_tensor(mask).any()):
        raise AppError("the painted region is empty: paint over the image, or clear it")
    try:
        null_rank = int(null_rank or 0)
    except (TypeError, ValueError):
        raise AppError(f"the null rank must be a whole number, got {null_rank!r}") from None
    region = dict(space=space, mask=mask if space == "x0" else None, null_rank=null_rank if space == "x0" else 0)
    if region["null_rank"] and region["mask"] is None:
        raise AppError("a null rank needs a painted region: it keeps the edit off the rest of the image")
    try:
        basis = latent_basis(model, x_t, timestep=s.timestep, k=k, prompt=s.prompt,
                             callback=report if progress is not None else None, **region)
        describe_basis(model, basis)     # the captions: what each direction does (k JVPs)
    except LatentBasisError as e:
        raise AppError(str(e)) from None
    s.basis, s.basis_file, s.strengths, s.region = basis, None, {}, region
    return _gallery(model, s, progress)


def apply_to_others(model, s: Session, method: str, strengths: list[float], n: int = 3,
                    progress=None) -> list[tuple[np.ndarray, str]]:
    """The current edit carried to the next n seeds: each one's own basis (same space and region) with the edit's
    directions transported onto it; x0 directions of this image are first re-made on each seed as the same motion of
    the region's content (transfer "motion"). Pictures (unedited | edited) captioned with how much of each direction
    the seed's tangent span keeps (and, carried by motion, how much of it is a motion there)."""

    w = _weights(s, strengths)
    if not w:
        raise AppError("move a slider first: there is no edit to carry")
    method = _checked_method(method)
    start = (s.seed if s.seed is not None else 0) + 1
    out = []
    for j, seed in enumerate(range(start, start + n)):
        if progress is not None:
            progress(j / n, desc=f"seed {seed}")
        traj = sample_trajectory(model, seed, num_steps=APP_STEPS, prompt=s.prompt, guidance=s.guidance,
                                 through=s.timestep)
        region = getattr(s, "region", {}) or {}
        try:
            moved = transported_basis(model, s.basis, traj.at(s.timestep), s.timestep, prompt=s.prompt,
                                      mask=region.get("mask"), null_rank=region.get("null_rank", 0),
                                      transfer="tangent" if motion_refusal(s.basis) else "motion")
        except LatentBasisError as e:
            raise AppError(str(e)) from None
        d = combine(moved.latent, w)[None]
        img = x_to_image(model, edit_images(model, traj, s.timestep, d, EditSettings(method=method)))[0]
        kept = moved.extra.get("kept") or [1.0] * moved.k
        cap = f"seed {seed}: kept " + ", ".join(f"v{i + 1} {100 * kept[i]:.0f} %" for i in sorted(w))
        share = moved.extra.get("motion_share")
        if share is not None:
            cap += "; a motion " + ", ".join(f"v{i + 1} {100 * share[i]:.0f} %" for i in sorted(w))
        out.append((_strip([display(x_to_image(model, traj.x0[None])[0], DISPLAY // 2),
                            display(img, DISPLAY // 2)]), cap))
    return out


def _checked_method(method: str) -> str:
    if method not in ("guidance", "direct"):
        raise AppError(f"unknown edit method {method!r}")
    return method


def _settings(s: Session) -> EditSettings:
    return EditSettings(method=s.method)


def _gallery(model, s: Session, progress=None) -> list[tuple[np.ndarray, str]]:
    b = s.basis
    d = sweep_directions(b.latent, list(range(b.k)), [-PREVIEW, PREVIEW])
    n = edit_steps(s.trajectory, s.timestep, _settings(s))
    prev = x_to_image(model, edit_images(model, s.trajectory, s.timestep, d, _settings(s),
                                         progress=_steps(progress, "previews", n)))
    out = []
    for i in range(b.k):
        pic = _strip([direction_picture(b.latent[i]), display(prev[2 * i], DISPLAY // 2),
                      display(prev[2 * i + 1], DISPLAY // 2)])
        what = f"  {b.descriptions[i]['name']}" if b.descriptions else ""
        out.append((pic, f"v{i + 1}{what}  s = {float(b.singular_values[i]):.3g}   (-{PREVIEW:g} | +{PREVIEW:g})"))
    return out


def _weights(s: Session, strengths) -> dict[int, float]:
    if s.basis is None:
        raise AppError("press Find directions first")
    w = {}
    for i, v in enumerate(list(strengths)[:s.basis.k]):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise AppError(f"strength of direction {i + 1} is not a number: {v!r}") from None
        if not np.isfinite(v) or abs(v) > 50:
            raise AppError(f"strength {v} of direction {i + 1} is out of range [-50, 50]")
        if v != 0:
            w[i] = v
    return w


def preview_edit(model, s: Session, method: str, strengths: list[float]) -> np.ndarray:
    """A quick look at the combined edit: the same edit at x_t, then DDIM in PREVIEW_STEPS steps from t instead of
    the trajectory's own grid (what a slider shows at once; apply_edit gives the full image, and the recipe)."""
    method = _checked_method(method)
    w = _weights(s, strengths)
    i = s.trajectory.index(s.timestep)
    coarse = sorted({int(round(v)) for v in np.linspace(s.timestep, 0, PREVIEW_STEPS + 1)}, reverse=True)
    quick = Trajectory(coarse, s.trajectory.xs[i][None].expand(len(coarse), *s.trajectory.xs.shape[1:]), None,
                       s.trajectory.prompt, s.trajectory.guidance)
    d = combine(s.basis.latent, w)[None]
    if not w:
        return display(s.trajectory.x0 if s.trajectory.x0 is not None else s.edited)
    return display(x_to_image(model, edit_images(model, quick, s.timestep, d, EditSettings(method=method)))[0])


def apply_edit(model, s: Session, method: str, strengths: list[float]) -> np.ndarray:
    """The combined edit d = sum_i strength_i v_i at x_t (what a released slider runs); returns its picture."""
    w = _weights(s, strengths)
    s.method = _checked_method(method)
    s.strengths = w
    d = combine(s.basis.latent, w)[None]
    s.edited = x_to_image(model, edit_images(model, s.trajectory, s.timestep, d, _settings(s)))[0]
    return display(s.edited)


def import_basis(model, s: Session, path) -> list[tuple[np.ndarray, str]]:
    """Use the directions of a basis file here: checked against this model, transported to this x_t."""
    if s.trajectory is None or s.timestep is None:
        raise AppError("choose a source first: press Sample, or upload an image")
    if not path:
        raise AppError("no basis file was given")
    try:
        given = load_basis(path, model=model, layer=model.default_layer)
        if given.k > MAX_K:
            raise LatentBasisError(f"the basis has k = {given.k} directions; the app shows at most {MAX_K}")
        basis = transported_basis(model, given, s.trajectory.at(s.timestep), s.timestep, prompt=s.prompt)
    except LatentBasisError as e:
        raise AppError(str(e)) from None
    s.basis, s.basis_file, s.strengths = basis, str(path), {}
    return _gallery(model, s)


def recipe_of(model, s: Session) -> EditRecipe:
    """The current edit as a recipe that `latentbasis edit --recipe` replays to the same pixels."""
    if s.basis is None:
        raise AppError("press Find directions first")
    b = s.basis
    return EditRecipe(
        model=model.name, model_hash=model.model_hash, seed=s.seed, image=s.image,
        image_sha256=sha256_file(s.image) if s.image else None, prompt=s.prompt, guidance=s.guidance,
        num_steps=APP_STEPS, timestep=s.timestep, t_fraction=s.t_fraction, k=b.k, basis_file=s.basis_file,
        basis_sha256=sha256_file(s.basis_file) if s.basis_file else None, algorithm=b.algorithm, basis_seed=b.seed,
        tol=1e-3, method=s.method, directions=None, strengths=[],
        combination={str(i): float(v) for i, v in sorted(s.strengths.items())} or {"0": 0.0},
        dtype=str(model.dtype).removeprefix("torch."), device=str(model.device),
        space=b.space, mask=_mask_file(s), null_rank=b.null_rank)


def _mask_file(s: Session) -> str | None:
    """The session's painted region as a PNG in its folder (what a recipe records), or None."""
    mask = (s.region or {}).get("mask")
    if mask is None:
        return None
    from PIL import Image

    from latentbasis.atomic import atomic_path

    path = Path(s.workdir) / "mask.png"
    with atomic_path(path) as tmp:
        Image.fromarray((mask.numpy() * 255).astype(np.uint8)).save(tmp, format="PNG")
    return str(path)


def export(model, s: Session) -> tuple[str, ...]:
    """(basis .safetensors, edited image .png, recipe .json[, the region's mask .png]): files in this session's
    folder, for download."""
    from PIL import Image

    from latentbasis.atomic import atomic_path, write_text_atomic

    if s.basis is None or s.edited is None:
        raise AppError("press Find directions first")
    d = Path(s.workdir)
    d.mkdir(parents=True, exist_ok=True)
    basis_path = save_basis(s.basis, d / "basis.safetensors")
    png = d / "edited.png"
    pix = ((s.edited.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = pix[0].numpy() if pix.shape[0] == 1 else pix[:3].permute(1, 2, 0).numpy()
    with atomic_path(png) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    recipe = d / "recipe.json"
    write_text_atomic(recipe, recipe_of(model, s).to_json())
    mask = d / "mask.png"
    return (str(basis_path), str(png), str(recipe)) + ((str(mask),) if (s.region or {}).get("mask") is not None
                                                        else ())


def small_report(model, s: Session, samples, timesteps, k, progress=None) -> tuple[list[tuple[str, str]], str, str]:
    """A small similarity report of this model in the session folder: (plots with captions, findings, report.html).
    The tangent-space part only (the generation-geometry part is the command line's `latentbasis report`).
    progress(fraction, desc): one step per basis of the grid."""
    from latentbasis.report import ReportSettings, run_report, verdict

    try:
        settings = ReportSettings(samples=int(samples), timesteps=int(timesteps), k=int(k), num_steps=APP_STEPS,
                                  geometry=False)
    except (TypeError, ValueError):
        raise AppError("samples, timesteps and k must be whole numbers") from None
    if not (2 <= settings.samples <= 16 and 2 <= settings.timesteps <= 12 and 1 <= settings.k <= MAX_K):
        raise AppError(f"out of range: 2-16 samples, 2-12 timesteps, 1 <= k <= {MAX_K}")
    out = Path(s.workdir) / f"report-{settings.samples}-{settings.timesteps}-{settings.k}"
    cb = (lambda done, total: progress(done / total, desc=f"bases: {done} of {total}")) if progress else None
    try:
        n = run_report(model, out, settings, progress=False, callback=cb)
    except LatentBasisError as e:
        raise AppError(str(e)) from None
    names = [("spectrum", "singular values"), ("sample_distance", "tangent spaces across samples"),
             ("timestep_distance", "across timesteps"), ("frequency", "frequency content"),
             ("prompt_distance", "prompts"), ("theory", "theory overlays"), ("directions", "directions")]
    plots = [(str(out / f"{f}.png"), c) for f, c in names if (out / f"{f}.png").exists()]
    text = "\n".join(f"- **{verdict(f)}**: {f['claim']} ({f['evidence']})" for f in n["findings"])
    return plots, text, str(out / "report.html")


# ---------------------------------------------------------------- the page

CSS = """
#gallery .thumbnail-item {aspect-ratio: auto !important; height: auto !important; min-height: 0;
  overflow: visible !important; display: flex; flex-direction: column}
#gallery .thumbnail-item img {aspect-ratio: 296 / 96; width: 100%; height: auto; object-fit: contain}
#gallery .caption-label {white-space: normal; font-size: 13px; position: static !important; max-width: none;
  background: none; color: inherit; text-align: left; padding: 2px 4px}
#status {min-height: 1.5em}
#status .error {color: #b00020; font-weight: bold}
#plots img {object-fit: contain}
"""


def build_app(model):
    import gradio as gr

    sessions: dict[str, list[Session]] = {}   # browser session -> its Sessions, removed when the tab closes

    def session_for(s: Session | None, request) -> Session:
        if s is None:
            s = Session()
            sessions.setdefault(getattr(request, "session_hash", None) or "", []).append(s)
        return s

    def close_sessions(request):
        for s in sessions.pop(getattr(request, "session_hash", None) or "", []):
            s.close()

    close_sessions.__annotations__ = {"request": gr.Request}   # Gradio passes the request to a parameter so marked

    def handler(fn, n_inputs: int, outputs: list, stream: bool = False):
        """fn(session, *inputs[1:], progress=...) -> outputs (the session first), as a Gradio event function: the
        session is made on first use and locked while fn runs; an error becomes a message in the status line and
        every other output keeps its value. Gradio passes the request and the progress tracker by position, after
        the inputs (its special arguments are read from the signature set here)."""
        si = outputs.index(status)

        def failed(s, e: Exception):
            if isinstance(e, (AppError, LatentBasisError)):
                msg = public(str(e))
            else:
                print(f"latentbasis app: {type(e).__name__} in {fn.__name__}: {e}", file=sys.stderr)
                msg = f"unexpected {type(e).__name__}; the page is unchanged (details in the server's log)"
            out = [gr.update()] * len(outputs)
            out[0], out[si] = s, f"<span class='error'>Error: {msg}</span>"
            return tuple(out)

        def split(args):
            *inputs, request, progress = args
            return session_for(inputs[0], request), inputs[1:], progress

        if stream:
            def run(*args):
                s, inputs, progress = split(args)
                with s.lock:
                    try:
                        yield from fn(s, *inputs, progress=progress)
                    except Exception as e:
                        yield failed(s, e)
        else:
            def run(*args):
                s, inputs, progress = split(args)
                with s.lock:
                    try:
                        return fn(s, *inputs, progress=progress)
                    except Exception as e:
                        return failed(s, e)

        P = inspect.Parameter
        run.__signature__ = inspect.Signature(
            [P(f"input{i}", P.POSITIONAL_OR_KEYWORD) for i in range(n_inputs)]
            + [P("request", P.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
               P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress())])
        run.__annotations__ = {"request": gr.Request}
        run.__name__ = run.__qualname__ = fn.__name__
        return run

    def wire(listener, fn, inputs: list, outputs: list, stream: bool = False, **kw):
        listener(handler(fn, len(inputs), outputs, stream), inputs, outputs, **kw)

    text = model.conditioning == "text"
    klass = model.conditioning == "class"
    with gr.Blocks(title="latentbasis editor") as demo:
        state = gr.State(None, delete_callback=lambda s: s.close() if s is not None else None)
        gr.Markdown(f"## latentbasis editor: `{model.name}`\nPick a source, press **Find directions**, then slide. "
                    f"Directions are the top right singular vectors of the Jacobian of the network's "
                    f"`{model.default_layer}` at x_t.")
        status = gr.HTML(elem_id="status")
        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column(scale=2):
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                    if klass:   # a class-conditional model takes its label where a text model takes a prompt
                        prompt = gr.Dropdown([str(i) for i in range(model.num_classes)],
                                             value=str(min(7, model.num_classes - 1)), label="class label",
                                             elem_id="prompt")
                    else:
                        prompt = gr.Textbox(label="prompt", visible=text, elem_id="prompt",
                                            value="the digit seven" if text else "")
                    guidance = gr.Slider(1.0, 8.0, value=3.0, step=0.5, label="guidance", visible=text or klass)
                    sample_btn = gr.Button("Sample", elem_id="sample")
                    upload = gr.File(label="or upload an image (it is DDIM-inverted; colour and grey are converted "
                                           "to what the model takes)", elem_id="upload", height=130,
                                     file_types=["image"])
                    t = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="timestep t (fraction of T)", elem_id="t")
                    k = gr.Slider(1, MAX_K, value=6, step=1, label="k (number of directions)", elem_id="k")
                    method = gr.Radio(["guidance", "direct"], value="guidance", label="edit method")
                    space = gr.Radio([("h: pullback of h (the paper)", "h"),
                                      ("x0: Jacobian of x0_hat, of the painted region (LOCO-Edit)", "x0")],
                                     value="h", label="directions of", elem_id="space")
                    find_btn = gr.Button("Find directions", variant="primary", elem_id="find")
                with gr.Column(scale=2):
                    with gr.Row():
                        source = gr.Image(label="source", format="png", interactive=False, elem_id="source",
                                          height=200)
                        edited = gr.Image(label="edited", format="png", interactive=False, elem_id="edited",
                                          height=200)
                    sliders = [gr.Slider(-10, 10, value=0, step=0.5, label=f"v{i + 1}", visible=False,
                                         elem_id=f"v{i + 1}") for i in range(MAX_K)]
            with gr.Accordion("Region: paint where the edit should act (with x0 directions)", open=True,
                              elem_id="region-box"):
                with gr.Row():
                    region = gr.ImageEditor(label="paint over the image", type="filepath", elem_id="region",
                                            sources=(), layers=False, height=240, transforms=(),
                                            brush=gr.Brush(colors=["#ff0000"], default_size=24, color_mode="fixed"))
                    with gr.Column():
                        null_rank = gr.Slider(0, 32, value=32, step=1, elem_id="null-rank",
                                              label="keep off the rest: null rank r (0: none)")
                        gr.Markdown("Measured on `shapes` at t = 0.2 with the direct edit and r = 32: the change stays "
                                    "inside the box (median 100 %) and, carried to another sample as the same "
                                    "motion, moves the same factor the same way in 98 % of pairs "
                                    "(docs/benchmarks.md).")
            gr.HTML(legend(model))
            gallery = gr.Gallery(label="directions: v_i | -6 | +6", columns=3, format="png", elem_id="gallery",
                                 object_fit="contain", height="auto", allow_preview=False)
            with gr.Row():
                export_btn = gr.Button("Export basis, image and recipe", elem_id="export")
                imported = gr.File(label="import a basis file (.safetensors)", elem_id="import",
                                   file_types=[".safetensors"])
            files = gr.File(label="exports", file_count="multiple", interactive=False, elem_id="exports")
            others_btn = gr.Button("Apply to other samples", elem_id="others-btn")
            others = gr.Gallery(label="the same edit carried to the next seeds: unedited | edited", columns=3,
                                format="png", elem_id="others", object_fit="contain", height="auto",
                                allow_preview=False)
        with gr.Tab("Similarity report"):
            with gr.Row():
                r_samples = gr.Slider(2, 16, value=4, step=1, label="samples")
                r_steps = gr.Slider(2, 12, value=4, step=1, label="timesteps")
                r_k = gr.Slider(1, MAX_K, value=4, step=1, label="k")
                r_btn = gr.Button("Run report", elem_id="run-report")
            r_findings = gr.Markdown()
            r_plots = gr.Gallery(label="plots", columns=2, format="png", height="auto", object_fit="contain",
                                 elem_id="plots", allow_preview=True)
            r_file = gr.File(label="report.html")

        def slider_updates(n, basis=None):
            return [gr.update(visible=i < n, value=0,
                              label=f"v{i + 1}" + (f"  (s = {float(basis.singular_values[i]):.3g})" if i < n else ""))
                    for i in range(MAX_K)]

        outs_src = [state, source, edited, gallery, status, region, *sliders]
        outs_find = [state, gallery, edited, status, *sliders]

        def on_sample(s, seed_v, t_v, prompt_v, guidance_v, progress=None):
            pic = new_sample(model, s, seed_v, t_v, prompt_v, guidance_v, progress)
            return s, pic, pic, [], f"Seed {s.seed} at t = {s.t_fraction:.2f}.", pic, *slider_updates(0)

        def on_upload(s, path, t_v, prompt_v, progress=None):
            pic, msg = upload_image(model, s, path, t_v, prompt_v, progress)
            return s, pic, pic, [], public(msg), pic, *slider_updates(0)

        def on_find(s, t_v, k_v, m, space_v, painted, r_v, progress=None):
            mask = region_mask(model, painted) if space_v == "x0" else None
            g = find_directions(model, s, t_v, k_v, m, progress, space=space_v, mask=mask,
                                null_rank=r_v if mask is not None else 0)
            where = (f"of the painted region ({int(mask.sum())} pixels, null rank {s.region['null_rank']})"
                     if mask is not None else "of x0_hat" if space_v == "x0" else "of h")
            return (s, g, display(s.edited), f"{s.basis.k} directions {where} at t = {s.t_fraction:.2f} "
                    f"({s.basis.jvps + s.basis.vjps} Jacobian products, {s.basis.seconds:.2f} s).",
                    *slider_updates(s.basis.k, s.basis))

        def on_others(s, m, *vals, progress=None):
            pics = apply_to_others(model, s, m, list(vals), progress=progress)
            how = "" if motion_refusal(s.basis) else " as the same motion of the region's content"
            return s, pics, f"The edit carried to the next seeds{how} (each caption: how much of each direction " \
                "the seed's tangent span keeps)."

        def on_slide(s, m, *vals, progress=None):
            t0 = time.perf_counter()
            yield s, preview_edit(model, s, m, list(vals)), f"Preview ({PREVIEW_STEPS} DDIM steps, " \
                f"{time.perf_counter() - t0:.2f} s); the full image follows."
            t0 = time.perf_counter()
            pic = apply_edit(model, s, m, list(vals))
            yield s, pic, f"Edited: {', '.join(f'v{i + 1} {w:+g}' for i, w in s.strengths.items()) or 'none'} " \
                f"({time.perf_counter() - t0:.2f} s)."

        def on_import(s, path, progress=None):
            if not path:
                return (s, gr.update(), gr.update(), *[gr.update()] * MAX_K)
            g = import_basis(model, s, path)
            return (s, g, f"Imported {Path(path).name}: {s.basis.k} directions transported to this image.",
                    *slider_updates(s.basis.k, s.basis))

        def on_export(s, progress=None):
            return s, list(export(model, s)), "Exported the basis, the edited image and its recipe."

        def on_report(s, n, m, kk, progress=None):
            plots, text_, html_ = small_report(model, s, n, m, kk, progress)
            return s, plots, text_, html_, "Report written."

        wire(sample_btn.click, on_sample, [state, seed, t, prompt, guidance], outs_src)
        wire(upload.upload, on_upload, [state, upload, t, prompt], outs_src)
        wire(find_btn.click, on_find, [state, t, k, method, space, region, null_rank], outs_find)
        wire(others_btn.click, on_others, [state, method, *sliders], [state, others, status])
        for sl in sliders:
            wire(sl.release, on_slide, [state, method, *sliders], [state, edited, status], stream=True,
                 show_progress="hidden")
        wire(imported.upload, on_import, [state, imported], [state, gallery, status, *sliders])
        wire(export_btn.click, on_export, [state], [state, files, status])
        wire(r_btn.click, on_report, [state, r_samples, r_steps, r_k], [state, r_plots, r_findings, r_file, status])
        wire(demo.load, on_sample, [state, seed, t, prompt, guidance], outs_src)
        demo.unload(close_sessions)
    demo.queue(default_concurrency_limit=2)
    return demo


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_for_server(host: str, port: int, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with socket.create_connection((host if host != "0.0.0.0" else "127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise LatentBasisError(f"the app did not start listening on port {port} within {timeout:.0f} s")


def launch(model, host: str = "127.0.0.1", port: int = 0, share: bool = False, block: bool = True, on_ready=None):
    """Start the app (port 0: a free one); on_ready(url) once it accepts connections; returns (demo, url)."""
    remove_stale_workdirs()
    demo = build_app(model)
    port = port or free_port(host)
    url = f"http://{host}:{port}/"
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                footer_links=[], max_file_size=MAX_UPLOAD, css=CSS)
    _wait_for_server(host, port)
    if on_ready is not None:
        on_ready(url)
    if block:
        demo.block_thread()
    return demo, url
