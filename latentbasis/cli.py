"""The `latentbasis` command: a thin layer over the Python API. Bad input: one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import LatentBasisError


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {s}")
    return v


def _load(a, name: str, dtype: str | None = None):
    """The model named on the command line, on --device in --dtype, with --max-memory for the Jacobian products."""
    from .devices import parse_memory
    from .loading import load_model

    budget = parse_memory(a.max_memory) if getattr(a, "max_memory", None) else None
    return load_model(name, device=getattr(a, "device", "auto"), dtype=dtype or getattr(a, "dtype", None) or "float32",
                      max_memory=budget)


def _cmd_basis(a) -> None:
    from tqdm.auto import tqdm

    from .basis import latent_basis
    from .basisfile import save_basis
    from .loading import resolve_timestep
    from .sampling import denoise, predict_x0, sample_to, trajectory_grid

    if a.t is None and a.timestep is None:
        a.t = 0.6
    out = Path(a.out)
    if not out.parent.is_dir():
        raise LatentBasisError(f"cannot write {out}: folder {out.parent} does not exist")
    model = _load(a, a.model)
    ts, frac = resolve_timestep(model.num_train_timesteps, fraction=a.t, timestep=a.timestep)
    init = None
    if a.init:
        from .basisfile import load_basis

        init = load_basis(a.init, model=model).latent
    from .images import image_to_x, load_image, pixel_size, x_to_image

    if a.image:  # a real image: DDIM-inverted up to t
        from .sampling import invert

        c, size = pixel_size(model)
        shown = load_image(a.image, c, size)
        x_t = invert(model, image_to_x(model, shown), num_steps=a.steps, prompt=a.prompt, through=ts).at(ts)
    else:  # the seed's trajectory, through t (the same x_t as `latentbasis edit` uses)
        x_t = sample_to(model, a.seed, timestep=ts, num_steps=a.steps, prompt=a.prompt, guidance=a.guidance)
    with tqdm(desc="basis", unit=" it", disable=a.quiet, leave=False) as bar:  # erased on error too

        def progress(info):
            bar.update(1)
            bar.set_postfix(jvps=info["jvps"], vjps=info["vjps"], residual=f"{info['residual']:.1e}")

        b = latent_basis(model, x_t, timestep=ts, k=a.k, prompt=a.prompt, layer=a.layer, algorithm=a.algorithm,
                         seed=a.seed, tol=a.tol, init=init, callback=progress)
    b.t_fraction = frac
    save_basis(b, out)
    png = Path(a.png) if a.png else out.with_suffix(".png")
    if a.png != "":
        from .viz import render_basis

        if not a.image:  # the sample this trajectory ends in: continue from x_t, only for the picture
            rest = [g for g in trajectory_grid(model.num_train_timesteps, a.steps, ts) if g <= ts]
            shown = x_to_image(model, denoise(model, x_t[None], rest, a.prompt, a.guidance))[0]
        denoised = x_to_image(model, predict_x0(model, x_t[None], ts, a.prompt))[0]
        render_basis(b, png, images=[("image" if a.image else "sample", shown), ("denoised x_t", denoised)],
                     title=f"{model.name}  {('image ' + Path(a.image).name) if a.image else f'seed {a.seed}'}  "
                           f"t={ts} ({frac:.2f} T)")
    s = ", ".join(f"{float(v):.4g}" for v in b.singular_values)
    print(f"model {model.name} (weights {model.model_hash}), timestep {ts} ({frac:.3f} T), k = {b.k}")
    print(f"singular values: {s}")
    print(f"cost: {b.jvps} JVPs + {b.vjps} VJPs, {b.iterations} iterations, {b.seconds:.2f} s ({b.algorithm}); "
          f"max residual {float(b.residuals.max()):.1e}")
    print(f"wrote {out}" + (f" and {png}" if a.png != "" else ""))


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
    from .loading import resolve_timestep
    from .atomic import write_text_atomic
    from .recipe import EditRecipe, run_recipe
    from .viz import render_edit_grid

    out = Path(a.out)
    if not out.parent.is_dir():
        raise LatentBasisError(f"cannot write {out}: folder {out.parent} does not exist")
    if a.recipe:
        r = EditRecipe.from_file(a.recipe)
        model = _load(a, r.model, a.dtype or r.dtype)
    else:
        model = _load(a, a.model)
        ts, frac = resolve_timestep(model.num_train_timesteps, fraction=None if a.timestep is not None else a.t,
                                    timestep=a.timestep)
        r = EditRecipe(model=model.name, seed=None if a.image else a.seed, image=a.image, prompt=a.prompt,
                       guidance=a.guidance, num_steps=a.steps, timestep=ts, t_fraction=frac, k=a.k,
                       basis_file=a.basis, basis_seed=a.seed, method=a.method, n_iter=a.n_iter, scale=a.scale,
                       keep_norm=a.keep_norm, directions=a.directions, strengths=a.strengths)
    res = run_recipe(r, model)
    if r.combination is not None:  # one combined edit (e.g. a recipe exported by the app)
        rows = [", ".join(f"v{int(i) + 1} {float(w):+g}" for i, w in sorted(r.combination.items(), key=lambda kv: int(kv[0])))]
        cols = ["combined"]
    else:
        rows = [f"v{i + 1}  s={float(res.basis.singular_values[i]):.3g}" for i in r.directions]
        cols = [f"{s:+g}" for s in r.strengths]
    src = f"image {Path(r.image).name}" if r.image else f"seed {r.seed}"
    render_edit_grid(res.images, rows, cols, out, f"{model.name}, {src}, t={r.timestep}, {r.method}")
    recipe_path = out.with_suffix(".json")
    if not a.recipe or Path(a.recipe).resolve() != recipe_path.resolve():
        write_text_atomic(recipe_path, r.to_json())
    if res.reconstruction_psnr is not None:
        print(f"inversion: reconstruction PSNR {res.reconstruction_psnr:.2f} dB ({r.num_steps} steps)")
    shape = "1 combined edit" if r.combination is not None else f"{len(r.directions)} directions x {len(r.strengths)} strengths"
    print(f"wrote {out} ({shape}) and {recipe_path}")


def _cmd_info(a) -> None:
    from safetensors import safe_open

    from .basisfile import load_basis

    b = load_basis(a.file)
    with safe_open(str(a.file), framework="pt") as fh:
        meta = fh.metadata()
    for key in sorted(meta):
        print(f"{key}: {meta[key]}")
    print(f"latent: {tuple(b.latent.shape)}  tangent: {tuple(b.tangent.shape)}  point: {tuple(b.point.shape)}")


def _cmd_train(a) -> None:
    import dataclasses

    from .train import PRESETS, train

    if a.dataset not in PRESETS:
        raise LatentBasisError(f"unknown dataset {a.dataset!r}; available: {', '.join(PRESETS)}")
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
    from .report import ReportSettings, run_report

    model = _load(a, a.model)
    settings = ReportSettings(samples=a.samples, timesteps=a.timesteps, k=a.k, t_max=a.t_max, t_min=a.t_min,
                              prompts=tuple(a.prompt or ()), guidance=a.guidance, num_steps=a.steps,
                              prompt_points=a.prompt_points)
    numbers = run_report(model, a.out, settings, progress=not a.quiet)
    if numbers is None:  # not process 0 of a distributed run
        return
    from .report import verdict

    for f in numbers["findings"]:
        print(f"{verdict(f['holds'])}: {f['claim']}  [{f['evidence']}]")
    print(f"wrote {Path(a.out) / 'report.html'}")


def load_editor():
    """apps/editor.py of this source tree (the app ships beside the package, not inside it)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "apps" / "editor.py"
    if not path.is_file():
        raise LatentBasisError(f"the app is not here ({path}); run latentbasis from its source tree")
    if importlib.util.find_spec("gradio") is None:
        raise LatentBasisError('the app needs gradio: pip install -e ".[app]"')
    if "latentbasis_editor" in sys.modules:
        return sys.modules["latentbasis_editor"]
    spec = importlib.util.spec_from_file_location("latentbasis_editor", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["latentbasis_editor"] = mod  # dataclasses look their module up while it loads
    spec.loader.exec_module(mod)
    return mod


def _cmd_app(a) -> None:
    editor = load_editor()
    model = _load(a, a.model)
    if not 0 <= a.port <= 65535:
        raise LatentBasisError(f"--port {a.port} is not a port number (0 for a free one)")
    port = a.port or editor.free_port(a.host)
    print(f"latentbasis editor for {model.name} on http://{a.host}:{port}/ (Ctrl-C to stop)", flush=True)
    editor.launch(model, host=a.host, port=port, share=a.share, block=True)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    from .devices import DTYPE_NAMES

    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, mps, or auto (default: a GPU when there is one, else the CPU)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help="precision of the network's forward for sampling and editing (default float32; a recipe "
                        "replays in its own); bases are always computed in float32")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory the Jacobian products may use at once, e.g. 8GB (default: 90%% of the GPU's free "
                        "memory, 75%% of the available memory on the CPU); lower it after an out-of-memory error")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="latentbasis", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("basis", help="compute the latent/tangent basis at x_t of a seed's trajectory and save it")
    b.add_argument("--model", default="digits", help="bundled model name, local diffusers folder or cached hub id")
    b.add_argument("--seed", type=int, default=0, help="seed of x_T (and of the algorithm's random start)")
    b.add_argument("--t", type=float, default=None, help="timestep as a fraction of T in [0, 1] (default 0.6)")
    b.add_argument("--timestep", type=int, default=None, help="timestep as an integer step instead of --t")
    b.add_argument("--k", type=_positive_int, default=8, help="number of directions")
    b.add_argument("--prompt", default=None, help="prompt, for text-conditioned models")
    b.add_argument("--image", default=None, help="start from a real image (DDIM-inverted to t) instead of a seed")
    b.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance while sampling to x_t")
    b.add_argument("--steps", type=_positive_int, default=100, help="DDIM steps of a full trajectory (as for edit)")
    b.add_argument("--algorithm", choices=("krylov", "subspace"), default="krylov")
    b.add_argument("--tol", type=float, default=1e-3, help="krylov: stop at residual ||J^T u - s v|| / s <= tol")
    b.add_argument("--layer", default="mid_block", help="U-Net module whose output is h")
    b.add_argument("--init", default=None, help="warm start from a basis file of the same model (e.g. a nearby t)")
    b.add_argument("--out", default="basis.safetensors", help="basis file to write")
    b.add_argument("--png", default=None, help="picture of the directions (default: OUT with .png; '' for none)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_runtime_options(b)
    b.set_defaults(run=_cmd_basis)

    e = sub.add_parser("edit", help="edit a sample (or a real image) along latent-basis directions; PNG grid + recipe")
    e.add_argument("--model", default="digits")
    e.add_argument("--seed", type=int, default=0, help="seed of the sample (and of the basis algorithm)")
    e.add_argument("--image", default=None, help="edit a real image instead (DDIM-inverted)")
    e.add_argument("--t", type=float, default=0.6, help="edit timestep as a fraction of T in [0, 1]")
    e.add_argument("--timestep", type=int, default=None, help="edit timestep as an integer step instead of --t")
    e.add_argument("--k", type=_positive_int, default=4, help="number of directions to compute")
    e.add_argument("--directions", type=_ints, default=None, help="which directions (0-based), default all k")
    e.add_argument("--strengths", type=_floats, default=[-6.0, -3.0, 0.0, 3.0, 6.0])
    e.add_argument("--method", choices=("guidance", "direct"), default="guidance")
    e.add_argument("--n-iter", type=_positive_int, default=16, help="guidance iterations")
    e.add_argument("--scale", type=float, default=None, help="guidance scale (default 0.1 pixel, 1 latent models)")
    e.add_argument("--keep-norm", action="store_true", help="direct: keep ||x_t||")
    e.add_argument("--basis", default=None, help="use the directions of a basis file (transported if needed)")
    e.add_argument("--prompt", default=None)
    e.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance of the sampler")
    e.add_argument("--steps", type=_positive_int, default=100, help="DDIM steps")
    e.add_argument("--recipe", default=None, help="replay a recipe JSON written by an earlier edit")
    e.add_argument("--out", default="edit.png", help="PNG grid; the recipe goes beside it as .json")
    _add_runtime_options(e)
    e.set_defaults(run=_cmd_edit)

    i = sub.add_parser("info", help="print a basis file's header and shapes")
    i.add_argument("file")
    i.set_defaults(run=_cmd_info)

    ap = sub.add_parser("app", help="the editor in the browser (Gradio)")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    ap.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    ap.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    _add_runtime_options(ap)
    ap.set_defaults(run=_cmd_app)

    r = sub.add_parser("report", help="tangent-space similarity report over samples x timesteps (x prompts)")
    r.add_argument("--model", default="digits")
    r.add_argument("--samples", type=_positive_int, default=8, help="number of samples (seeds 0..N-1)")
    r.add_argument("--timesteps", type=_positive_int, default=10, help="number of timesteps from --t-max to --t-min")
    r.add_argument("--t-max", type=float, default=1.0, help="largest timestep, fraction of T")
    r.add_argument("--t-min", type=float, default=0.1, help="smallest timestep, fraction of T")
    r.add_argument("--k", type=_positive_int, default=8, help="number of directions")
    r.add_argument("--prompt", action="append", default=None,
                   help="a prompt (repeat for several; text models; default: three digits in two wordings)")
    r.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance of the text sampler")
    r.add_argument("--prompt-points", choices=("own", "shared"), default="own",
                   help="text models: x_t on each prompt's own trajectory, or one shared (unconditional) x_t")
    r.add_argument("--steps", type=_positive_int, default=100, help="DDIM steps of the trajectories")
    r.add_argument("--out", required=True, help="report folder (its cache/ makes a re-run resume)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_runtime_options(r)
    r.set_defaults(run=_cmd_report)

    t = sub.add_parser("train", help="train a bundled model (seeded, resumable from OUT/checkpoint.pt)")
    t.add_argument("--dataset", required=True, help="digits, shapes or digits-text")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--steps", type=_positive_int, default=None, help="override the preset's number of steps")
    t.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the steps run (a run may resume "
                   "on another device; the random draws come from one CPU generator)")
    t.add_argument("--no-eval", action="store_true", help="skip the sample-quality evaluation for the model card")
    t.add_argument("--quiet", action="store_true")
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
    except OSError as e:
        print(f"latentbasis: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentbasis: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
