import pytest
import torch

from latentbasis import LatentBasisError, load_model, resolve_timestep


def test_loads_unet_folder(tiny_unet_dir):
    m = load_model(str(tiny_unet_dir))
    assert m.x_shape == (1, 8, 8) and not m.conditional
    assert m.num_train_timesteps == 1000
    assert not any(p.requires_grad for p in m.unet.parameters())
    assert m.model_hash == load_model(str(tiny_unet_dir)).model_hash  # stable across loads


def test_hash_tells_weights_apart(tiny_unet_dir, other_unet_dir):
    assert load_model(str(tiny_unet_dir)).model_hash != load_model(str(other_unet_dir)).model_hash


def test_loads_sd_pipeline_folder(tiny_sd_dir):
    m = load_model(str(tiny_sd_dir))
    assert m.conditional and m.vae is not None
    assert m.x_shape == (4, 8, 8)
    e1, e2 = (m.encode_prompt(p).inputs["encoder_hidden_states"] for p in ("the digit seven", "a cat"))
    assert e1.shape == (1, 8, 16) and not torch.allclose(e1, e2)


def test_missing_model_names_what_was_looked_for(tmp_path):
    with pytest.raises(LatentBasisError, match="not found.*no download"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(LatentBasisError, match="not found"):
        load_model("someone/not-cached-anywhere")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(LatentBasisError, match="not a diffusers model folder"):
        load_model(str(tmp_path))


def test_a_local_folder_named_like_a_bundled_model(tiny_unet_dir, tmp_path, monkeypatch):
    """A report's output folder `digits/` in the working directory does not hide the bundled model of that name;
    a model folder of that name is the user's own and is taken."""
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "report.html").write_text("<html></html>")
    m = load_model("digits", device="cpu")
    assert m.name == "digits" and m.model_hash == load_model("digits", device="cpu").model_hash
    shutil.rmtree(tmp_path / "digits")
    shutil.copytree(tiny_unet_dir, tmp_path / "digits")
    assert load_model("digits").model_hash == load_model(str(tiny_unet_dir)).model_hash


def test_corrupt_weights_one_clear_error(tiny_unet_dir, tmp_path):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(tiny_unet_dir, d)
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LatentBasisError, match="could not load"):
        load_model(str(d))


def test_prompt_on_pixel_model_refused(tiny_unet_dir):
    with pytest.raises(LatentBasisError, match="not text-conditioned"):
        load_model(str(tiny_unet_dir)).encode_prompt("a cat")


@pytest.mark.parametrize("frac,expected", [(0.0, 0), (1.0, 999), (0.6, 599)])
def test_timestep_from_fraction(frac, expected):
    assert resolve_timestep(1000, fraction=frac)[0] == expected


@pytest.mark.parametrize("kw", [{"fraction": 1.2}, {"fraction": -0.1}, {"timestep": 1000}, {"timestep": -1}, {}])
def test_timestep_outside_schedule(kw):
    with pytest.raises(LatentBasisError):
        resolve_timestep(1000, **kw)


def test_hub_id_from_the_local_cache_only(tiny_unet_dir, tmp_path, monkeypatch):
    """A hub id resolves through the local Hugging Face cache (models--org--name/snapshots/<rev>), offline."""
    import shutil

    import huggingface_hub.constants as hc

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-ddpm"
    shutil.copytree(tiny_unet_dir, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    m = load_model("someone/tiny-ddpm")
    assert m.x_shape == (1, 8, 8) and m.model_hash == load_model(str(tiny_unet_dir)).model_hash
    with pytest.raises(LatentBasisError, match="not found"):
        load_model("someone/not-in-this-cache")


def test_half_precision_weights_sample_in_their_own_precision(tiny_unet_dir, tmp_path):
    """A float16 checkpoint loads in float16 when no dtype is asked, bases stay float32, and float32 sampling of
    it (which would only upcast) is refused with one message that says what to give instead."""
    import shutil

    from safetensors.torch import load_file, save_file

    from latentbasis import latent_basis

    d = tmp_path / "half"
    shutil.copytree(tiny_unet_dir, d)
    w = load_file(d / "diffusion_pytorch_model.safetensors")
    save_file({k: v.half() for k, v in w.items()}, str(d / "diffusion_pytorch_model.safetensors"))
    m = load_model(str(d), device="cpu")
    assert m.dtype == torch.float16 and next(m.unet.parameters()).dtype == torch.float16
    assert load_model(str(tiny_unet_dir), device="cpu").dtype == torch.float32
    b = latent_basis(m, torch.randn(m.x_shape), timestep=500, k=2)
    assert b.latent.dtype == torch.float32 and b.weights_dtype == "float16"
    with pytest.raises(LatentBasisError, match="holds float16 weights.*give dtype float16"):
        load_model(str(d), device="cpu", dtype="float32")
    assert load_model(str(d), device="cpu", dtype="bfloat16").dtype == torch.bfloat16


def test_a_memory_budget_above_the_machine_is_refused(tiny_unet_dir):
    with pytest.raises(LatentBasisError, match="more than this machine has"):
        load_model(str(tiny_unet_dir), device="cpu", max_memory=2**60)


def test_loading_survives_a_library_log_handler_on_a_closed_stream(tiny_unet_dir, tmp_path):
    """A handler of diffusers' logger left writing to a stream that has since closed (an earlier test's capture, a
    closed log file's stream) does not break loading: the loader points it at the current stderr without flushing
    the closed one."""
    import logging

    stream = open(tmp_path / "log.txt", "w")
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    stream.close()
    try:
        assert load_model(str(tiny_unet_dir)).num_train_timesteps > 0
    finally:
        logger.removeHandler(handler)
