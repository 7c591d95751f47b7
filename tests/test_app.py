"""The editor app: its handlers called directly, and a launched app driven over loopback with gradio_client."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")

from latentbasis.basisfile import save_basis  # noqa: E402
from latentbasis.cli import load_editor  # noqa: E402
from latentbasis.loading import load_model  # noqa: E402
from latentbasis.recipe import EditRecipe, run_recipe  # noqa: E402

E = load_editor()


@pytest.fixture(scope="module")
def model(tiny_unet_dir):
    return load_model(str(tiny_unet_dir))


@pytest.fixture()
def found(model):
    s = E.Session()
    E.new_sample(model, s, 1, 0.6)
    gallery = E.find_directions(model, s, 0.6, 4, "guidance")
    return s, gallery


def test_sample_find_slide(model, found):
    s, gallery = found
    assert len(gallery) == 4 and all(pic.dtype == np.uint8 and "s = " in cap for pic, cap in gallery)
    source = E.display(s.edited)
    assert np.array_equal(E.apply_edit(model, s, "guidance", [0, 0, 0, 0]), source)   # strength 0: the sample
    moved = E.apply_edit(model, s, "guidance", [8, 0, 0, 0])
    assert not np.array_equal(moved, source)
    both = E.apply_edit(model, s, "direct", [8, -8, 0, 0])
    assert not np.array_equal(both, moved) and s.strengths == {0: 8.0, 1: -8.0}


def test_export_replays_to_the_same_pixels(model, found):
    s, _ = found
    E.apply_edit(model, s, "guidance", [6, 0, -3, 0])
    basis_path, png, recipe = E.export(model, s)
    r = EditRecipe.from_file(recipe)
    assert r.combination == {"0": 6.0, "2": -3.0} and r.num_steps == E.APP_STEPS
    res = run_recipe(r, model)
    assert torch.equal(res.images[0, 0], s.edited)
    from PIL import Image

    assert np.asarray(Image.open(png)).shape == (8, 8)
    from latentbasis.basisfile import load_basis

    assert torch.equal(load_basis(basis_path, model=model).latent, s.basis.latent)


def test_an_imported_basis_is_transported_to_this_image(model, found, tmp_path):
    s, _ = found
    path = save_basis(s.basis, tmp_path / "from_seed1.safetensors")
    other = E.Session()
    E.new_sample(model, other, 2, 0.6)
    gallery = E.import_basis(model, other, str(path))
    assert len(gallery) == 4 and other.basis_file == str(path)
    assert torch.equal(other.basis.point, other.trajectory.at(other.timestep))
    assert not torch.equal(other.basis.latent, s.basis.latent)
    assert torch.allclose(other.basis.latent.flatten(1).norm(dim=1), torch.ones(4))


def test_bad_input_gives_a_message(model, found, other_unet_dir, tmp_path):
    s, _ = found
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    rgb = tmp_path / "rgb.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(rgb)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tiny)
    with pytest.raises(E.AppError, match="not a readable image"):
        E.upload_image(model, E.Session(), str(text), 0.6)
    with pytest.raises(E.AppError, match="channel"):
        E.upload_image(model, E.Session(), str(rgb), 0.6)
    with pytest.raises(E.AppError, match="too small"):
        E.upload_image(model, E.Session(), str(tiny), 0.6)
    with pytest.raises(E.AppError, match="outside the schedule"):
        E.find_directions(model, s, 1.5, 4, "guidance")
    with pytest.raises(E.AppError, match="out of range"):
        E.find_directions(model, s, 0.6, 99, "guidance")
    with pytest.raises(E.AppError, match="out of range"):
        E.apply_edit(model, s, "guidance", [1e6, 0, 0, 0])
    with pytest.raises(E.AppError, match="Find directions"):
        E.apply_edit(model, E.Session(), "guidance", [1])
    foreign = load_model(str(other_unet_dir))
    from latentbasis.basis import latent_basis

    b = latent_basis(foreign, s.trajectory.at(s.timestep), timestep=s.timestep, k=2)
    path = save_basis(b, tmp_path / "foreign.safetensors")
    with pytest.raises(E.AppError, match="other|another|different"):
        E.import_basis(model, s, str(path))
    assert s.basis.k == 4   # the session is as it was


def test_sessions_are_independent(model):
    a, b = E.Session(), E.Session()
    E.new_sample(model, a, 1, 0.6)
    E.new_sample(model, b, 2, 0.6)
    assert a.seed == 1 and b.seed == 2 and a.workdir != b.workdir


def test_small_report_tab(model):
    s = E.Session()
    plots, findings, html = E.small_report(model, s, 2, 2, 2)
    assert Path(html).is_file() and len(plots) >= 5 and "hold" in findings
    with pytest.raises(E.AppError, match="out of range"):
        E.small_report(model, s, 1, 2, 2)


def test_launched_app_over_loopback(model, tmp_path):
    from gradio_client import Client, handle_file

    demo, url = E.launch(model, block=False)
    try:
        c = Client(url, verbose=False)
        out = c.predict(0, 0.6, "", 3.0, api_name="/on_sample")
        assert Path(out[0]).is_file()                          # the source picture, as a PNG file
        found = c.predict(0.6, 3, "guidance", api_name="/on_find")
        assert len(found[0]) == 3
        a = c.predict("guidance", 5, *[0] * (E.MAX_K - 1), api_name="/on_slide")
        b = c.predict("guidance", -5, *[0] * (E.MAX_K - 1), api_name="/on_slide")
        assert Path(a).read_bytes() != Path(b).read_bytes()
        files = c.predict(api_name="/on_export")
        names = sorted(Path(f).name for f in files)
        assert names == ["basis.safetensors", "edited.png", "recipe.json"]
        bad = tmp_path / "bad.png"
        bad.write_text("no")
        with pytest.raises(Exception, match="not a readable image"):
            c.predict(handle_file(str(bad)), 0.6, "", api_name="/on_upload")
        again = c.predict(0.6, 2, "guidance", api_name="/on_find")   # still running after the bad input
        assert len(again[0]) == 2
        other = Client(url, verbose=False)                            # another session: its own state
        other.predict(5, 0.6, "", 3.0, api_name="/on_sample")
        with pytest.raises(Exception, match="Find directions"):
            other.predict("guidance", 5, *[0] * (E.MAX_K - 1), api_name="/on_slide")
        assert Path(c.predict("guidance", 5, *[0] * (E.MAX_K - 1), api_name="/on_slide")).is_file()
    finally:
        demo.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_app_command_serves_the_page_and_refuses_a_bad_port(tiny_unet_dir):
    import subprocess
    import sys
    import urllib.request

    r = subprocess.run([sys.executable, "-m", "latentbasis.cli", "app", "--model", str(tiny_unet_dir), "--port",
                        "70000"], capture_output=True, text=True)
    assert r.returncode == 2 and "not a port number" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    proc = subprocess.Popen([sys.executable, "-m", "latentbasis.cli", "app", "--model", str(tiny_unet_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line                         # loopback only, a free port
        url = line.split("on ")[1].split()[0]
        for _ in range(240):
            try:
                page = urllib.request.urlopen(url, timeout=5).read().decode()
                break
            except OSError:
                import time

                time.sleep(0.5)
        else:
            raise AssertionError("the app did not answer")
        assert "latentbasis editor" in page
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_text_model_with_a_vae(tiny_sd_dir, tmp_path):
    from PIL import Image

    sd = load_model(str(tiny_sd_dir))
    s = E.Session()
    pic = E.new_sample(sd, s, 0, 0.7, prompt="the digit one", guidance=2.0)
    assert pic.shape[-1] == 3 and s.prompt == "the digit one"
    assert len(E.find_directions(sd, s, 0.7, 2, "guidance")) == 2
    assert not np.array_equal(E.apply_edit(sd, s, "guidance", [20, 0]), E.apply_edit(sd, s, "guidance", [-20, 0]))
    img = tmp_path / "rgb.png"
    Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)).save(img)
    _, msg = E.upload_image(sd, s, str(img), 0.7, prompt="the digit two")
    assert "PSNR" in msg and s.image == str(img)
    with pytest.raises(E.AppError, match="not a text model"):
        E.new_sample(load_model("digits"), E.Session(), 0, 0.6, prompt="a cat")
