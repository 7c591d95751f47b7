import re
import subprocess
import sys

import numpy as np
import pytest

from latentbasis import load_basis
from latentbasis.cli import main


def run_cli(*args):
    """The real command in a subprocess: what a user sees."""
    return subprocess.run([sys.executable, "-m", "latentbasis.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_basis_writes_file_and_picture(tiny_unet_dir, tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    assert main(["basis", "--model", str(tiny_unet_dir), "--seed", "1", "--t", "0.6", "--k", "3", "--out", str(out),
                 "--steps", "10", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "singular values:" in text and "JVPs" in text and "VJPs" in text
    b = load_basis(out)
    assert b.k == 3 and b.timestep == 599
    assert out.with_suffix(".png").stat().st_size > 1000
    # warm start from that file, then inspect it
    out2 = tmp_path / "b2.safetensors"
    assert main(["basis", "--model", str(tiny_unet_dir), "--seed", "1", "--t", "0.62", "--k", "3", "--out", str(out2),
                 "--init", str(out), "--png", "", "--quiet"]) == 0
    assert not out2.with_suffix(".png").exists()
    assert main(["info", str(out2)]) == 0
    assert "format: latentbasis.basis/1" in capsys.readouterr().out


def test_basis_of_a_real_image(tiny_unet_dir, tmp_path):
    import numpy as np
    from PIL import Image

    img = tmp_path / "d.png"
    Image.fromarray((np.random.default_rng(1).random((8, 8)) * 255).astype("uint8"), "L").save(img)
    out = tmp_path / "b.safetensors"
    assert main(["basis", "--model", str(tiny_unet_dir), "--image", str(img), "--k", "2", "--steps", "10",
                 "--out", str(out), "--quiet"]) == 0
    assert load_basis(out).k == 2


def test_prompted_basis(tiny_sd_dir, tmp_path):
    """A text model's basis keeps its prompt; on a latent (VAE) model the directions are described by the
    first-order change of x0_hat unless the edits are asked for (they cost several times the basis there), and
    then by the registered edits of the decoded images."""
    out = tmp_path / "sd.safetensors"
    assert main(["basis", "--model", str(tiny_sd_dir), "--prompt", "the digit seven", "--k", "2", "--steps", "5",
                 "--out", str(out), "--quiet"]) == 0
    b = load_basis(out)
    assert b.prompt == "the digit seven" and [d["reading"] for d in b.descriptions] == ["change"] * 2
    assert main(["basis", "--model", str(tiny_sd_dir), "--prompt", "the digit seven", "--k", "2", "--steps", "5",
                 "--out", str(out), "--quiet", "--describe", "edit"]) == 0
    assert [(d["reading"], d["strength"]) for d in load_basis(out).descriptions] == [("edit", 6.0)] * 2


@pytest.fixture(scope="module")
def made_basis(tiny_unet_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "b.safetensors"
    assert main(["basis", "--model", str(tiny_unet_dir), "--k", "2", "--steps", "5", "--out", str(out), "--png", "",
                 "--quiet"]) == 0
    return out


def png_pixels(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


@pytest.fixture(scope="module")
def edited(tiny_unet_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("edit")
    assert main(["edit", "--model", str(tiny_unet_dir), "--seed", "2", "--t", "0.5", "--k", "2", "--strengths",
                 "-1,0,1", "--steps", "10", "--n-iter", "2", "--out", str(d / "e.png")]) == 0
    return d / "e.png"


def test_edit_writes_grid_and_recipe_that_replays(edited, tmp_path):
    import json

    recipe = json.loads(edited.with_suffix(".json").read_text())
    assert recipe["format"] == "latentbasis.recipe/1" and recipe["strengths"] == [-1.0, 0.0, 1.0]
    assert recipe["timestep"] == 500 and recipe["directions"] == [0, 1]
    again = tmp_path / "again.png"
    assert main(["edit", "--recipe", str(edited.with_suffix(".json")), "--out", str(again)]) == 0
    assert (png_pixels(again) == png_pixels(edited)).all()


def test_edit_with_basis_file_from_the_same_point_and_another(tiny_unet_dir, tmp_path):
    b = tmp_path / "b.safetensors"
    assert main(["basis", "--model", str(tiny_unet_dir), "--seed", "2", "--t", "0.5", "--k", "2", "--steps", "10",
                 "--out", str(b), "--png", "", "--quiet"]) == 0
    for seed in ("2", "3"):  # 2: the basis's own point; 3: directions transported to another sample
        out = tmp_path / f"e{seed}.png"
        assert main(["edit", "--model", str(tiny_unet_dir), "--seed", seed, "--t", "0.5", "--basis", str(b),
                     "--strengths", "-1,1", "--steps", "10", "--n-iter", "2", "--out", str(out)]) == 0
        assert out.exists()


def test_edit_real_image(tiny_unet_dir, tmp_path, capsys):
    from PIL import Image

    import numpy as np

    img = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((20, 24)) * 255).astype("uint8"), "L").save(img)
    out = tmp_path / "e.png"
    assert main(["edit", "--model", str(tiny_unet_dir), "--image", str(img), "--k", "1", "--strengths", "0,2",
                 "--steps", "10", "--n-iter", "2", "--out", str(out)]) == 0
    assert "reconstruction PSNR" in capsys.readouterr().out


def test_a_colour_image_for_a_grey_model_is_converted_with_a_note(tiny_unet_dir, tmp_path, capsys):
    from PIL import Image

    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (12, 12), (200, 10, 10)).save(rgb)
    out = tmp_path / "e.png"
    assert main(["edit", "--model", str(tiny_unet_dir), "--image", str(rgb), "--k", "1", "--strengths", "0,1",
                 "--steps", "5", "--n-iter", "1", "--quiet", "--out", str(out)]) == 0
    assert "note: rgb.png is a colour image: converted to grey" in capsys.readouterr().out


def test_help_shows_defaults_models_and_an_example(capsys):
    from latentbasis.loading import bundled_models

    for cmd in ("basis", "edit", "report", "app", "info", "train"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "example:" in text and f"latentbasis {cmd}" in text
        if cmd in ("basis", "edit"):
            flat = " ".join(text.split())                      # argparse wraps long help lines
            assert "(default: 100)" in flat and ", ".join(bundled_models()) in flat
    from latentbasis.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():     # help text on every option of every command
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


def run_main(args, capsys):
    """The command in this process (fast): (exit code, stderr lines)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:   # argparse's usage errors
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


@pytest.fixture(scope="module")
def sdxl_without_second_encoder(tmp_path_factory):
    from conftest import build_sdxl

    return build_sdxl(tmp_path_factory.mktemp("sdxl_missing"), with_second_encoder=False)


@pytest.mark.parametrize("case", ["cuda_without_gpu", "unknown_dtype", "budget_too_small", "unreadable_budget",
                                  "sdxl_missing_encoder"])
@pytest.mark.parametrize("command", ["basis", "edit"])
def test_runtime_options_bad_input(case, command, tiny_unet_dir, sdxl_without_second_encoder, tmp_path, capsys):
    import torch

    if case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / ("o.safetensors" if command == "basis" else "o.png")
    out.write_bytes(b"kept")
    base = [command, "--model", tiny_unet_dir, "--steps", "3", "--k", "2", "--out", out]
    base += ["--quiet"] if command == "basis" else ["--n-iter", "1"]
    args = {"cuda_without_gpu": base + ["--device", "cuda"], "unknown_dtype": base + ["--dtype", "float8"],
            "budget_too_small": base + ["--max-memory", "1KB"], "unreadable_budget": base + ["--max-memory", "lots"],
            "sdxl_missing_encoder": [command, "--model", sdxl_without_second_encoder, "--out", out]}[case]
    rc, err = run_main(args, capsys)
    assert rc == 2 and len(err) == 1 and "error" in err[0], err
    assert {"cuda_without_gpu": "no CUDA GPU", "unknown_dtype": "invalid choice", "budget_too_small": "max_memory",
            "unreadable_budget": "memory size", "sdxl_missing_encoder": "text_encoder_2"}[case] in err[0]
    assert out.read_bytes() == b"kept" and not out.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_half_precision_from_the_command_line(tiny_unet_dir, tmp_path, capsys):
    import json

    out = tmp_path / "e.png"
    assert main(["edit", "--model", str(tiny_unet_dir), "--dtype", "bfloat16", "--device", "cpu", "--k", "1",
                 "--strengths", "0,1", "--steps", "5", "--n-iter", "1", "--out", str(out)]) == 0
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["dtype"] == "bfloat16" and r["device"] == "cpu"
    again = tmp_path / "again.png"   # the replay runs in the recipe's dtype
    assert main(["edit", "--recipe", str(out.with_suffix(".json")), "--device", "cpu", "--out", str(again)]) == 0
    assert (png_pixels(again) == png_pixels(out)).all()


def test_layers_lists_the_candidates_with_their_shapes_and_the_default(tiny_dit_dir, capsys):
    from latentbasis.loading import bundled_models

    for name in [*bundled_models(), str(tiny_dit_dir)]:
        assert main(["layers", "--model", name, "--device", "cpu"]) == 0
        out = capsys.readouterr().out.splitlines()
        rows = [ln.split() for ln in out[1:]]
        default = [r for r in rows if r[-1] == "(default)"]
        assert len(default) == 1 and all("x" in " ".join(r[1:]) for r in rows)
        if name == str(tiny_dit_dir):
            assert default[0][0] == "transformer_blocks.1" and rows[0][0] == "pos_embed"
            assert " ".join(default[0][1:4]) == "16 x 16"                      # 16 tokens of width 16
        elif name == "digits-flow":                                            # 6 blocks: the middle one
            assert default[0][0] == "transformer_blocks.3" and rows[0][0] == "pos_embed"
            assert " ".join(default[0][1:4]) == "64 x 96"                      # 64 patches of width 96
        else:
            assert default[0][0] == "mid_block"


def test_a_class_conditional_model_from_the_command_line(tiny_dit_dir, tmp_path, capsys):
    import json

    out = tmp_path / "e.png"
    assert main(["edit", "--model", str(tiny_dit_dir), "--label", "2", "--guidance", "2", "--k", "2", "--strengths",
                 "-1,1", "--steps", "5", "--n-iter", "1", "--quiet", "--out", str(out)]) == 0
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["prompt"] == "2" and r["guidance"] == 2.0
    b = tmp_path / "b.safetensors"
    assert main(["basis", "--model", str(tiny_dit_dir), "--label", "0", "--k", "2", "--steps", "5", "--quiet",
                 "--layer", "transformer_blocks.2", "--out", str(b), "--png", ""]) == 0
    from latentbasis import load_basis

    got = load_basis(b)
    assert got.layer == "transformer_blocks.2" and got.prompt == "0" and got.tangent.shape == (2, 16, 16)


@pytest.mark.parametrize("case", ["label_out_of_range", "prompt_for_class_model", "label_for_pixel_model",
                                  "label_and_prompt", "layer_missing"])
def test_conditioning_bad_input(case, tiny_dit_dir, tiny_unet_dir, tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    base = ["basis", "--model", tiny_dit_dir, "--k", "2", "--steps", "3", "--quiet", "--out", out]
    args, says = {
        "label_out_of_range": (base + ["--label", "3"], "class label 3 is out of range"),
        "prompt_for_class_model": (base + ["--prompt", "a cat"], "give a class label with --label (0..2)"),
        "label_for_pixel_model": (["basis", "--model", tiny_unet_dir, "--label", "1", "--out", out],
                                  "not class-conditional"),
        "label_and_prompt": (base + ["--label", "1", "--prompt", "1"], "not both"),
        "layer_missing": (base + ["--layer", "blocks.9"],
                          "no layer 'blocks.9'; layers: pos_embed, transformer_blocks.0, transformer_blocks.1"),
    }[case]
    rc, err = run_main(args, capsys)
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_region_basis_and_its_motion_transfer_from_the_cli(tiny_unet_dir, tmp_path, capsys):
    """basis --space x0 --mask --null-rank writes a region basis; edit --basis ... --transfer motion carries it to
    another sample's region and says how much of each direction is a motion there."""
    from latentbasis.basisfile import load_basis

    b = tmp_path / "region.safetensors"
    assert main(["basis", "--model", str(tiny_unet_dir), "--seed", "2", "--t", "0.3", "--k", "2", "--steps", "10",
                 "--space", "x0", "--mask", "0,0,6,6", "--null-rank", "3", "--out", str(b), "--png", "",
                 "--quiet"]) == 0
    got = load_basis(b)
    assert got.space == "x0" and got.null_rank == 3 and int(got.mask.sum()) == 36
    capsys.readouterr()
    out = tmp_path / "carried.png"
    assert main(["edit", "--model", str(tiny_unet_dir), "--seed", "3", "--t", "0.3", "--basis", str(b),
                 "--mask", "2,2,8,8", "--transfer", "motion", "--method", "direct", "--strengths", "-1,1",
                 "--steps", "10", "--quiet", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "carried as motions of the region: v1 " in said and "kept v1 " in said
    import json

    recipe = json.loads(out.with_suffix(".json").read_text())
    assert recipe["transfer"] == "motion" and recipe["null_rank"] == 3 and recipe["space"] == "x0"


def test_edit_with_a_region_basis_acts_on_its_own_region(tiny_unet_dir, tmp_path, capsys):
    """`edit --basis` with a region basis and no --mask uses the region the file holds: the same pixels as giving
    that region again; another region gives other pixels; the recipe (no mask in it) replays to the same pixels."""
    from PIL import Image

    f = tmp_path / "region.safetensors"
    base = ["--model", str(tiny_unet_dir), "--steps", "5", "--quiet"]
    assert main(["basis", *base, "--seed", "0", "--t", "0.3", "--k", "2", "--space", "x0", "--mask", "0,0,4,4",
                 "--null-rank", "2", "--out", str(f), "--png", ""]) == 0
    edit = ["edit", *base, "--seed", "1", "--t", "0.3", "--basis", str(f), "--strengths", "0,3", "--method", "direct"]
    outs = {name: tmp_path / f"{name}.png" for name in ("stored", "given", "other", "again")}
    assert main(edit + ["--out", str(outs["stored"])]) == 0
    assert main(edit + ["--mask", "0,0,4,4", "--out", str(outs["given"])]) == 0
    assert main(edit + ["--mask", "4,4,8,8", "--out", str(outs["other"])]) == 0
    assert main(["edit", "--recipe", str(outs["stored"].with_suffix(".json")), "--quiet", "--out",
                 str(outs["again"])]) == 0
    px = {name: np.asarray(Image.open(p)) for name, p in outs.items()}
    assert np.array_equal(px["stored"], px["given"]) and np.array_equal(px["stored"], px["again"])
    assert not np.array_equal(px["stored"], px["other"])


def test_global_directions_say_what_they_do_on_the_samples(tiny_unet_dir, tmp_path, capsys):
    """`global` describes each direction on its first --describe-samples samples (carried onto each) and prints
    what most of them show, and `edit --basis` prints it beside what each direction did on its image;
    --describe-samples 0 leaves the file without descriptions."""
    from latentbasis.basisfile import info_lines

    out = tmp_path / "g.safetensors"
    assert main(["global", "--model", str(tiny_unet_dir), "--samples", "3", "--k", "2", "--steps", "5",
                 "--describe-samples", "2", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "as edited from -6 to +6 on each of 2 samples" in text and len(re.findall(r"^v\d  .*(all 2 samples|no two of 2 samples agree)", text, re.M)) == 2
    g = load_basis(out)
    assert [(d["reading"], d["samples"]) for d in g.descriptions] == [("edit", 2)] * 2
    assert all(1 <= d["agreeing"] <= 2 for d in g.descriptions)
    assert main(["edit", "--model", str(tiny_unet_dir), "--seed", "7", "--basis", str(out), "--steps", "5",
                 "--strengths", "-2,2", "--out", str(tmp_path / "e.png"), "--quiet"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "; the file says: " in line]
    assert [line.split("; the file says: ")[1].split(";")[0] for line in said] == [d["name"] for d in g.descriptions]
    assert main(["global", "--model", str(tiny_unet_dir), "--samples", "2", "--k", "2", "--steps", "5",
                 "--describe-samples", "1", "--describe", "change", "--out", str(out), "--quiet"]) == 0
    assert [(d["reading"], d["samples"]) for d in load_basis(out).descriptions] == [("change", 1)] * 2
    assert main(["global", "--model", str(tiny_unet_dir), "--samples", "2", "--k", "2", "--steps", "5",
                 "--describe-samples", "0", "--out", str(out), "--quiet"]) == 0
    assert load_basis(out).descriptions is None and "v1  no description" in "\n".join(info_lines(out))
