import subprocess
import sys

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
    out = tmp_path / "sd.safetensors"
    assert main(["basis", "--model", str(tiny_sd_dir), "--prompt", "the digit seven", "--k", "2", "--steps", "5",
                 "--out", str(out), "--quiet"]) == 0
    assert load_basis(out).prompt == "the digit seven"


@pytest.fixture(scope="module")
def made_basis(tiny_unet_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "b.safetensors"
    assert main(["basis", "--model", str(tiny_unet_dir), "--k", "2", "--steps", "5", "--out", str(out), "--png", "",
                 "--quiet"]) == 0
    return out


@pytest.mark.parametrize("case", ["k_too_large", "t_out_of_range", "timestep_out", "missing_model", "other_model",
                                  "corrupt_basis", "missing_out_dir", "prompt_on_pixel_model", "info_corrupt"])
def test_bad_input_one_line_nonzero_exit(case, tiny_unet_dir, other_unet_dir, made_basis, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage")
    base = ["basis", "--model", tiny_unet_dir, "--steps", "3", "--quiet", "--out", tmp_path / "o.safetensors"]
    args = {
        "k_too_large": base + ["--k", "65"],
        "t_out_of_range": base + ["--t", "1.5"],
        "timestep_out": base + ["--timestep", "1000"],
        "missing_model": ["basis", "--model", tmp_path / "no_such_model", "--out", tmp_path / "o.safetensors"],
        "other_model": ["basis", "--model", other_unet_dir, "--init", made_basis, "--out", tmp_path / "o.safetensors"],
        "corrupt_basis": base + ["--init", corrupt],
        "missing_out_dir": ["basis", "--model", tiny_unet_dir, "--out", tmp_path / "nodir" / "o.safetensors"],
        "prompt_on_pixel_model": base + ["--prompt", "a cat"],
        "info_corrupt": ["info", corrupt],
    }[case]
    r = run_cli(*args)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("latentbasis: error:"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_input_keeps_existing_output(tiny_unet_dir, made_basis, tmp_path):
    before = made_basis.read_bytes()
    r = run_cli("basis", "--model", tiny_unet_dir, "--k", "999", "--out", made_basis)
    assert r.returncode == 2 and made_basis.read_bytes() == before


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


@pytest.mark.parametrize("case", ["not_an_image", "missing_image", "rgb_for_grey_model", "direction_too_large",
                                  "basis_other_model", "basis_other_shape", "corrupt_recipe", "bad_strengths"])
def test_edit_bad_input(case, tiny_unet_dir, other_unet_dir, tiny_sd_dir, edited, tmp_path):
    from PIL import Image

    other = tmp_path / "other.safetensors"
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(rgb)
    bad_recipe = tmp_path / "r.json"
    bad_recipe.write_text("{ nope")
    base = ["edit", "--model", tiny_unet_dir, "--steps", "5", "--n-iter", "1", "--out", edited]
    if case == "basis_other_model":
        assert main(["basis", "--model", str(other_unet_dir), "--k", "2", "--steps", "5", "--out", str(other),
                     "--png", "", "--quiet"]) == 0
    if case == "basis_other_shape":
        assert main(["basis", "--model", str(tiny_sd_dir), "--k", "2", "--steps", "5", "--out", str(other),
                     "--png", "", "--quiet"]) == 0
    args = {
        "not_an_image": base + ["--image", text],
        "missing_image": base + ["--image", tmp_path / "nope.png"],
        "rgb_for_grey_model": base + ["--image", rgb],
        "direction_too_large": base + ["--k", "2", "--directions", "0,2"],
        "basis_other_model": base + ["--basis", other],
        "basis_other_shape": ["edit", "--model", tiny_unet_dir, "--basis", other, "--out", edited],
        "corrupt_recipe": ["edit", "--recipe", bad_recipe, "--out", edited],
        "bad_strengths": base + ["--strengths", "1,x"],
    }[case]
    before = edited.read_bytes(), edited.with_suffix(".json").read_bytes()
    r = run_cli(*args)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert (edited.read_bytes(), edited.with_suffix(".json").read_bytes()) == before


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
    assert {"cuda_without_gpu": "no CUDA GPU", "unknown_dtype": "invalid choice", "budget_too_small": "--max-memory",
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
    assert main(["edit", "--recipe", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert (png_pixels(again) == png_pixels(out)).all()
