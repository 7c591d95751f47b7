"""The command line: every option once (OPTIONS, argparse keywords by name), each command's options, help texts
and examples, and the parser (build_parser). What each command does is in latentbasis.cli."""
from __future__ import annotations

import argparse

from .basis import SPACES
from .devices import DTYPE_NAMES
from .errors import LatentBasisError, printable, utf8_text
from .editing import METHODS
from .loading import bundled_models
from .transport import TRANSFERS
from .version import __version__

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


def _floats(s: str) -> list[float]:
    return _numbers(s, float, "numbers")


def _ints(s: str) -> list[int]:
    return _numbers(s, int, "integers")


def _numbers(s: str, kind, what: str) -> list:
    try:
        return [kind(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what} separated by commas, got {s!r}") from None


# Text options an empty value means something for: --png '' (no picture), --prompt '' (the empty prompt).
MAY_BE_EMPTY = ("png", "prompt")


def _utf8(s: str) -> str:
    """Any text option's value, refused when it is not valid Unicode (a file name in another encoding reaches
    Python with lone surrogates that no recipe, header or message can hold): errors.utf8_text, as the parser's
    message."""
    try:
        return utf8_text(s, "the value")
    except LatentBasisError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _text(s: str) -> str:
    """A text option's value, refused when empty or blank: an empty path would mean the current folder, an empty
    layer the default, an empty model nothing, none of which the user asked for."""
    _utf8(s)
    if not s.strip():
        raise argparse.ArgumentTypeError("is empty; give a value")
    return s


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after every option's help; descriptions and examples kept as written."""


# Every option once: argparse keywords by name. A command lists the names it takes, with its own keywords where
# they differ (a default, a help text).
OPTIONS = {
    "seed": dict(type=int, default=0, help="seed of x_T (and of the basis algorithm's random start)"),
    "image": dict(default=None, help="start from a real image (DDIM-inverted to t) instead of a seed"),
    "t": dict(type=float, default=0.6, help="timestep as a fraction of T in [0, 1]"),
    "timestep": dict(type=int, default=None, help="timestep as an integer step, instead of --t"),
    "k": dict(type=int, default=8, help="number of directions"),
    "prompt": dict(default=None, help="prompt, for text-conditioned models"),
    "label": dict(type=int, default=None, help="class label, for class-conditional models (digits-flow)"),
    "guidance": dict(type=float, default=1.0, help="classifier-free guidance of the sampler"),
    "steps": dict(type=int, default=100, help="DDIM steps of a full trajectory"),
    "algorithm": dict(choices=("krylov", "subspace"), default="krylov", help="block Lanczos, or the published "
                      "subspace iteration"),
    "tol": dict(type=float, default=1e-3, help="krylov: stop at residual ||J^T u - s v|| / s <= tol"),
    "layer": dict(default=None, help="module whose output is h (None: the family's, mid_block for U-Nets)"),
    "describe": dict(choices=("edit", "change"), default=None, help="what the directions' descriptions read: "
                     "edit, each direction's guidance edit at -6 and +6, registered (2k edits, what `edit` prints); "
                     "change, the first-order change of x0_hat at x_t (k JVPs, no edits). None: edit for pixel "
                     "models, change for latent (VAE) models, where 2k edits cost several times the basis"),
    "init": dict(default=None, help="warm start from a basis file of the same model (e.g. a nearby t)"),
    "directions": dict(type=_ints, default=None, help="which directions, 0-based, e.g. 0,2 (None: all k)"),
    "direction": dict(default=None, help="instead, the one direction whose description matches, e.g. 'shift right', "
                      "'motion:x+', 'grow', 'brighten', 'fine detail': every direction is edited at -+ the largest "
                      "strength and registered first (it says which it picked)"),
    "strengths": dict(type=_floats, default=[-6.0, -3.0, 0.0, 3.0, 6.0], help="strengths along each direction"),
    "method": dict(choices=METHODS, default="guidance", help="the published x-space guidance, or x_t + s v"),
    "n-iter": dict(type=int, default=16, help="guidance iterations"),
    "scale": dict(type=float, default=None, help="guidance scale (None: 0.1 pixel, 1 latent models)"),
    "keep-norm": dict(action="store_true", help="direct: rescale to keep ||x_t||"),
    "basis": dict(default=None, help="use the directions of a basis file (transported if needed; a region basis "
                  "acts on its own region unless --mask gives another)"),
    "transport-rank": dict(type=int, default=None, help="transport into a local basis of this rank (the published "
                           "code uses 50; None: the file's k)"),
    "transfer": dict(choices=TRANSFERS, default="tangent", help="how --basis directions are carried here: as tangent "
                     "vectors (the paper), or, for a region basis of another image (--space x0 --mask), as the same "
                     "motion of this region's content (a shift, scaling, rotation or colour offset), then transported"),
    "space": dict(choices=SPACES, default="h", help="h: the pullback of the feature map h (the paper); x0: the "
                  "Jacobian of x0_hat (LOCO-Edit), which --mask can restrict to a region"),
    "mask": dict(default=None, help="the region, with --space x0: a box x0,y0,x1,y1 in pixels of the image, or a "
                 "grey PNG of its size (non-zero inside)"),
    "null-rank": dict(type=int, default=0, help="keep the directions orthogonal to the top r directions of the rest "
                      "of the image (needs --mask), so an edit leaves the rest alone"),
    "recipe": dict(default=None, help="replay a recipe JSON written by an earlier edit or the app"),
    "samples": dict(type=int, default=8, help="number of samples (seeds 0..N-1)"),
    "timesteps": dict(type=int, default=10, help="number of timesteps from --t-max to --t-min"),
    "t-max": dict(type=float, default=1.0, help="largest timestep, fraction of T"),
    "t-min": dict(type=float, default=0.1, help="smallest timestep, fraction of T"),
    "prompt-points": dict(choices=("own", "shared"), default="own", help="text models: x_t on each prompt's own "
                          "trajectory, or one shared (unconditional) x_t"),
    "judge-samples": dict(type=int, default=64, help="images per skipped fraction in the teleportation table"),
    "host": dict(default="127.0.0.1", help="address to listen on (the default: this machine only)"),
    "port": dict(type=int, default=0, help="port (0: a free one)"),
    "share": dict(action="store_true", help="ask Gradio for a public share link (off by default)"),
    "device": dict(default="auto", help="cpu, cuda, cuda:N, mps, or auto (a GPU when there is one, else the CPU)"),
    "dtype": dict(default=None, choices=DTYPE_NAMES, help="precision of the network's forward for sampling and "
                  "editing (None: the weights' own, or a recipe's); bases are always float32; float32 for "
                  "half-precision weights is refused (it only upcasts them)"),
    "guidance-scale": dict(type=float, default=None, help="the guidance a guidance-distilled model takes as an input "
                           "(FLUX.1-dev; None: its pipeline's 3.5); others refuse it (CFG is --guidance)"),
    "max-memory": dict(default=None, metavar="SIZE", help="the most memory the process may hold while the Jacobian "
                       "products run, the model included, e.g. 8GB (None: in use + 90%% of the GPU's free memory, or "
                       "+ 75%% of the CPU's available); lower it after an out-of-memory error"),
    "quiet": dict(action="store_true", help="no progress bars"),
}
RUNTIME = ("device", "dtype", "guidance-scale", "max-memory")
REGION = ("space", "mask", "null-rank")


def _command(sub, name: str, run, help: str, description: str, options, **own):
    """A subcommand taking `options` (names in OPTIONS, or a name in `own` with its keywords)."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=_Help,
                       epilog="example:\n  " + EXAMPLES[name])
    for opt in options:
        kw = {**OPTIONS.get(opt, {}), **own.get(opt.replace("-", "_"), {})}
        if "type" not in kw and kw.get("action") in (None, "append"):
            kw["type"] = _utf8 if opt in MAY_BE_EMPTY else _text
        p.add_argument(opt if opt == "file" else f"--{opt}", **kw)
    p.set_defaults(run=run)
    return p


def build_parser(commands: dict) -> argparse.ArgumentParser:
    """The parser of every command; commands: name -> the function that runs it (latentbasis.cli)."""
    p = _Parser(prog="latentbasis", formatter_class=_Help,
                description="Read the Riemannian geometry of a diffusion model's latent space (the pullback of its "
                            "h-space) and edit images along it.\n\nexamples:\n  "
                            + "\n  ".join(EXAMPLES[c].splitlines()[0] for c in ("basis", "edit", "report", "app")))
    p.add_argument("--version", action="version", version=f"latentbasis {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model = dict(default="digits", help=f"a bundled model ({', '.join(bundled_models()) or 'none installed'}), a "
                                        "local diffusers folder, or a hub id already in the local cache (nothing is "
                                        "downloaded)")
    _command(sub, "basis", commands["basis"], "compute the latent/tangent basis at x_t and save it",
             "Compute the top-k latent basis (right singular vectors of J = dh/dx_t) and tangent basis at x_t of a "
             "seed's DDIM trajectory (or of a DDIM-inverted image), and save it with a picture.",
             ["model", "seed", "t", "timestep", "k", "prompt", "label", "image", "guidance", "steps", "algorithm",
              "tol", "layer", "init", *REGION, "describe", "out", "png", *RUNTIME, "quiet"], model=model,
             t=dict(type=float, default=None, help="timestep as a fraction of T in [0, 1] (None: 0.6)"),
             out=dict(default="basis.safetensors", help="basis file to write"),
             png=dict(default=None, help="picture of the directions (None: OUT with .png; '' for none)"))
    _command(sub, "edit", commands["edit"], "edit a sample or a real image along latent-basis directions (PNG grid + recipe)",
             "Edit a sample (or a real image) along latent-basis directions at t, with the published x-space "
             "guidance or directly; writes a PNG grid (rows: directions, columns: strengths) and a recipe JSON "
             "beside it that replays to the same pixels.",
             ["model", "seed", "image", "t", "timestep", "k", "directions", "direction", "strengths", "method",
              "n-iter", "scale", "keep-norm", "basis", "transport-rank", "transfer", *REGION, "prompt", "label",
              "guidance", "steps", "recipe", "out", *RUNTIME, "quiet"], model=model, k=dict(type=int, default=4,
                                                                                          help="number of directions"),
             out=dict(default="edit.png", help="PNG grid; the recipe goes beside it as .json"))
    _command(sub, "global", commands["global"], "directions shared by many samples at one t, saved as a basis file",
             "Compute the bases of --samples samples at t and keep the directions they share (the top eigenvectors "
             "of the mean projector of their tangent spaces); latentbasis edit --basis applies them to any image "
             "by transport and says how much of each it keeps.",
             ["model", "samples", "t", "k", "prompt", "label", "guidance", "steps", "layer", *REGION, "describe",
              "describe-samples", "out", *RUNTIME, "quiet"], model=model,
             samples=dict(type=int, default=16, help="samples (seeds 0..N-1)"),
             describe_samples=dict(type=int, default=4, help="describe each global direction on the first N samples "
                                   "(carried onto each, as edit --basis does) and keep what most of them show; "
                                   "0: no descriptions"),
             t=dict(type=float, default=0.8, help="timestep as a fraction of T"),
             k=dict(type=int, default=4, help="directions per sample, and global directions kept"),
             out=dict(default="global.safetensors", help="the file of global directions"))
    _command(sub, "layers", commands["layers"], "list the layers h can be taken at, with their shapes and the default",
             "List the candidate layers for the feature map h (the U-Net's stages, or a transformer's blocks) with "
             "the shape of h there and which one is the default; any of them goes to --layer.",
             ["model", *RUNTIME], model=model)
    _command(sub, "info", commands["info"], "print a basis file's header and shapes", "Print a basis file's header and "
             "shapes, and a line per direction saying what it does.", ["file"],
             file=dict(help="a basis file (.safetensors)"))
    _command(sub, "app", commands["app"], "the editor in the browser (Gradio)", "Start the editor in the browser; it prints "
             "its address once it accepts connections.", ["model", "host", "port", "share", *RUNTIME], model=model)
    _command(sub, "report", commands["report"], "tangent-space similarity report over samples x timesteps (x prompts)",
             "Compute (or resume) a grid of bases over samples x timesteps (x prompts) into OUT/cache and write "
             "OUT/report.html with plots, numbers.json and CSV tables; the paper's claims are checked on them.",
             ["model", "samples", "timesteps", "t-max", "t-min", "k", "prompt", "label", "guidance", "prompt-points",
              "steps", "judge-samples", "out", *RUNTIME, "quiet"], model=model,
             prompt=dict(action="append", default=None, help="a prompt (repeat for several; text models; None: "
                                                             "three digits in two wordings)"),
             label=dict(type=int, action="append", default=None, help="a class label (repeat for several; "
                                                                      "class-conditional models; None: 1, 4 and 7)"),
             guidance=dict(type=float, default=3.0, help="classifier-free guidance of the conditional sampler"),
             out=dict(required=True, help="report folder (its cache/ makes a re-run resume)"))
    _command(sub, "compare", commands["compare"], "the same tangent-space measurements for several models, side by side",
             "Run the report grid on several models (the first: the simpler data) and compare how consistent their "
             "samples' tangent spaces are, each normalised by its own random baseline, with intervals and the "
             "confounds (resolution, channels, architecture) on the page.",
             ["model", "samples", "timesteps", "k", "steps", "out", *RUNTIME, "quiet"],
             model=dict(action="append", default=None, help="a model (repeat: at least two; the first is the "
                                                            "simpler data)"),
             samples=dict(type=int, default=8, help="samples per model (at least 4)"),
             timesteps=dict(type=int, default=10, help="timesteps from 1.0 T to 0.1 T"),
             out=dict(required=True, help="folder for compare.html and each model's report"))
    _command(sub, "train", commands["train"], "train a bundled model (seeded, resumable from OUT/checkpoint.pt)",
             "Train one of the bundled models from scratch (seeded and resumable: OUT/checkpoint.pt).",
             ["dataset", "out", "steps", "device", "no-eval", "quiet"],
             dataset=dict(required=True, help="digits, digits-text, shapes or digits-flow"),
             out=dict(required=True, help="model folder to write"),
             steps=dict(type=int, default=None, help="override the preset's number of steps"),
             device=dict(default="cpu", help="cpu or cuda: where the steps run (a run may resume on another device; "
                                             "the random draws come from one CPU generator)"),
             no_eval=dict(action="store_true", help="skip the sample-quality evaluation for the model card"),
             quiet=dict(action="store_true", help="no progress bar"))
    return p
