"""The editor app: its handlers called directly, and a launched app driven over loopback with gradio_client."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")

from latentbasis.basisfile import save_basis  # noqa: E402
from latentbasis.app import load_editor  # noqa: E402
from latentbasis.loading import load_model  # noqa: E402
from latentbasis.recipe import EditRecipe, run_recipe  # noqa: E402
from latentbasis import session  # noqa: E402

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
    # each caption says what its direction did between its previews (the reading `edit` prints)
    names = [d["name"] for d in session.preview_descriptions(s, session.previews(model, s, E.PREVIEW), E.PREVIEW)]
    assert all(f"v{i + 1}  {n}  s = " in cap for i, (n, (_, cap)) in enumerate(zip(names, gallery)))
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

    loaded = load_basis(basis_path, model=model)
    assert torch.equal(loaded.latent, s.basis.latent)
    # the file says what the captions said: the previews' registered edits, not the first-order change
    assert [(d["name"], d["reading"]) for d in loaded.descriptions] == [(d["name"], "edit") for d in s.basis.descriptions]
    assert all(f"  {d['name']}  s = " in cap for d, (_, cap) in zip(loaded.descriptions, found[1]))


def test_an_export_that_cannot_finish_leaves_the_earlier_one_whole(model, found, monkeypatch):
    """A full disk on the last file of an export (the recipe): the page gets one message and the earlier export's
    files are as they were, not a new basis and picture beside an old recipe."""
    s, _ = found
    E.apply_edit(model, s, "guidance", [6, 0, 0, 0])
    files = [Path(f) for f in E.export(model, s)]
    before = {f: f.read_bytes() for f in files}
    E.apply_edit(model, s, "guidance", [0, -6, 0, 0])

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(Exception, match="No space left on device") as err:
        E.export(model, s)
    assert type(err.value).__name__ == "LatentBasisError" and "recipe.json" in str(err.value)
    assert {f: f.read_bytes() for f in files} == before
    assert not [p for p in files[0].parent.iterdir() if ".tmp" in p.name]


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
    for (_, caption), d in zip(gallery, s.basis.descriptions):       # what the file says, beside what it does here
        assert f"(the file: {d['name']})" in caption, caption


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
    _, msg = E.upload_image(model, E.Session(), str(rgb), 0.6)      # converted, and the page says so
    assert "converted to grey" in msg
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
    """Two tabs' sessions share nothing: each edit changes its own image only, each export writes into its own
    private folder only, and closing one removes its folder and leaves the other's files."""
    a, b = E.Session(), E.Session()
    E.new_sample(model, a, 1, 0.6)
    E.new_sample(model, b, 2, 0.6)
    assert a.seed == 1 and b.seed == 2 and a.workdir != b.workdir
    assert not torch.equal(a.trajectory.x0, b.trajectory.x0)
    E.find_directions(model, a, 0.6, 2, "direct")
    b_image = b.edited.clone()
    E.apply_edit(model, a, "direct", [6, 0])
    assert b.basis is None and torch.equal(b.edited, b_image)       # a's edit left b as it was
    files = E.export(model, a)
    assert all(Path(f).parent == Path(a.workdir) for f in files) and not any(Path(b.workdir).iterdir())
    E.find_directions(model, b, 0.6, 2, "direct")
    E.apply_edit(model, b, "direct", [0, -6])
    b_files = E.export(model, b)
    assert {Path(f).name for f in b_files} == {Path(f).name for f in files}
    assert [Path(f).read_bytes() for f in files] != [Path(f).read_bytes() for f in b_files]
    a.close()
    assert not Path(a.workdir).exists() and all(Path(f).is_file() for f in b_files)
    b.close()


def test_small_report_tab(model):
    s = E.Session()
    steps = []
    plots, findings, html = E.small_report(model, s, 2, 2, 2, progress=lambda f, desc="": steps.append(f))
    assert Path(html).is_file() and len(plots) >= 5 and "too few samples to judge" in findings
    assert steps == [i / 4 for i in range(1, 5)]                 # one step per basis of the 2 x 2 grid
    with pytest.raises(E.AppError, match="out of range"):
        E.small_report(model, s, 1, 2, 2)


def test_launched_app_over_loopback(model, tmp_path):
    """Through gradio_client, as a second program would: errors come back as a message in the status output, the
    app keeps running, and sessions keep their own state."""
    from gradio_client import Client, handle_file
    from safetensors import safe_open
    from safetensors.torch import save_file

    demo, url = E.launch(model, block=False)
    sliders = [0] * (E.MAX_K - 1)
    try:
        c = Client(url, verbose=False)
        out = c.predict(0, 0.6, "", 3.0, api_name="/on_sample")     # source, edited, gallery, status, sliders
        assert Path(out[0]).is_file() and "Seed 0" in out[3]
        found = c.predict(0.6, 3, "guidance", "h", None, 0, api_name="/on_find")   # gallery, edited, status, ...
        assert len(found[0]) == 3 and "3 directions" in found[2]
        a = c.predict("guidance", 5, *sliders, api_name="/on_slide")  # the last of its two updates: the full image
        b = c.predict("guidance", -5, *sliders, api_name="/on_slide")
        assert "Edited" in a[1] and Path(a[0]).read_bytes() != Path(b[0]).read_bytes()
        files, msg = c.predict(api_name="/on_export")
        assert sorted(Path(f).name for f in files) == ["basis.safetensors", "edited.png", "recipe.json"]
        bad = tmp_path / "bad.png"
        bad.write_text("no")
        res = c.predict(handle_file(str(bad)), 0.6, "", api_name="/on_upload")
        assert "Error" in res[3] and "not a readable image" in res[3] and str(tmp_path) not in res[3]
        exported = next(Path(f) for f in files if f.endswith(".safetensors"))
        with safe_open(str(exported), framework="pt") as fh:         # a received basis whose header is markup
            meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
        save_file(tensors, str(tmp_path / "received.safetensors"), metadata={**meta, "layer": "<img src=x onerror=f()>"})
        res = c.predict(handle_file(str(tmp_path / "received.safetensors")), api_name="/on_import")
        assert "&lt;img src=x onerror=f()&gt;" in res[1] and "<img" not in res[1], res[1]
        again = c.predict(0.6, 2, "guidance", "h", None, 0, api_name="/on_find")   # still running, intact
        assert len(again[0]) == 2 and "Error" not in again[2]
        other = Client(url, verbose=False)                            # another session: its own state
        other.predict(5, 0.6, "", 3.0, api_name="/on_sample")
        res = other.predict("guidance", 5, *sliders, api_name="/on_slide")
        assert "Find directions" in res[1]
        assert "Edited" in c.predict("guidance", 5, *sliders, api_name="/on_slide")[1]
    finally:
        demo.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_one_sessions_events_run_one_at_a_time(model, tmp_path):
    """Find pressed while an upload is still being read waits for it (the session's lock), so it finds the
    directions of the uploaded image instead of failing half-way."""
    import threading

    from PIL import Image

    img = tmp_path / "d.png"
    Image.fromarray((np.random.default_rng(3).random((16, 16)) * 255).astype(np.uint8)).save(img)
    s = E.Session()
    E.new_sample(model, s, 0, 0.6)
    errors = []

    def upload():
        with s.lock:
            E.upload_image(model, s, str(img), 0.6)

    def find():
        try:
            with s.lock:
                E.find_directions(model, s, 0.6, 2, "guidance")
        except Exception as e:  # noqa: BLE001 - any failure is what this test is about
            errors.append(e)

    threads = [threading.Thread(target=upload), threading.Thread(target=find)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and s.basis is not None and s.image == str(img)


def test_session_folders_are_removed(model, tmp_path, monkeypatch):
    s = E.Session()
    E.new_sample(model, s, 0, 0.6)
    E.find_directions(model, s, 0.6, 2, "guidance")
    files = E.export(model, s)
    assert all(Path(f).is_file() for f in files)
    s.close()
    assert not Path(s.workdir).exists()
    stale = E.WORK.root() / "999999999-deadbeefdead"             # a folder of a process that is gone
    stale.mkdir(parents=True, exist_ok=True)
    mine = Path(E.Session().workdir)                           # this process's: kept
    assert E.WORK.remove_stale() >= 1
    assert not stale.exists() and mine.exists()


def test_a_slider_gives_a_quick_preview_then_the_full_image(model, found):
    s, _ = found
    quick = E.preview_edit(model, s, "guidance", [6, 0, 0, 0])
    full = E.apply_edit(model, s, "guidance", [6, 0, 0, 0])
    assert quick.shape == full.shape and not np.array_equal(quick, E.display(s.trajectory.x0))
    assert s.strengths == {0: 6.0}                             # the recipe records the full edit


def test_progress_reports_real_steps(model):
    seen = []
    s = E.Session()
    E.new_sample(model, s, 0, 0.6, progress=lambda f, desc="": seen.append((f, desc)))
    n = len(s.trajectory.timesteps)                              # the 50-step grid with t added: 51 steps
    assert seen[-1][0] == 1.0 and f"step {n} of {n}" in seen[-1][1] and len(seen) == n
    seen.clear()
    E.find_directions(model, s, 0.6, 2, "guidance", progress=lambda f, desc="": seen.append((f, desc)))
    previews = [f for f, desc in seen if desc.startswith("previews")]
    assert previews and previews[-1] == 1.0 and len(previews) > 10   # guidance iterations and DDIM steps


def test_the_app_command_serves_the_page_and_refuses_a_bad_port(tiny_unet_dir):
    import subprocess
    import sys
    import urllib.request

    from latentbasis.cli import main

    assert main(["app", "--model", str(tiny_unet_dir), "--port", "70000"]) == 2   # refused before anything starts
    proc = subprocess.Popen([sys.executable, "-m", "latentbasis.cli", "app", "--model", str(tiny_unet_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line                         # loopback only, a free port
        url = line.split("on ")[1].split()[0]
        page = urllib.request.urlopen(url, timeout=10).read().decode()   # printed once it answers: no retries
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


def test_a_class_conditional_flow_transformer(tiny_dit_dir, tmp_path):
    """The app on a flow-matching DiT: a label instead of a prompt, guidance, directions from a transformer block,
    edits, an uploaded image inverted by the Euler step."""
    from PIL import Image

    dit = load_model(str(tiny_dit_dir))
    s = E.Session()
    pic = E.new_sample(dit, s, 0, 0.7, prompt="2", guidance=2.0)
    assert pic.shape[-1] == 3 and s.prompt == "2"
    assert len(E.find_directions(dit, s, 0.7, 2, "guidance")) == 2 and s.basis.layer == dit.default_layer
    assert not np.array_equal(E.apply_edit(dit, s, "guidance", [5, 0]), E.apply_edit(dit, s, "guidance", [-5, 0]))
    with pytest.raises(E.AppError, match="out of range"):
        E.new_sample(dit, E.Session(), 0, 0.6, prompt="9")
    img = tmp_path / "g.png"
    Image.fromarray((np.random.default_rng(0).random((12, 12)) * 255).astype(np.uint8)).save(img)
    _, msg = E.upload_image(dit, s, str(img), 0.7, prompt="1")
    assert "PSNR" in msg and s.prompt == "1"


def test_a_region_painted_in_the_app(model, tmp_path):
    """Directions of a painted region (x0 space, null rank): the edit changes the image inside the region far more
    than outside it; the recipe records the mask and replays; the edit carries to other seeds."""
    s = E.Session()
    E.new_sample(model, s, 1, 0.6)
    layer = np.zeros((E.DISPLAY, E.DISPLAY, 4), np.uint8)
    f = E.DISPLAY // 8
    layer[0: 4 * f, 0: 4 * f, 3] = 255                           # the top-left quarter, painted
    mask = E.region_mask(model, {"layers": [layer]})
    assert mask.shape == (8, 8) and int(mask.sum()) == 16
    E.find_directions(model, s, 0.6, 2, "direct", space="x0", mask=mask, null_rank=6)
    assert s.basis.space == "x0" and s.basis.null_rank == 6
    before = s.edited.clone()
    E.apply_edit(model, s, "direct", [8, 0])
    change = (s.edited - before) ** 2
    inside = float(change[:, mask].sum() / change.sum())
    assert inside > 0.5
    files = E.export(model, s)
    assert Path(files[-1]).name == "mask.png"
    r = EditRecipe.from_file(files[2])
    assert r.space == "x0" and r.null_rank == 6 and r.mask and r.mask_sha256 is None
    res = run_recipe(r, model)
    assert torch.equal(res.images[0, 0], s.edited)
    others = E.apply_to_others(model, s, "direct", [8, 0], n=2)
    assert len(others) == 2 and all("kept v1" in cap and "; a motion v1 " in cap for _, cap in others)
    with pytest.raises(E.AppError, match="needs a painted region"):
        E.find_directions(model, s, 0.6, 2, "direct", space="x0", mask=None, null_rank=3)
