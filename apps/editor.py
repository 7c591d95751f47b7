"""The latentbasis editor: find the directions a diffusion model considers most important and slide along them.

    latentbasis app [--model digits] [--host 127.0.0.1] [--port 0] [--share]

A thin Gradio layer over the Python API. Every handler is a plain function of (session, inputs) so tests call them
directly; `build_app(model)` wires them into a Blocks page. Per-session state lives in a gr.State (one Session per
browser tab); the model is shared and read-only. Bad input raises gr.Error: a message in the page, and the app
keeps running.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latentbasis.basis import latent_basis
from latentbasis.basisfile import load_basis, save_basis
from latentbasis.editing import EditSettings, combine, edit_images, sweep_directions, transported_basis
from latentbasis.errors import LatentBasisError
from latentbasis.images import image_to_x, load_image, pixel_size, x_to_image
from latentbasis.loading import resolve_timestep
from latentbasis.recipe import EditRecipe, sha256_file
from latentbasis.sampling import invert, sample_trajectory

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network at run time

MAX_K = 12            # sliders made (the k slider goes up to this)
APP_STEPS = 50        # DDIM grid of the app's trajectories: an edit from t re-runs at most 50 steps
PREVIEW = 6.0         # strength of the -/+ previews
DISPLAY = 192         # pixels of the shown images (nearest-neighbour upscaling of small models)


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
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="latentbasis-app-"))


class AppError(Exception):
    """Bad input: shown as a message in the page (gr.Error in the app)."""


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


def new_sample(model, s: Session, seed, t, prompt: str = "", guidance: float = 1.0) -> np.ndarray:
    """Source = the DDIM sample of a seed (a text model's prompt and guidance); returns its picture."""
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise AppError(f"the seed must be a whole number, got {seed!r}") from None
    if seed < 0:
        raise AppError(f"the seed must be 0 or more, got {seed}")
    prompt = (prompt or "").strip() or None
    if prompt and not model.conditional:
        raise AppError(f"{model.name} is not a text model: it takes no prompt")
    ts, frac = _checked_t(model, t)
    traj = sample_trajectory(model, seed, num_steps=APP_STEPS, prompt=prompt, guidance=float(guidance), through=ts)
    _reset(s, seed=seed, image=None, prompt=prompt, guidance=float(guidance) if model.conditional else 1.0,
           timestep=ts, t_fraction=frac, trajectory=traj)
    s.edited = x_to_image(model, traj.x0[None])[0]
    return display(s.edited)


def upload_image(model, s: Session, path, t, prompt: str = "") -> tuple[np.ndarray, str]:
    """Source = an uploaded image, DDIM-inverted to t; returns (its reconstruction's picture, a status line)."""
    from latentbasis.recipe import psnr
    from latentbasis.sampling import denoise

    if not path:
        raise AppError("no image was uploaded")
    prompt = (prompt or "").strip() or None
    if prompt and not model.conditional:
        raise AppError(f"{model.name} is not a text model: it takes no prompt")
    ts, frac = _checked_t(model, t)
    img, traj = _inverted(model, path, prompt, ts)
    _reset(s, seed=None, image=str(path), prompt=prompt, guidance=1.0, timestep=ts, t_fraction=frac, trajectory=traj)
    rec = x_to_image(model, denoise(model, traj.xs[traj.index(ts)][None], traj.timesteps[traj.index(ts):], prompt))[0]
    s.edited = rec
    return display(rec), f"Inverted {Path(path).name}: reconstruction from t = {frac:.2f} at {psnr(rec, img):.1f} dB PSNR."


def _inverted(model, path, prompt: str | None, ts: int):
    """(the image read for the model [C, H, W], its DDIM inversion on the app's grid through ts)."""
    c, size = pixel_size(model)
    try:
        img = load_image(path, c, size)
    except LatentBasisError as e:
        raise AppError(str(e)) from None
    return img, invert(model, image_to_x(model, img), num_steps=APP_STEPS, prompt=prompt, through=ts)


def _reset(s: Session, **kw) -> None:
    for k, v in kw.items():
        setattr(s, k, v)
    s.basis, s.basis_file, s.strengths = None, None, {}


def _move_to_t(model, s: Session, t) -> None:
    """Make the session's trajectory pass through t (a new t re-samples or re-inverts the same source)."""
    ts, frac = _checked_t(model, t)
    if s.trajectory is None:
        raise AppError("choose a source first: press Sample, or upload an image")
    if ts in s.trajectory.timesteps:
        s.timestep, s.t_fraction = ts, frac
        return
    if s.image:
        s.trajectory = _inverted(model, s.image, s.prompt, ts)[1]
    else:
        s.trajectory = sample_trajectory(model, s.seed, num_steps=APP_STEPS, prompt=s.prompt, guidance=s.guidance,
                                         through=ts)
    s.timestep, s.t_fraction = ts, frac


def find_directions(model, s: Session, t, k, method: str, progress=None) -> list[tuple[np.ndarray, str]]:
    """The top-k latent basis at x_t; returns the gallery: per direction (picture | -preview | +preview, caption)."""
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise AppError(f"k must be a whole number, got {k!r}") from None
    if not 1 <= k <= MAX_K:
        raise AppError(f"k = {k} is out of range: 1 <= k <= {MAX_K}")
    _move_to_t(model, s, t)
    s.method = _checked_method(method)
    x_t = s.trajectory.at(s.timestep)
    def report(info):  # residual falls from ~1 to the tolerance 1e-3: show its log as progress
        r = info["residual"]
        frac = min(0.95, max(0.0, np.log10(r) / -3.0)) if np.isfinite(r) and r > 0 else 0.0
        progress(frac, desc=f"iteration {info['iteration']}, residual {r:.1e}")

    try:
        s.basis = latent_basis(model, x_t, timestep=s.timestep, k=k, prompt=s.prompt,
                               callback=report if progress is not None else None)
    except LatentBasisError as e:
        raise AppError(str(e)) from None
    s.basis_file, s.strengths = None, {}
    return _gallery(model, s)


def _checked_method(method: str) -> str:
    if method not in ("guidance", "direct"):
        raise AppError(f"unknown edit method {method!r}")
    return method


def _settings(s: Session) -> EditSettings:
    return EditSettings(method=s.method)


def _gallery(model, s: Session) -> list[tuple[np.ndarray, str]]:
    b = s.basis
    d = sweep_directions(b.latent, list(range(b.k)), [-PREVIEW, PREVIEW])
    prev = x_to_image(model, edit_images(model, s.trajectory, s.timestep, d, _settings(s)))
    out = []
    for i in range(b.k):
        pic = _strip([direction_picture(b.latent[i]), display(prev[2 * i], DISPLAY // 2),
                      display(prev[2 * i + 1], DISPLAY // 2)])
        out.append((pic, f"v{i + 1}  s = {float(b.singular_values[i]):.3g}   (-{PREVIEW:g} | +{PREVIEW:g})"))
    return out


def apply_edit(model, s: Session, method: str, strengths: list[float]) -> np.ndarray:
    """The combined edit d = sum_i strength_i v_i at x_t (what a released slider runs); returns its picture."""
    if s.basis is None:
        raise AppError("press Find directions first")
    s.method = _checked_method(method)
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
        given = load_basis(path, model=model)
        if tuple(given.point.shape) != tuple(model.x_shape):
            raise LatentBasisError(f"the basis is for x of shape {tuple(given.point.shape)}, this model's is "
                                   f"{tuple(model.x_shape)}")
        if given.k > MAX_K:
            raise LatentBasisError(f"the basis has k = {given.k} directions; the app shows at most {MAX_K}")
        s.basis = transported_basis(model, given, s.trajectory.at(s.timestep), s.timestep, prompt=s.prompt)
    except LatentBasisError as e:
        raise AppError(str(e)) from None
    s.basis_file, s.strengths = str(path), {}
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
        dtype=str(model.dtype).removeprefix("torch."), device=str(model.device))


def export(model, s: Session) -> tuple[str, str, str]:
    """(basis .safetensors, edited image .png, recipe .json): files in this session's folder, for download."""
    from PIL import Image

    from latentbasis.atomic import atomic_path, write_text_atomic

    if s.basis is None or s.edited is None:
        raise AppError("press Find directions first")
    d = Path(s.workdir)
    basis_path = save_basis(s.basis, d / "basis.safetensors")
    png = d / "edited.png"
    pix = ((s.edited.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = pix[0].numpy() if pix.shape[0] == 1 else pix[:3].permute(1, 2, 0).numpy()
    with atomic_path(png) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    recipe = d / "recipe.json"
    write_text_atomic(recipe, recipe_of(model, s).to_json())
    return str(basis_path), str(png), str(recipe)


def small_report(model, s: Session, samples, timesteps, k, progress=None) -> tuple[list[tuple[str, str]], str, str]:
    """A small similarity report of this model in the session folder: (plots with captions, findings, report.html)."""
    from latentbasis.report import ReportSettings, run_report, verdict

    try:
        settings = ReportSettings(samples=int(samples), timesteps=int(timesteps), k=int(k), num_steps=APP_STEPS)
    except (TypeError, ValueError):
        raise AppError("samples, timesteps and k must be whole numbers") from None
    if not (2 <= settings.samples <= 16 and 2 <= settings.timesteps <= 12 and 1 <= settings.k <= MAX_K):
        raise AppError(f"out of range: 2-16 samples, 2-12 timesteps, 1 <= k <= {MAX_K}")
    out = Path(s.workdir) / f"report-{settings.samples}-{settings.timesteps}-{settings.k}"
    try:
        n = run_report(model, out, settings, progress=False)
    except LatentBasisError as e:
        raise AppError(str(e)) from None
    names = [("spectrum", "singular values"), ("sample_distance", "tangent spaces across samples"),
             ("timestep_distance", "across timesteps"), ("frequency", "frequency content"),
             ("prompt_distance", "prompts"), ("theory", "theory overlays"), ("directions", "directions")]
    plots = [(str(out / f"{f}.png"), c) for f, c in names if (out / f"{f}.png").exists()]
    text = "\n".join(f"- **{verdict(f['holds'])}**: {f['claim']} ({f['evidence']})" for f in n["findings"])
    return plots, text, str(out / "report.html")


# ---------------------------------------------------------------- the page

def build_app(model):
    import gradio as gr

    def guarded(fn):
        """Handler wrapper: AppError -> gr.Error (a message in the page); the app keeps running."""
        def run(*args, **kw):
            try:
                return fn(*args, **kw)
            except AppError as e:
                raise gr.Error(str(e)) from None
        run.__name__ = fn.__name__
        return run

    text = model.conditional
    with gr.Blocks(title="latentbasis editor") as demo:
        state = gr.State(None)   # a Session per browser tab, made on first use
        gr.Markdown(f"## latentbasis editor: `{model.name}`\nPick a source, press **Find directions**, then slide. "
                    "Directions are the top right singular vectors of the Jacobian of the U-Net bottleneck at x_t.")
        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column(scale=2):
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                    prompt = gr.Textbox(label="prompt", visible=text, elem_id="prompt",
                                        value="the digit seven" if text else "")
                    guidance = gr.Slider(1.0, 8.0, value=3.0, step=0.5, label="guidance", visible=text)
                    sample_btn = gr.Button("Sample", elem_id="sample")
                    upload = gr.File(label="or upload an image (it is DDIM-inverted)", elem_id="upload", height=130)
                    t = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="timestep t (fraction of T)", elem_id="t")
                    k = gr.Slider(1, MAX_K, value=6, step=1, label="k (number of directions)", elem_id="k")
                    method = gr.Radio(["guidance", "direct"], value="guidance", label="edit method")
                    find_btn = gr.Button("Find directions", variant="primary", elem_id="find")
                    status = gr.Markdown(elem_id="status")
                with gr.Column(scale=2):
                    with gr.Row():
                        source = gr.Image(label="source", format="png", interactive=False, elem_id="source",
                                          height=200)
                        edited = gr.Image(label="edited", format="png", interactive=False, elem_id="edited",
                                          height=200)
                    sliders = [gr.Slider(-10, 10, value=0, step=0.5, label=f"v{i + 1}", visible=False,
                                         elem_id=f"v{i + 1}") for i in range(MAX_K)]
            gallery = gr.Gallery(label="directions: v_i | -preview | +preview", columns=3, format="png",
                                 elem_id="gallery", object_fit="contain", height=360)
            with gr.Row():
                export_btn = gr.Button("Export basis, image and recipe", elem_id="export")
                imported = gr.File(label="import a basis file (.safetensors)", elem_id="import")
            files = gr.File(label="exports", file_count="multiple", interactive=False, elem_id="exports")
        with gr.Tab("Similarity report"):
            with gr.Row():
                r_samples = gr.Slider(2, 16, value=3, step=1, label="samples")
                r_steps = gr.Slider(2, 12, value=4, step=1, label="timesteps")
                r_k = gr.Slider(1, MAX_K, value=4, step=1, label="k")
                r_btn = gr.Button("Run report", elem_id="run-report")
            r_findings = gr.Markdown()
            r_plots = gr.Gallery(label="plots", columns=2, format="png", height="auto")
            r_file = gr.File(label="report.html")

        def slider_updates(n, basis=None):
            return [gr.update(visible=i < n, value=0,
                              label=f"v{i + 1}" + (f"  (s = {float(basis.singular_values[i]):.3g})" if i < n else ""))
                    for i in range(MAX_K)]

        def on_sample(s, seed_v, t_v, prompt_v, guidance_v):
            s = s if s is not None else Session()
            pic = new_sample(model, s, seed_v, t_v, prompt_v, guidance_v)
            return s, pic, pic, [], f"Seed {s.seed} at t = {s.t_fraction:.2f}.", *slider_updates(0)

        def on_upload(s, path, t_v, prompt_v):
            s = s if s is not None else Session()
            pic, msg = upload_image(model, s, path, t_v, prompt_v)
            return s, pic, pic, [], msg, *slider_updates(0)

        def on_find(s, t_v, k_v, m, progress=gr.Progress()):
            s = s if s is not None else Session()
            g = find_directions(model, s, t_v, k_v, m, progress)
            return s, g, display(s.edited), f"{s.basis.k} directions at t = {s.t_fraction:.2f} " \
                f"({s.basis.jvps + s.basis.vjps} Jacobian products, {s.basis.seconds:.2f} s).", \
                *slider_updates(s.basis.k, s.basis)

        def on_slide(s, m, *vals):
            s = s if s is not None else Session()
            return s, apply_edit(model, s, m, list(vals))

        def on_import(s, path):
            s = s if s is not None else Session()
            if not path:
                return (s, gr.update(), gr.update(), *[gr.update()] * MAX_K)
            g = import_basis(model, s, path)
            return (s, g, f"Imported {Path(path).name}: {s.basis.k} directions transported to this image.",
                    *slider_updates(s.basis.k, s.basis))

        def on_export(s):
            s = s if s is not None else Session()
            return list(export(model, s))

        def on_report(s, n, m, kk, progress=gr.Progress()):
            s = s if s is not None else Session()
            progress(0, desc="computing bases")
            plots, text_, html_ = small_report(model, s, n, m, kk)
            return plots, text_, html_

        outs_src = [state, source, edited, gallery, status, *sliders]
        sample_btn.click(guarded(on_sample), [state, seed, t, prompt, guidance], outs_src)
        upload.upload(guarded(on_upload), [state, upload, t, prompt], outs_src)
        find_btn.click(guarded(on_find), [state, t, k, method], [state, gallery, edited, status, *sliders])
        for sl in sliders:
            sl.release(guarded(on_slide), [state, method, *sliders], [state, edited], show_progress="minimal")
        imported.upload(guarded(on_import), [state, imported], [state, gallery, status, *sliders])
        export_btn.click(guarded(on_export), [state], [files])
        r_btn.click(guarded(on_report), [state, r_samples, r_steps, r_k], [r_plots, r_findings, r_file])
        demo.load(guarded(on_sample), [state, seed, t, prompt, guidance], outs_src)
    demo.queue(default_concurrency_limit=2)
    return demo


def free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def launch(model, host: str = "127.0.0.1", port: int = 0, share: bool = False, block: bool = True):
    """Start the app (port 0: a free one); returns (demo, url)."""
    demo = build_app(model)
    port = port or free_port(host)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=True,
                footer_links=[])
    return demo, f"http://{host}:{port}/"
