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
