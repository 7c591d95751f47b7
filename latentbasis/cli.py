"""The `latentbasis` command: a thin layer over the Python API.

Bad input gets one line on stderr and exit 2; nothing already written is touched (outputs are checked before any
work and written atomically). Progress bars go to stderr and are erased when a command ends.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import LatentBasisError

EXAMPLES = {
    "basis": "latentbasis basis --model digits --seed 0 --t 0.6 --k 8 --out basis.safetensors",
    "edit": "latentbasis edit --model digits --seed 0 --t 0.6 --k 4 --strengths -6,-3,0,3,6 --out edit.png\n"
            "  latentbasis edit --recipe edit.json --out again.png      # replays to the same pixels",
    "report": "latentbasis report --model digits --samples 8 --timesteps 10 --k 8 --out report/",
    "app": "latentbasis app --model digits            # prints its address, http://127.0.0.1:PORT/",
    "info": "latentbasis info basis.safetensors",
    "layers": "latentbasis layers --model digits-flow",
    "global": "latentbasis global --model shapes --samples 16 --t 0.8 --k 4 --out global.safetensors",
    "compare": "latentbasis compare --model digits --model shapes --out compare/",
    "train": "latentbasis train --dataset digits --out my-digits/",
}


# ---------------------------------------------------------------- helpers

class Stages:
    """Progress bars on stderr, one per stage: stages(description, total or None) -> update(n). Silent when quiet,
    and when stderr is not a terminal (a log file keeps only the command's own lines)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def __call__(self, desc: str, total: int | None):
        from tqdm.auto import tqdm

        self.close()
        if self.quiet:
            return None
        self.bar = tqdm(total=total, desc=desc, unit=" step" if total else " it", leave=False, file=sys.stderr,
                        disable=None)
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _load(a, name: str, dtype: str | None = None):
    """The model named on the command line, on --device in --dtype, with --max-memory for the Jacobian products."""
    from .devices import parse_memory
    from .loading import load_model

    budget = parse_memory(a.max_memory) if getattr(a, "max_memory", None) else None
    model = load_model(name, device=getattr(a, "device", "auto"), dtype=dtype or getattr(a, "dtype", None),
                       max_memory=budget)
    model.set_guidance(getattr(a, "guidance_scale", None))
    return model


def _check_common(a) -> None:
    """The numbers every sampling command takes, checked before any work (validate)."""
    from . import validate as v
    from .devices import parse_memory

    if getattr(a, "seed", None) is not None:
        v.seed(a.seed, "--seed")
    if getattr(a, "steps", None) is not None:
        v.count(a.steps, "--steps", v.MAX_STEPS, lo=2)
    if getattr(a, "guidance", None) is not None:
        v.guidance(a.guidance, "--guidance")
    if getattr(a, "k", None) is not None:
        v.count(a.k, "--k", v.MAX_K)
    if getattr(a, "t", None) is not None:
        v.number(a.t, "--t", lo=0, hi=1)
        if getattr(a, "timestep", None) is not None and a.command == "basis":
            raise LatentBasisError("give --t or --timestep, not both")
    if getattr(a, "prompt", None) is not None:
        for p in (a.prompt if isinstance(a.prompt, list) else [a.prompt]):
            v.optional_string(p, "--prompt")
    if getattr(a, "max_memory", None):
        parse_memory(a.max_memory)


def _condition(a, model) -> None:
    """Put the model's condition in a.prompt: a text prompt (--prompt) for a text model, a class label (--label) as
    the string "7" for a class-conditional one; one clear message for the other mix-ups."""
    labels = getattr(a, "label", None)
    if labels is not None and labels != []:
        if model.conditioning != "class":
            raise LatentBasisError(f"model {model.name!r} is not class-conditional: it takes no --label")
        if getattr(a, "prompt", None):
            raise LatentBasisError("give --label or --prompt, not both")
        a.prompt = [str(v) for v in labels] if isinstance(labels, list) else str(labels)
    elif getattr(a, "prompt", None) and model.conditioning == "class":
        raise LatentBasisError(f"model {model.name!r} is class-conditional: give a class label with --label "
                               f"(0..{model.num_classes - 1}), not a prompt")


def _region(a, model):
    """The --mask of a region basis (--space x0) on the model's images, or None."""
    from . import validate as v

    v.integer(a.null_rank, "--null-rank", 0, v.MAX_X_ELEMENTS)
    if a.mask is None:
        return None
    from .masks import parse_mask

    if a.space != "x0" and not getattr(a, "basis", None):   # with --basis, the file's space is used
        raise LatentBasisError("--mask needs --space x0 (the Jacobian of x0_hat over the region)")
    return parse_mask(a.mask, model.pixel_size()[1])


def _image_x(model, path: str, ts: int, steps: int, prompt, stages: Stages):
    """A real image DDIM-inverted to timestep ts: (the image as the model reads it, x_t). Notes on stdout."""
    from .images import image_to_x, pixel_size, read_image
    from .sampling import invert, trajectory_grid

    c, size = pixel_size(model)
    img, notes = read_image(path, c, size)
    for n in notes:
        print(f"note: {n}")
    n = len(trajectory_grid(model.num_train_timesteps, steps, ts))
    traj = invert(model, image_to_x(model, img), num_steps=steps, prompt=prompt, through=ts,
                  progress=stages("inversion", n))
    return img, traj.at(ts)


# ---------------------------------------------------------------- commands

def _cmd_basis(a) -> None:
    from . import validate as v
    from .basis import latent_basis
    from .basisfile import save_basis
    from .describe import describe_basis, description_lines
    from .images import x_to_image
    from .loading import resolve_timestep
    from .sampling import denoise, predict_x0, sample_to, trajectory_grid

    _check_common(a)
    v.tolerance(a.tol, "--tol")
    out = Path(v.nonempty(a.out, "--out"))
    png = None if a.png == "" else Path(a.png) if a.png else out.with_suffix(".png")
    v.check_outputs({"--out": out, "--png": png}, read_paths(a))
    if a.t is None and a.timestep is None:
        a.t = 0.6
    model = _load(a, a.model)
    _condition(a, model)
    ts, frac = resolve_timestep(model.num_train_timesteps, fraction=a.t if a.timestep is None else None,
                                timestep=a.timestep)
    init = None
    if a.init:
        from .basisfile import load_basis

        init = load_basis(a.init, model=model, layer=a.layer or model.default_layer).latent
    mask = _region(a, model)
    with Stages(a.quiet) as stages:
        if a.image:  # a real image: DDIM-inverted up to t
            shown, x_t = _image_x(model, a.image, ts, a.steps, a.prompt, stages)
        else:  # the seed's trajectory, through t (the same x_t as `latentbasis edit` uses)
            n = len([g for g in trajectory_grid(model.num_train_timesteps, a.steps, ts) if g >= ts]) - 1
            x_t = sample_to(model, a.seed, timestep=ts, num_steps=a.steps, prompt=a.prompt, guidance=a.guidance,
                            progress=stages("trajectory to t", n))
        step = stages("basis", None)

        def progress(info):
            if step:
                step(1)
                stages.bar.set_postfix(jvps=info["jvps"], vjps=info["vjps"], residual=f"{info['residual']:.1e}")

        b = latent_basis(model, x_t, timestep=ts, k=a.k, prompt=a.prompt, layer=a.layer, algorithm=a.algorithm,
                         seed=a.seed, tol=a.tol, init=init, callback=progress, space=a.space, mask=mask,
                         null_rank=a.null_rank)
        b.t_fraction = frac
        describe_basis(model, b)            # what each direction does to x0_hat (k JVPs), stored in the file
        if png is not None:
            from .viz import render_basis

            if not a.image:  # the sample this trajectory ends in: continue from x_t, only for the picture
                rest = [g for g in trajectory_grid(model.num_train_timesteps, a.steps, ts) if g <= ts]
                shown = x_to_image(model, denoise(model, x_t[None], rest, a.prompt, a.guidance,
                                                  progress=stages("picture", len(rest))))[0]
            denoised = x_to_image(model, predict_x0(model, x_t[None], ts, a.prompt))[0]
    save_basis(b, out)
    if png is not None:
        render_basis(b, png, images=[("image" if a.image else "sample", shown), ("denoised x_t", denoised)],
                     title=f"{model.name}  {('image ' + Path(a.image).name) if a.image else f'seed {a.seed}'}  "
                           f"t={ts} ({frac:.2f} T)")
    s = ", ".join(f"{float(val):.4g}" for val in b.singular_values)
    print(f"model {model.name} (weights {model.model_hash}), timestep {ts} ({frac:.3f} T), k = {b.k}")
    print(f"singular values: {s}")
    print(f"cost: {b.jvps} JVPs + {b.vjps} VJPs, {b.iterations} iterations, {b.seconds:.2f} s ({b.algorithm}); "
          f"max residual {float(b.residuals.max()):.1e}")
    for line in description_lines(b):
        print(line)
    print(f"wrote {out}" + (f" and {png}" if png is not None else ""))


def _floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {s!r}") from None


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {s!r}") from None


def _cmd_edit(a) -> None:
    from . import validate as v
    from .atomic import write_text_atomic
    from .loading import resolve_timestep
    from .recipe import EditRecipe, run_recipe
    from .viz import render_edit_grid

    out = Path(v.nonempty(a.out, "--out"))
    if out.suffix.lower() != ".png":
        raise LatentBasisError(f"--out {out.name}: the edit grid is a PNG; give a path ending in .png (its recipe "
                               "goes beside it as .json)")
    recipe_path = out.with_suffix(".json")
    if a.recipe:
        # a replay writes its recipe beside the grid, unless that is the recipe it replays (then it is left alone)
        same = recipe_path.exists() and Path(a.recipe).exists() and recipe_path.resolve() == Path(a.recipe).resolve()
        v.check_outputs({"--out": out} if same else {"--out": out, "recipe (--out with .json)": recipe_path},
                        {"--recipe": a.recipe})
        r = EditRecipe.from_file(a.recipe)
        v.check_outputs({"--out": out}, {"the recipe's basis_file": r.basis_file, "the recipe's image": r.image,
                                         "the recipe's mask": r.mask, "the recipe's model": r.model})
        if a.max_memory:
            _check_common(a)
        model = _load(a, r.model, a.dtype or r.dtype)
    else:
        _check_common(a)
        v.check_outputs({"--out": out, "recipe (--out with .json)": recipe_path}, read_paths(a))
        model = _load(a, a.model)
        _condition(a, model)
        ts, frac = resolve_timestep(model.num_train_timesteps, fraction=None if a.timestep is not None else a.t,
                                    timestep=a.timestep)
        if a.mask is not None:
            _region(a, model)
        if a.direction is not None and a.directions is not None:
            raise LatentBasisError("give --directions or --direction, not both")
        r = EditRecipe(model=model.name, seed=None if a.image else a.seed, image=a.image, prompt=a.prompt,
                       guidance=a.guidance, num_steps=a.steps, timestep=ts, t_fraction=frac, k=a.k,
                       basis_file=a.basis, basis_seed=a.seed, method=a.method, n_iter=a.n_iter, scale=a.scale,
                       keep_norm=a.keep_norm, directions=a.directions, strengths=a.strengths, space=a.space,
                       mask=a.mask, null_rank=a.null_rank, transport_rank=a.transport_rank,
                       transfer=a.transfer, guidance_scale=a.guidance_scale, direction=a.direction)
        r.validate()
    with Stages(a.quiet) as stages:
        res = run_recipe(r, model, progress=stages)
    for n in res.notes:
        print(f"note: {n}")
    if r.combination is not None:  # one combined edit (e.g. a recipe exported by the app)
        rows = [", ".join(f"v{int(i) + 1} {float(w):+g}"
                          for i, w in sorted(r.combination.items(), key=lambda kv: int(kv[0])))]
        cols = ["combined"]
    else:
        rows = [f"v{i + 1}  s={float(res.basis.singular_values[i]):.3g}" for i in r.directions]
        cols = [f"{s:+g}" for s in r.strengths]
    src = f"image {Path(r.image).name}" if r.image else f"seed {r.seed}"
    render_edit_grid(res.images, rows, cols, out, f"{model.name}, {src}, t={r.timestep}, {r.method}")
    wrote = [str(out)]
    if not a.recipe or not (recipe_path.exists() and recipe_path.resolve() == Path(a.recipe).resolve()):
        write_text_atomic(recipe_path, r.to_json())
        wrote.append(str(recipe_path))
    if res.reconstruction_psnr is not None:
        print(f"inversion: reconstruction PSNR {res.reconstruction_psnr:.2f} dB ({r.num_steps} steps)")
    if res.kept is not None:
        print("transported into a tangent span of rank "
              f"{res.basis.extra.get('transport_rank')}: kept " + ", ".join(
                  f"v{i + 1} {100 * k:.0f} %" for i, k in enumerate(res.kept))
              + " of each direction (a low share: the direction means little here)")
    if res.basis.extra.get("motion_share") is not None:
        print("carried as motions of the region: " + ", ".join(
            f"v{i + 1} {100 * m:.0f} %" for i, m in enumerate(res.basis.extra["motion_share"]))
              + " of each direction is a motion or colour offset there (a low share: it is not, and its carry "
                "means little)")
    shape = ("1 combined edit" if r.combination is not None
             else f"{len(r.directions)} directions x {len(r.strengths)} strengths")
    print(f"wrote {' and '.join(wrote)} ({shape})")


READ_OPTIONS = ("model", "init", "image", "basis", "recipe", "mask")


def read_paths(a, **more) -> dict[str, str | None]:
    """Every path a command reads, by the name the user knows it by: each of READ_OPTIONS it has (a mask given as
    a box is no path and matches no file), and `more`. check_outputs keeps every output off all of them."""
    paths = {f"--{name}": getattr(a, name, None) for name in READ_OPTIONS}
    paths.update(more)
    return {k: str(v) for k, v in paths.items() if v not in (None, "")}


def _cmd_info(a) -> None:
    from safetensors import safe_open

    from .basisfile import load_basis

    b = load_basis(a.file)   # checked first: a file that is not a valid basis gets one message
    with safe_open(str(a.file), framework="pt") as fh:
        meta = fh.metadata()
    from .validate import printable

    from .describe import description_lines

    for key in sorted(meta):        # a header is the file's word: escaped, so it cannot drive the terminal
        if key != "descriptions":   # shown below, a line per direction
            print(f"{printable(key)}: {printable(meta[key])}")
    print(f"latent: {tuple(b.latent.shape)}  tangent: {tuple(b.tangent.shape)}  point: {tuple(b.point.shape)}")
    for line in description_lines(b):
        print(line)


def _cmd_global(a) -> None:
    from . import validate as v
    from .basis import latent_basis
    from .basisfile import save_basis
    from .editing import global_directions
    from .loading import resolve_timestep
    from .sampling import sample_to, trajectory_grid

    _check_common(a)
    v.count(a.samples, "--samples", v.MAX_SAMPLES, lo=2)
    v.check_outputs({"--out": a.out}, read_paths(a))
    model = _load(a, a.model)
    _condition(a, model)
    ts, frac = resolve_timestep(model.num_train_timesteps, fraction=a.t)
    mask = _region(a, model)
    bases = []
    with Stages(a.quiet) as stages:
        n = len([g for g in trajectory_grid(model.num_train_timesteps, a.steps, ts) if g >= ts]) - 1
        step = stages(f"{a.samples} samples", a.samples)
        for seed in range(a.samples):
            x_t = sample_to(model, seed, timestep=ts, num_steps=a.steps, prompt=a.prompt, guidance=a.guidance)
            bases.append(latent_basis(model, x_t, timestep=ts, k=a.k, prompt=a.prompt, layer=a.layer, seed=seed,
                                      space=a.space, mask=mask, null_rank=a.null_rank))
            if step:
                step(1)
    g = global_directions(bases, a.k)
    g.t_fraction = frac
    save_basis(g, a.out)
    print(f"model {model.name}, timestep {ts} ({frac:.3f} T), {a.samples} samples (seeds 0..{a.samples - 1}), "
          f"{n} DDIM steps to t each")
    print("shared: " + ", ".join(f"g{i + 1} {float(s):.2f}" for i, s in enumerate(g.singular_values))
          + " (the mean share of the samples' tangent spans each global direction lies in; 1: all of it)")
    print(f"wrote {a.out}: apply it with latentbasis edit --basis {a.out} (transported to each image)")


def _cmd_layers(a) -> None:
    model = _load(a, a.model)
    shapes = model.layer_shapes()
    print(f"model {model.name} ({model.family}, {type(model.denoiser).__name__}): candidate layers for h, in forward "
          "order, with the shape of h for one sample")
    width = max(len(n) for n in shapes)
    for name, shape in shapes.items():
        mark = "  (default)" if name == model.default_layer else ""
        dims = " x ".join(map(str, shape)) if shape else "no tensor output"
        print(f"  {name:<{width}}  {dims}{mark}")


def _cmd_train(a) -> None:
    import dataclasses

    from . import validate as v
    from .train import PRESETS, train

    if a.dataset not in PRESETS:
        raise LatentBasisError(f"unknown dataset {a.dataset!r}; available: {', '.join(PRESETS)}")
    if a.steps is not None:
        v.count(a.steps, "--steps", 10_000_000)
    v.check_output_folder(a.out, "--out")
    cfg = PRESETS[a.dataset]
    if a.steps:
        cfg = dataclasses.replace(cfg, steps=a.steps)
    cfg = dataclasses.replace(cfg, device=a.device)
    log = train(cfg, a.out, progress=not a.quiet)
    if not a.no_eval:
        from .evaluate import digits_quality, prompt_following
        from .loading import load_model
        from .train import prompt_markdown, quality_markdown, write_model_card

        model = load_model(a.out)
        if cfg.dataset == "shapes":
            from .evaluate import shapes_quality
            from .train import shapes_markdown

            q = shapes_quality(model)
            write_model_card(Path(a.out), cfg, log, cfg.steps, shapes=q)
            print(shapes_markdown(q))
        elif cfg.num_classes:
            from .evaluate import label_following
            from .train import labels_markdown

            q, p = digits_quality(model), label_following(model)
            write_model_card(Path(a.out), cfg, log, cfg.steps, q, labels=p)
            print(quality_markdown(q))
            print(labels_markdown(p))
        elif cfg.text:
            p = prompt_following(model)
            write_model_card(Path(a.out), cfg, log, cfg.steps, prompts=p)
            print(prompt_markdown(p))
        else:
            q = digits_quality(model)
            write_model_card(Path(a.out), cfg, log, cfg.steps, q)
            print(quality_markdown(q))
    print(f"wrote {a.out}")


def _cmd_report(a) -> None:
    from . import validate as v
    from .report import ReportSettings, run_report

    _check_common(a)
    v.count(a.samples, "--samples", v.MAX_SAMPLES)
    v.count(a.timesteps, "--timesteps", v.MAX_TIMESTEPS)
    v.number(a.t_max, "--t-max", lo=0, hi=1)
    v.number(a.t_min, "--t-min", lo=0, hi=1)
    v.count(a.judge_samples, "--judge-samples", v.MAX_SAMPLES)
    v.check_output_folder(a.out, "--out")
    model = _load(a, a.model)
    _condition(a, model)
    settings = ReportSettings(samples=a.samples, timesteps=a.timesteps, k=a.k, t_max=a.t_max, t_min=a.t_min,
                              prompts=tuple(a.prompt or ()), guidance=a.guidance, num_steps=a.steps,
                              prompt_points=a.prompt_points, judge_samples=a.judge_samples)
    numbers = run_report(model, a.out, settings, progress=not a.quiet)
    if numbers is None:  # not process 0 of a distributed run
        return
    from .report import verdict

    for f in numbers["findings"] + numbers.get("geometry_findings", []):
        print(f"{verdict(f)}: {f['claim']}  [{f['evidence']}]")
    print(f"wrote {Path(a.out) / 'report.html'}")


def _cmd_compare(a) -> None:
    from . import validate as v
    from .report import ReportSettings, run_compare, verdict

    if not a.model or len(a.model) < 2:
        raise LatentBasisError("give at least two models: --model A --model B")
    _check_common(a)
    v.count(a.samples, "--samples", v.MAX_SAMPLES, lo=4)
    v.count(a.timesteps, "--timesteps", v.MAX_TIMESTEPS, lo=2)
    v.check_output_folder(a.out, "--out")
    models = [_load(a, name) for name in a.model]
    settings = ReportSettings(samples=a.samples, timesteps=a.timesteps, k=a.k, num_steps=a.steps, geometry=False)
    r = run_compare(models, a.out, settings, progress=not a.quiet)
    for f in r["findings"]:
        print(f"{verdict(f)}: {f['claim']}  [{f['evidence']}]")
    print(f"wrote {Path(a.out) / 'compare.html'}")


def editor_path() -> Path | None:
    """The Gradio editor's source: inside an installed package (latentbasis/editor_app/editor.py, put there by the
    wheel), or apps/editor.py of a source tree."""
    here = Path(__file__).resolve().parent
    for p in (here / "editor_app" / "editor.py", here.parent / "apps" / "editor.py"):
        if p.is_file():
            return p
    return None


def launch_app(model, host: str = "127.0.0.1", port: int = 0, block: bool = True):
    """The Gradio editor over a model already in memory (load_model's, or from_pipeline's on the user's own
    pipeline), on host:port (0: a free port). block False: returns (demo, url) at once; demo.close() stops it."""
    return load_editor().launch(model, host=host, port=port, block=block)


def load_editor():
    """The app module (apps/editor.py), loaded once."""
    import importlib.util

    path = editor_path()
    if path is None:
        raise LatentBasisError("the app is not installed with this copy of latentbasis (reinstall it: pip install "
                               "'latentbasis[app]')")
    if importlib.util.find_spec("gradio") is None:
        raise LatentBasisError("the app needs gradio: pip install 'latentbasis[app]' (or pip install -e '.[app]' "
                               "in a source tree)")
    if "latentbasis_editor" in sys.modules:
        return sys.modules["latentbasis_editor"]
    spec = importlib.util.spec_from_file_location("latentbasis_editor", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["latentbasis_editor"] = mod  # dataclasses look their module up while it loads
    spec.loader.exec_module(mod)
    return mod


def _cmd_app(a) -> None:
    if not 0 <= a.port <= 65535:
        raise LatentBasisError(f"--port {a.port} is not a port number (0 for a free one)")
    _check_common(a)
    editor = load_editor()
    try:
        port = a.port or editor.free_port(a.host)
    except OSError as e:
        raise LatentBasisError(f"--host {a.host}: {e.strerror or e}") from None
    model = _load(a, a.model)
    editor.launch(model, host=a.host, port=port, share=a.share, block=True,
                  on_ready=lambda url: print(f"latentbasis editor for {model.name} on {url} (Ctrl-C to stop)",
                                             flush=True))


# ---------------------------------------------------------------- the parser

class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every option's help; descriptions and examples kept as written."""


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    from .devices import DTYPE_NAMES

    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, mps, or auto (a GPU when there is one, else the CPU)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help="precision of the network's forward for sampling and editing (None: the precision its "
                        "weights are stored in, float32 for float32 weights, or a recipe's own); bases are always "
                        "computed in float32; float32 for half-precision weights is refused (it only upcasts them)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="the guidance a guidance-distilled model takes as an input (FLUX.1-dev; None: its pipeline's "
                        "default, 3.5); other families refuse it (classifier-free guidance is --guidance)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="the most memory the process may hold while the Jacobian products run, the model "
                        "included, e.g. 8GB (None: what is in use plus 90%% of the GPU's free memory, or plus 75%% "
                        "of the available memory on the CPU); lower it after an out-of-memory error")


def _add_region_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", choices=("h", "x0"), default="h",
                   help="h: the pullback of the feature map h (the paper); x0: the Jacobian of x0_hat (LOCO-Edit), "
                        "which --mask can restrict to a region")
    p.add_argument("--mask", default=None, help="the region, with --space x0: a box x0,y0,x1,y1 in pixels of the "
                                                "image, or a grey PNG of its size (non-zero inside)")
    p.add_argument("--null-rank", type=int, default=0,
                   help="keep the directions orthogonal to the top r directions of the rest of the image (needs "
                        "--mask), so an edit leaves the rest alone")


def _model_option(p: argparse.ArgumentParser) -> None:
    from .loading import bundled_models

    names = ", ".join(bundled_models()) or "none installed"
    p.add_argument("--model", default="digits",
                   help=f"a bundled model ({names}), a local diffusers folder, or a hub id already in the local "
                        "cache (nothing is downloaded)")


def _sub(sub, name: str, help: str, description: str):
    return sub.add_parser(name, help=help, description=description, formatter_class=_Help,
                          epilog="example:\n  " + EXAMPLES[name])


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="latentbasis", formatter_class=_Help,
                description="Read the Riemannian geometry of a diffusion model's latent space (the pullback of its "
                            "h-space) and edit images along it.\n\nexamples:\n  "
                            + "\n  ".join(EXAMPLES[c].splitlines()[0] for c in ("basis", "edit", "report", "app")))
    p.add_argument("--version", action="version", version=f"latentbasis {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = _sub(sub, "basis", "compute the latent/tangent basis at x_t and save it",
             "Compute the top-k latent basis (right singular vectors of J = dh/dx_t) and tangent basis at x_t of a "
             "seed's DDIM trajectory (or of a DDIM-inverted image), and save it with a picture.")
    _model_option(b)
    b.add_argument("--seed", type=int, default=0, help="seed of x_T (and of the algorithm's random start)")
    b.add_argument("--t", type=float, default=None, help="timestep as a fraction of T in [0, 1] (None: 0.6)")
    b.add_argument("--timestep", type=int, default=None, help="timestep as an integer step, instead of --t")
    b.add_argument("--k", type=int, default=8, help="number of directions")
    b.add_argument("--prompt", default=None, help="prompt, for text-conditioned models")
    b.add_argument("--label", type=int, default=None, help="class label, for class-conditional models (digits-flow)")
    b.add_argument("--image", default=None, help="start from a real image (DDIM-inverted to t) instead of a seed")
    b.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance while sampling to x_t")
    b.add_argument("--steps", type=int, default=100, help="DDIM steps of a full trajectory (as for edit)")
    b.add_argument("--algorithm", choices=("krylov", "subspace"), default="krylov",
                   help="krylov (block Lanczos, the default) or the published subspace iteration")
    b.add_argument("--tol", type=float, default=1e-3, help="krylov: stop at residual ||J^T u - s v|| / s <= tol")
    b.add_argument("--layer", default=None, help="module whose output is h (None: the family's, mid_block for U-Nets)")
    b.add_argument("--init", default=None, help="warm start from a basis file of the same model (e.g. a nearby t)")
    _add_region_options(b)
    b.add_argument("--out", default="basis.safetensors", help="basis file to write")
    b.add_argument("--png", default=None, help="picture of the directions (None: OUT with .png; '' for none)")
    _add_runtime_options(b)
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(run=_cmd_basis)

    e = _sub(sub, "edit", "edit a sample or a real image along latent-basis directions (PNG grid + recipe)",
             "Edit a sample (or a real image) along latent-basis directions at t, with the published x-space "
             "guidance or directly; writes a PNG grid (rows: directions, columns: strengths) and a recipe JSON "
             "beside it that replays to the same pixels.")
    _model_option(e)
    e.add_argument("--seed", type=int, default=0, help="seed of the sample (and of the basis algorithm)")
    e.add_argument("--image", default=None, help="edit a real image instead (DDIM-inverted)")
    e.add_argument("--t", type=float, default=0.6, help="edit timestep as a fraction of T in [0, 1]")
    e.add_argument("--timestep", type=int, default=None, help="edit timestep as an integer step, instead of --t")
    e.add_argument("--k", type=int, default=4, help="number of directions to compute")
    e.add_argument("--directions", type=_ints, default=None, help="which directions, 0-based, e.g. 0,2 (None: all k)")
    e.add_argument("--direction", default=None,
                   help="instead, the one direction whose description matches, e.g. 'shift right', 'motion:x+', "
                        "'grow', 'brighten', 'fine detail' (it says which it picked)")
    e.add_argument("--strengths", type=_floats, default=[-6.0, -3.0, 0.0, 3.0, 6.0],
                   help="strengths along each direction, e.g. -6,-3,0,3,6")
    e.add_argument("--method", choices=("guidance", "direct"), default="guidance",
                   help="guidance: the published x-space guidance; direct: x_t + s v")
    e.add_argument("--n-iter", type=int, default=16, help="guidance iterations")
    e.add_argument("--scale", type=float, default=None, help="guidance scale (None: 0.1 pixel, 1 latent models)")
    e.add_argument("--keep-norm", action="store_true", help="direct: rescale to keep ||x_t||")
    e.add_argument("--basis", default=None, help="use the directions of a basis file (transported if needed)")
    e.add_argument("--transport-rank", type=int, default=None,
                   help="transport into a local basis of this rank (the published code uses 50; None: the file's k)")
    e.add_argument("--transfer", choices=("tangent", "motion"), default="tangent",
                   help="how --basis directions are carried here: as tangent vectors (the paper), or, for a region "
                        "basis of another image (--space x0 --mask), as the same motion of this region's content "
                        "(a shift, scaling, rotation or colour offset), then transported")
    _add_region_options(e)
    e.add_argument("--prompt", default=None, help="prompt, for text-conditioned models")
    e.add_argument("--label", type=int, default=None, help="class label, for class-conditional models (digits-flow)")
    e.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance of the sampler")
    e.add_argument("--steps", type=int, default=100, help="DDIM steps of the trajectory")
    e.add_argument("--recipe", default=None, help="replay a recipe JSON written by an earlier edit or the app")
    e.add_argument("--out", default="edit.png", help="PNG grid; the recipe goes beside it as .json")
    _add_runtime_options(e)
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(run=_cmd_edit)

    gl = _sub(sub, "global", "directions shared by many samples at one t, saved as a basis file",
              "Compute the bases of --samples samples at t and keep the directions they share (the top eigenvectors "
              "of the mean projector of their tangent spaces); latentbasis edit --basis applies them to any image "
              "by transport and says how much of each it keeps.")
    _model_option(gl)
    gl.add_argument("--samples", type=int, default=16, help="samples (seeds 0..N-1)")
    gl.add_argument("--t", type=float, default=0.8, help="timestep as a fraction of T")
    gl.add_argument("--k", type=int, default=4, help="directions per sample, and global directions kept")
    gl.add_argument("--prompt", default=None, help="prompt, for text-conditioned models")
    gl.add_argument("--label", type=int, default=None, help="class label, for class-conditional models")
    gl.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance while sampling")
    gl.add_argument("--steps", type=int, default=100, help="DDIM steps of a full trajectory")
    gl.add_argument("--layer", default=None, help="module whose output is h (None: the family's)")
    _add_region_options(gl)
    gl.add_argument("--out", default="global.safetensors", help="the file of global directions")
    _add_runtime_options(gl)
    gl.add_argument("--quiet", action="store_true", help="no progress bars")
    gl.set_defaults(run=_cmd_global)

    ly = _sub(sub, "layers", "list the layers h can be taken at, with their shapes and the default",
              "List the candidate layers for the feature map h (the U-Net's stages, or a transformer's blocks) with "
              "the shape of h there and which one is the default; any of them goes to --layer.")
    _model_option(ly)
    _add_runtime_options(ly)
    ly.set_defaults(run=_cmd_layers)

    i = _sub(sub, "info", "print a basis file's header and shapes", "Print a basis file's header and shapes.")
    i.add_argument("file", help="a basis file (.safetensors)")
    i.set_defaults(run=_cmd_info)

    ap = _sub(sub, "app", "the editor in the browser (Gradio)",
              "Start the editor in the browser; it prints its address once it accepts connections.")
    _model_option(ap)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (the default: this machine only)")
    ap.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    ap.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    _add_runtime_options(ap)
    ap.set_defaults(run=_cmd_app)

    r = _sub(sub, "report", "tangent-space similarity report over samples x timesteps (x prompts)",
             "Compute (or resume) a grid of bases over samples x timesteps (x prompts) into OUT/cache and write "
             "OUT/report.html with plots, numbers.json and CSV tables; the paper's claims are checked on them.")
    _model_option(r)
    r.add_argument("--samples", type=int, default=8, help="number of samples (seeds 0..N-1)")
    r.add_argument("--timesteps", type=int, default=10, help="number of timesteps from --t-max to --t-min")
    r.add_argument("--t-max", type=float, default=1.0, help="largest timestep, fraction of T")
    r.add_argument("--t-min", type=float, default=0.1, help="smallest timestep, fraction of T")
    r.add_argument("--k", type=int, default=8, help="number of directions")
    r.add_argument("--prompt", action="append", default=None,
                   help="a prompt (repeat for several; text models; None: three digits in two wordings)")
    r.add_argument("--label", type=int, action="append", default=None,
                   help="a class label (repeat for several; class-conditional models; None: 1, 4 and 7)")
    r.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance of the conditional sampler")
    r.add_argument("--prompt-points", choices=("own", "shared"), default="own",
                   help="text models: x_t on each prompt's own trajectory, or one shared (unconditional) x_t")
    r.add_argument("--steps", type=int, default=100, help="DDIM steps of the trajectories")
    r.add_argument("--judge-samples", type=int, default=64,
                   help="images per skipped fraction in the teleportation table (bundled models' quality judges)")
    r.add_argument("--out", required=True, help="report folder (its cache/ makes a re-run resume)")
    _add_runtime_options(r)
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(run=_cmd_report)

    c = _sub(sub, "compare", "the same tangent-space measurements for several models, side by side",
             "Run the report grid on several models (the first: the simpler data) and compare how consistent their "
             "samples' tangent spaces are, each normalised by its own random baseline, with intervals and the "
             "confounds (resolution, channels, architecture) on the page.")
    c.add_argument("--model", action="append", default=None, help="a model (repeat: at least two; the first is "
                                                                     "the simpler data)")
    c.add_argument("--samples", type=int, default=8, help="samples per model (at least 4)")
    c.add_argument("--timesteps", type=int, default=10, help="timesteps from 1.0 T to 0.1 T")
    c.add_argument("--k", type=int, default=8, help="number of directions")
    c.add_argument("--steps", type=int, default=100, help="DDIM steps of the trajectories")
    c.add_argument("--out", required=True, help="folder for compare.html and each model's report")
    _add_runtime_options(c)
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(run=_cmd_compare)

    t = _sub(sub, "train", "train a bundled model (seeded, resumable from OUT/checkpoint.pt)",
             "Train one of the bundled models from scratch (seeded and resumable: OUT/checkpoint.pt).")
    t.add_argument("--dataset", required=True, help="digits, digits-text, shapes or digits-flow")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    t.add_argument("--device", default="cpu", help="cpu or cuda: where the steps run (a run may resume on another "
                                                   "device; the random draws come from one CPU generator)")
    t.add_argument("--no-eval", action="store_true", help="skip the sample-quality evaluation for the model card")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_cmd_train)
    return p


def _quiet_libraries() -> None:
    """diffusers/transformers log notices on stderr; a command's stderr is for its own one-line errors."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    for mod in (diffusers.utils.logging, transformers.utils.logging):
        if hasattr(mod, "disable_progress_bar"):
            mod.disable_progress_bar()


def _glue_negative_lists(argv: list[str]) -> list[str]:
    """argparse reads '--strengths -6,-3,0' as an option followed by another option: glue such values on."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("--strengths", "--directions") and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_glue_negative_lists(argv))
    try:
        _quiet_libraries()
        args.run(args)
    except LatentBasisError as e:
        print(f"latentbasis: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentbasis: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a failure we did not foresee: still one line, and the kind of error, not a traceback
        from .devices import is_out_of_memory

        if is_out_of_memory(e):
            print("latentbasis: error: out of memory: lower --max-memory, --k or --dtype, or use a device with more "
                  "memory", file=sys.stderr)
        elif isinstance(e, OSError):
            print(f"latentbasis: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        else:
            print(f"latentbasis: error: unexpected {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                  " (please report this)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
