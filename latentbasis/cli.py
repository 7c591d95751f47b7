"""The `latentbasis` command: a thin layer over the Python API.

Bad input gets one line on stderr and exit 2; nothing already written is touched (outputs are checked before any
work and written atomically). Progress bars go to stderr and are erased when a command ends.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from . import cli_options, validate as v
from .app import load_editor
from .basisfile import info_lines, load_basis, save_basis
from .describe import description_lines
from .devices import error_line, parse_memory
from .errors import LatentBasisError
from .evaluate import train_bundled
from .train import TRAIN_OUTPUTS
from .loading import load_model, quiet_libraries, resolve_timestep
from .masks import parse_mask
from .progress import StageBars
from .recipe import EditRecipe, basis_for, edit_outputs, run_recipe
from .report import COMPARE_OUTPUTS, REPORT_OUTPUTS, ReportSettings, run_compare, run_report
from .report_pages import findings_lines
from .transport import global_basis, global_lines

# ---------------------------------------------------------------- helpers

def _load(a, name: str, dtype: str | None = None):
    """The model named on the command line, on --device in --dtype, with --max-memory for the Jacobian products."""
    budget = parse_memory(a.max_memory) if getattr(a, "max_memory", None) else None
    model = load_model(name, device=getattr(a, "device", "auto"), dtype=dtype or getattr(a, "dtype", None),
                       max_memory=budget)
    model.set_guidance(getattr(a, "guidance_scale", None))
    return model


def _check_common(a) -> None:
    """The numbers every sampling command takes, checked before any work (validate)."""
    names = ("seed", "guidance", "steps", "k", "t", "samples", "timesteps", "t_max", "t_min", "judge_samples")
    v.sampling_options(lambda name: "--" + name.replace("_", "-"), **{n: getattr(a, n, None) for n in names})
    if getattr(a, "t", None) is not None and getattr(a, "timestep", None) is not None and a.command == "basis":
        raise LatentBasisError("give --t or --timestep, not both")
    for p in (a.prompt if isinstance(getattr(a, "prompt", None), list) else [getattr(a, "prompt", None)]):
        v.optional_string(p, "--prompt")
    if getattr(a, "max_memory", None):
        parse_memory(a.max_memory)


def _model_and_t(a, name: str | None = None):
    """The model with the command's condition in a.prompt (validate.condition), and (timestep, fraction of T)."""
    model = _load(a, name or a.model)
    a.prompt = v.condition(model, getattr(a, "prompt", None), getattr(a, "label", None), ("--prompt", "--label"))
    fraction = a.t if getattr(a, "timestep", None) is None else None
    return model, resolve_timestep(model.num_train_timesteps, fraction=fraction, timestep=getattr(a, "timestep", None))


def _region(a, model):
    """The --mask of a region basis (--space x0) on the model's images, or None."""
    v.integer(a.null_rank, "--null-rank", 0, v.MAX_X_ELEMENTS)
    if a.mask is None:
        return None
    if a.space != "x0" and not getattr(a, "basis", None):   # with --basis, the file's space is used
        raise LatentBasisError("--mask needs --space x0 (the Jacobian of x0_hat over the region)")
    return parse_mask(a.mask, model.pixel_size()[1])


READ_OPTIONS = ("model", "init", "image", "basis", "recipe", "mask")


def read_paths(a, **more) -> dict[str, str | None]:
    """Every path a command reads, by the name the user knows it by: each of READ_OPTIONS it has (a mask given as
    a box is no path and matches no file), and `more`. check_outputs keeps every output off all of them."""
    paths = {f"--{name}": getattr(a, name, None) for name in READ_OPTIONS}
    paths.update(more)
    return {k: str(v) for k, v in paths.items() if v not in (None, "")}


# ---------------------------------------------------------------- commands

def _cmd_basis(a) -> None:
    _check_common(a)
    v.tolerance(a.tol, "--tol")
    out = v.output_file(a.out, "--out")
    png = None if a.png == "" else a.png if a.png else out.with_suffix(".png")
    v.check_outputs({"--out": out, "--png": png}, read_paths(a))   # the paths as given: "d/" names a folder
    png = None if png is None else Path(png)
    a.t = 0.6 if a.t is None and a.timestep is None else a.t
    model, (ts, frac) = _model_and_t(a)
    init = load_basis(a.init, model=model, layer=model.layer_name(a.layer)).latent if a.init else None
    mask = _region(a, model)
    with StageBars(a.quiet) as stages:
        run = basis_for(model, timestep=ts, t_fraction=frac, k=a.k, seed=a.seed, image=a.image, num_steps=a.steps,
                        prompt=a.prompt, guidance=a.guidance, pictures=png is not None, stage=stages, layer=a.layer,
                        algorithm=a.algorithm, tol=a.tol, init=init, callback=stages.basis_callback(),
                        space=a.space, mask=mask, null_rank=a.null_rank, describe=a.describe)
    print("\n".join([f"note: {n}" for n in run.notes] + run.write(out, png)))


def _cmd_edit(a) -> None:
    out, recipe_path = edit_outputs(a.out, a.recipe, "--out")
    outputs = {"--out": out, **({"recipe (--out with .json)": recipe_path} if recipe_path else {})}
    if a.recipe:
        v.check_outputs(outputs, {"--recipe": a.recipe})
        r = EditRecipe.from_file(a.recipe)
        v.check_outputs({"--out": out}, r.input_files())
        if a.max_memory:
            _check_common(a)
        model = _load(a, r.model, a.dtype or r.dtype)
    else:
        _check_common(a)
        v.check_outputs(outputs, read_paths(a))
        model, (ts, frac) = _model_and_t(a)
        _region(a, model)
        if a.direction is not None and a.directions is not None:
            raise LatentBasisError("give --directions or --direction, not both")
        r = EditRecipe(model=model.name, seed=None if a.image else a.seed, image=a.image, prompt=a.prompt,
                       guidance=a.guidance, num_steps=a.steps, timestep=ts, t_fraction=frac, k=a.k,
                       basis_file=a.basis, basis_seed=a.seed, method=a.method, n_iter=a.n_iter, scale=a.scale,
                       keep_norm=a.keep_norm, directions=a.directions, strengths=a.strengths, space=a.space,
                       mask=a.mask, null_rank=a.null_rank, transport_rank=a.transport_rank,
                       transfer=a.transfer, guidance_scale=a.guidance_scale, direction=a.direction).validate()
    with StageBars(a.quiet) as stages:
        res = run_recipe(r, model, progress=stages)
    print("\n".join(res.write(out, recipe_path)))


def _cmd_info(a) -> None:
    print("\n".join(info_lines(a.file)))


def _cmd_global(a) -> None:
    _check_common(a)
    v.count(a.samples, "--samples", v.MAX_SAMPLES, lo=2)
    v.integer(a.describe_samples, "--describe-samples", lo=0, hi=v.MAX_SAMPLES)
    v.check_outputs({"--out": a.out}, read_paths(a))
    model, (ts, frac) = _model_and_t(a)
    mask = _region(a, model)
    with StageBars(a.quiet) as stages:
        g = global_basis(model, range(a.samples), timestep=ts, k=a.k, num_steps=a.steps, prompt=a.prompt,
                         guidance=a.guidance, progress=stages(f"{a.samples} samples", a.samples), layer=a.layer,
                         space=a.space, mask=mask, null_rank=a.null_rank, t_fraction=frac, describe=a.describe,
                         describe_samples=a.describe_samples, stage=stages)
    save_basis(g, a.out)
    wrote = f"wrote {a.out}: apply it with latentbasis edit --basis {a.out} (transported to each image)"
    print("\n".join(global_lines(model, g, a.samples, a.steps) + (description_lines(g) if g.descriptions else [])
                    + [wrote]))


def _cmd_layers(a) -> None:
    print("\n".join(_load(a, a.model).layer_lines()))


def _cmd_train(a) -> None:
    if a.steps is not None:
        v.count(a.steps, "--steps", 10_000_000)
    v.check_output_folder(a.out, "--out", earlier=TRAIN_OUTPUTS, what="training run")
    text = train_bundled(a.dataset, a.out, steps=a.steps, device=a.device, progress=not a.quiet,
                         evaluate=not a.no_eval)
    print(f"{text}\nwrote {a.out}" if text else f"wrote {a.out}")


def _cmd_report(a) -> None:
    _check_common(a)
    v.check_output_folder(a.out, "--out", earlier=REPORT_OUTPUTS, what="report")
    model = _load(a, a.model)
    a.prompt = v.condition(model, a.prompt, a.label, ("--prompt", "--label"))
    settings = ReportSettings(samples=a.samples, timesteps=a.timesteps, k=a.k, t_max=a.t_max, t_min=a.t_min,
                              prompts=tuple(a.prompt or ()), guidance=a.guidance, num_steps=a.steps,
                              prompt_points=a.prompt_points, judge_samples=a.judge_samples)
    numbers = run_report(model, a.out, settings, progress=not a.quiet)
    if numbers is not None:   # None: not process 0 of a distributed run
        print("\n".join(findings_lines(numbers["findings"] + numbers.get("geometry_findings", []))))
        print(f"wrote {Path(a.out) / 'report.html'}")


def _cmd_compare(a) -> None:
    if not a.model or len(a.model) < 2:
        raise LatentBasisError("give at least two models: --model A --model B")
    _check_common(a)
    v.count(a.samples, "--samples", v.MAX_SAMPLES, lo=4)
    v.count(a.timesteps, "--timesteps", v.MAX_TIMESTEPS, lo=2)
    v.check_output_folder(a.out, "--out", earlier=COMPARE_OUTPUTS, what="comparison")
    models = [_load(a, name) for name in a.model]
    settings = ReportSettings(samples=a.samples, timesteps=a.timesteps, k=a.k, num_steps=a.steps, geometry=False)
    print("\n".join(findings_lines(run_compare(models, a.out, settings, progress=not a.quiet)["findings"])))
    print(f"wrote {Path(a.out) / 'compare.html'}")


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


def build_parser():
    """The `latentbasis` parser (cli_options.build_parser), each command run by its function here."""
    return cli_options.build_parser({"basis": _cmd_basis, "edit": _cmd_edit, "global": _cmd_global,
                                     "layers": _cmd_layers, "info": _cmd_info, "app": _cmd_app, "report": _cmd_report,
                                     "compare": _cmd_compare, "train": _cmd_train})


_NUMBERS = re.compile(r"-\.?\d[\d.,eE+-]*")   # a negative number, or a list starting with one: -6,-3,0  -1,0,4,4


def _glue_negative_lists(argv: list[str]) -> list[str]:
    """argparse reads '--strengths -6,-3,0' (or '--mask -1,0,4,4') as an option followed by another option: glue
    a value that is a negative number or a list of numbers onto the option before it."""
    out, i = [], 0
    while i < len(argv):
        if argv[i].startswith("--") and "=" not in argv[i] and i + 1 < len(argv) and _NUMBERS.fullmatch(argv[i + 1]):
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
        quiet_libraries()
        args.run(args)
    except KeyboardInterrupt:
        print("latentbasis: interrupted", file=sys.stderr)
        return 130
    except Exception as e:   # one line, never a traceback: our own message, or the kind of an unforeseen error
        print(f"latentbasis: error: {error_line(e)}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
