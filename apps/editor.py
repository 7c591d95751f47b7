"""The latentbasis editor: find the directions a diffusion model considers most important and slide along them.

    latentbasis app [--model digits] [--host 127.0.0.1] [--port 0] [--share] [--device auto] [--dtype float32]

A thin Gradio layer over the Python API. Every handler is a plain function of (model, session, inputs) so tests call
them directly; `build_app(model)` wires them into a Blocks page. Per-session state lives in a gr.State (one Session
per browser tab); the model is shared and read-only. A session's events run one at a time (its lock), so a click
while an upload is still being read waits for it. Bad input raises the library's LatentBasisError (AppError); in the
page it becomes a message in one place (the status line) and every other output stays as it was. Messages never
show server paths.
"""
from __future__ import annotations

import functools
import html
import inspect
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latentbasis import session
from latentbasis import atomic
from latentbasis.describe import agreement_text
from latentbasis.errors import LatentBasisError, without_paths
from latentbasis.masks import painted_mask
from latentbasis.progress import fraction_stages, residual_progress
from latentbasis.report import tangent_report
from latentbasis.session import EditSession
from latentbasis.transport import motion_refusal
from latentbasis.viz import direction_pixels, image_pixels, side_by_side

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network at run time

MAX_K = 12            # sliders made (the k slider goes up to this)
APP_STEPS = 50        # DDIM grid of the app's trajectories: an edit from t re-runs at most 50 steps
PREVIEW_STEPS = 6     # DDIM steps from t of a slider's quick preview (the full image follows)
PREVIEW = 6.0         # strength of the -/+ previews
DISPLAY = 192         # pixels of the shown images (nearest-neighbour upscaling of small models)
THUMB = DISPLAY // 2  # pixels of each picture in a gallery
MAX_UPLOAD = "16mb"   # the largest file the page accepts
WORK = atomic.WorkRoot(Path(tempfile.gettempdir()) / "latentbasis-app")   # a private folder per session


@dataclass
class Session(EditSession):
    """One browser tab's state (latentbasis.session.EditSession: the source, its trajectory, the basis and the
    current edit), its private folder for exports and reports, and its lock."""

    num_steps: int = APP_STEPS
    workdir: str = field(default_factory=lambda: str(WORK.new()))
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def close(self) -> None:
        """Remove the session's folder (exports, uploads copied there, reports)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


AppError = LatentBasisError   # bad input, found by the library's checks: one message in the status line


# ---------------------------------------------------------------- pictures

display = functools.partial(image_pixels, size=DISPLAY)   # pixels [C, H, W] -> uint8 RGB, nearest-neighbour upscaled


def legend(model) -> str:
    """How to read a direction's picture (HTML): the colour scale of the gallery's first picture."""
    if model.x_shape[0] == 1 and not model.x_is_latent:
        bar = ("<span style='display:inline-block;width:140px;height:12px;vertical-align:middle;"
               "background:linear-gradient(to right,#2166ac,#f7f7f7,#b2182b)'></span>")
        return (f"<div id='legend'>direction v: <b>blue</b> {bar} <b>red</b> &nbsp; red where moving along +v "
                "brightens the pixel, blue where it darkens it; white: no change. Then the image at -6 and +6.</div>")
    return ("<div id='legend'>direction v: its first three channels shown around grey (grey: no change; a colour: "
            "the channels +v raises there). Then the image at -6 and +6.</div>")


# ---------------------------------------------------------------- handlers (plain functions; tests call these)

def new_sample(model, s: Session, seed, t, prompt: str = "", guidance: float = 1.0, progress=None) -> np.ndarray:
    """Source = the DDIM sample of a seed (a text model's prompt and guidance); returns its picture."""
    return display(session.sample(model, s, seed, t, prompt, guidance, stage=fraction_stages(progress)))


def upload_image(model, s: Session, path, t, prompt: str = "", progress=None) -> tuple[np.ndarray, str]:
    """Source = an uploaded image, DDIM-inverted to t; returns (its reconstruction's picture, a status line with
    what was converted on the way in)."""
    rec, db, notes = session.upload(model, s, path, t, prompt, stage=fraction_stages(progress))
    msg = f"Inverted {Path(path).name}: reconstruction from t = {s.t_fraction:.2f} at {db:.1f} dB PSNR."
    return display(rec), "".join(f"Note: {n}. " for n in notes) + msg


def region_mask(model, painted) -> torch.Tensor | None:
    """The region painted over the shown image (an ImageEditor value: its first layer) as a mask of the model's
    images [S, S] (masks.painted_mask); None when nothing is painted."""
    layer = (painted.get("layers") or [None])[0] if isinstance(painted, dict) else None
    return None if layer is None else painted_mask(layer, model.pixel_size()[1])


def find_directions(model, s: Session, t, k, method: str, progress=None, space: str = "h", mask=None,
                    null_rank=0) -> list[tuple[np.ndarray, str]]:
    """The top-k latent basis at x_t (session.find_directions); returns the gallery: per direction (picture |
    -preview | +preview, caption). progress(fraction, desc): the basis by its residual (it falls from ~1 to the
    tolerance 1e-3), then the previews by their real DDIM steps."""
    session.find_directions(model, s, t, k, method, space, mask, null_rank, max_k=MAX_K,
                            stage=fraction_stages(progress), callback=residual_progress(progress))
    return _gallery(model, s, progress)


def apply_to_others(model, s: Session, method: str, strengths: list[float], n: int = 3,
                    progress=None) -> list[tuple[np.ndarray, str]]:
    """The current edit carried to the next n seeds (session.carry). Pictures (unedited | edited) captioned with
    how much of each direction the seed's tangent span keeps (and, carried by motion, how much of it is a motion
    there)."""
    start = (s.seed if s.seed is not None else 0) + 1
    carried = session.carry(model, s, range(start, start + n), strengths, method,
                            progress=(lambda j, seed: progress(j / n, desc=f"seed {seed}")) if progress else None)
    edited = sorted(session.weights(s, strengths))
    return [(side_by_side([display(c.unedited, size=THUMB), display(c.edited, size=THUMB)]), c.caption(edited))
            for c in carried]


def _gallery(model, s: Session, progress=None) -> list[tuple[np.ndarray, str]]:
    b = s.basis
    prev = session.previews(model, s, PREVIEW,
                            progress=fraction_stages(progress)("previews", session.preview_steps(s)))
    given = b.extra.get("given_descriptions")      # an imported basis: what its file says, beside what it does here
    names = [f"  {d['name']}" + (f"  (the file: {given[i]['name']}{agreement_text(given[i])})" if given else "")
             for i, d in enumerate(session.preview_descriptions(s, prev, PREVIEW))]
    return [(side_by_side([direction_pixels(b.latent[i], size=THUMB), display(prev[i, 0], size=THUMB),
                           display(prev[i, 1], size=THUMB)]),
             f"v{i + 1}{names[i]}  s = {float(b.singular_values[i]):.3g}   (-{PREVIEW:g} | +{PREVIEW:g})")
            for i in range(b.k)]


def preview_edit(model, s: Session, method: str, strengths: list[float]) -> np.ndarray:
    """A quick look at the combined edit: DDIM in PREVIEW_STEPS steps from t (what a slider shows at once;
    apply_edit gives the full image, and the recipe)."""
    return display(session.preview_edit(model, s, strengths, method, steps=PREVIEW_STEPS))


def apply_edit(model, s: Session, method: str, strengths: list[float]) -> np.ndarray:
    """The combined edit d = sum_i strength_i v_i at x_t (what a released slider runs); returns its picture."""
    return display(session.apply_edit(model, s, strengths, method))


def import_basis(model, s: Session, path) -> list[tuple[np.ndarray, str]]:
    """Use the directions of a basis file here: checked against this model, transported to this x_t."""
    session.import_basis(model, s, path, max_k=MAX_K)
    return _gallery(model, s)


def export(model, s: Session) -> tuple[str, ...]:
    """(basis .safetensors, edited image .png, recipe .json[, the region's mask .png]): files in this session's
    folder, for download."""
    return tuple(map(str, session.export(model, s, s.workdir)))


def small_report(model, s: Session, samples, timesteps, k, progress=None) -> tuple[list[tuple[str, str]], str, str]:
    """A small similarity report of this model in the session folder: (plots with captions, findings, report.html).
    The tangent-space part only (the generation-geometry part is the command line's `latentbasis report`).
    progress(fraction, desc): one step per basis of the grid."""
    cb = (lambda done, total: progress(done / total, desc=f"bases: {done} of {total}")) if progress else None
    plots, lines, page = tangent_report(model, s.workdir, samples, timesteps, k, num_steps=APP_STEPS,
                                        most=(16, 12, MAX_K), callback=cb)
    return plots, "\n".join(lines), str(page)


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
        every other output keeps its value. The status line is HTML: every text put there, a message or a handler's
        line (which may quote a file's name or what a received file says), is escaped here, in one place. Gradio
        passes the request and the progress tracker by position, after the inputs (its special arguments are read
        from the signature set here)."""
        si = outputs.index(status)

        def shown(out):
            out = list(out)
            if isinstance(out[si], str):
                out[si] = html.escape(out[si])
            return tuple(out)

        def failed(s, e: Exception):
            if isinstance(e, LatentBasisError):
                msg = without_paths(str(e))
            else:
                print(f"latentbasis app: {type(e).__name__} in {fn.__name__}: {e}", file=sys.stderr)
                msg = f"unexpected {type(e).__name__}; the page is unchanged (details in the server's log)"
            out = [gr.update()] * len(outputs)
            out[0], out[si] = s, f"<span class='error'>Error: {html.escape(msg)}</span>"
            return tuple(out)

        def split(args):
            *inputs, request, progress = args
            return session_for(inputs[0], request), inputs[1:], progress

        if stream:
            def run(*args):
                s, inputs, progress = split(args)
                with s.lock:
                    try:
                        for out in fn(s, *inputs, progress=progress):
                            yield shown(out)
                    except Exception as e:
                        yield failed(s, e)
        else:
            def run(*args):
                s, inputs, progress = split(args)
                with s.lock:
                    try:
                        return shown(fn(s, *inputs, progress=progress))
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
            return s, pic, pic, [], without_paths(msg), pic, *slider_updates(0)

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


def launch(model, host: str = "127.0.0.1", port: int = 0, share: bool = False, block: bool = True, on_ready=None):
    """Start the app (port 0: a free one); on_ready(url) once it accepts connections (Gradio's launch returns when
    its server has started); returns (demo, url)."""
    WORK.remove_stale()
    demo = build_app(model)
    port = port or free_port(host)
    url = f"http://{host}:{port}/"
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                footer_links=[], max_file_size=MAX_UPLOAD, css=CSS)
    if on_ready is not None:
        on_ready(url)
    if block:
        demo.block_thread()
    return demo, url
