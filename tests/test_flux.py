"""The FLUX family (families/flux.py) on a tiny random FLUX.1-dev-shaped pipeline folder: packing, the basis against
the dense Jacobian, prompts and sampling against diffusers' FluxPipeline, from_pipeline and edit_callback."""
import json

import pytest
import torch
from helpers import assert_matches_dense, dense_svd, own_edit, without_part

from latentbasis import LatentBasisError, latent_basis, load_model
from latentbasis.families.flux import pack, unpack
from latentbasis.pipelines import edit_callback, from_pipeline
from latentbasis.sampling import denoise, initial_noise, trajectory_grid

PROMPT = "the digit seven"


def _pipe(folder):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, m, x_T, grid, guidance=3.5, true_cfg=1.0, **kw):
    """The pipeline over latentbasis' grid (given as unshifted sigmas: its dynamic shift gives the same levels);
    its packed latents, unpacked."""
    out = pipe(PROMPT, height=16, width=16, num_inference_steps=len(grid), guidance_scale=guidance,
               true_cfg_scale=true_cfg, negative_prompt="" if true_cfg > 1 else None, latents=pack(x_T),
               sigmas=[(t + 1) / m.num_train_timesteps for t in grid], output_type="latent", **kw).images
    return unpack(out.cpu(), *m.x_shape[1:])


def test_packing_is_the_pipelines():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 8, 6)
    assert torch.equal(pack(x), FluxPipeline._pack_latents(x, 2, 4, 8, 6))
    assert torch.equal(unpack(pack(x), 8, 6), x)


@pytest.mark.parametrize("layer", [None, "transformer_blocks.0"])
def test_basis_matches_the_dense_jacobian(tiny_flux_dir, layer):
    """At the default layer (the middle of the stack: a single-stream block) and at a double-stream block."""
    m = load_model(str(tiny_flux_dir), device="cpu")
    assert m.x_shape == (4, 8, 8) and m.n_tokens == 16 and m.prediction_type == "flow" and m.guidance_embeds
    assert m.default_layer == "single_transformer_blocks.0"
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(7))
    U, S, Vh = dense_svd(m.features(500, PROMPT, layer), x)
    assert_matches_dense(latent_basis(m, x, timestep=500, k=4, prompt=PROMPT, layer=layer, tol=1e-5), U, S, Vh, 4)


@pytest.mark.parametrize("true_cfg", [1.0, 2.0])
def test_prompts_and_sampling_match_the_flux_pipeline(tiny_flux_dir, true_cfg):
    """CLIP-pooled and T5 embeddings as the pipeline encodes them; the same packed noise, levels (dynamic shift at
    16 tokens), embedded guidance 3.5, with and without true classifier-free guidance: the pipeline's latents to
    1e-4."""
    m = load_model(str(tiny_flux_dir), device="cpu")
    pipe = _pipe(tiny_flux_dir)
    with torch.no_grad():    # as the pipeline's call runs it (with gradients CPU attention takes another kernel)
        emb, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, device="cpu")
    c = m.encode_prompt(PROMPT).inputs
    torch.testing.assert_close(c["encoder_hidden_states"], emb, rtol=0, atol=1e-6)
    torch.testing.assert_close(c["pooled_projections"], pooled, rtol=0, atol=1e-6)
    grid = trajectory_grid(m.num_train_timesteps, 6)
    x_T = initial_noise(m, 4)[None]
    ref = _run(pipe, m, x_T, grid, true_cfg=true_cfg)
    ours = denoise(m, x_T, grid, PROMPT, true_cfg, clip_denoised=False)
    assert float((ref - ours).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))
    m.set_guidance(1.0)    # the embedded guidance is an input: another value, another image
    assert float((denoise(m, x_T, grid, PROMPT, true_cfg, clip_denoised=False) - ours).abs().max()) > 1e-3


def test_from_pipeline_and_an_edit_inside_its_call(tiny_flux_dir):
    """from_pipeline gives load_model's basis; edit_callback unpacks the pipeline's latents, edits, packs them
    back, and equals latentbasis' own edit to 1e-4."""
    pipe = _pipe(tiny_flux_dir)
    m = from_pipeline(pipe)
    grid, x_T = trajectory_grid(m.num_train_timesteps, 6), initial_noise(m, 4)[None]
    b, _, angle, ours = own_edit(m, x_T, grid, PROMPT, 1.0, folder=tiny_flux_dir)
    assert angle < 0.1
    cb = edit_callback(b, 0, 2.0, prompt=PROMPT, n_iter=4)
    theirs = _run(pipe, m, x_T, grid, callback_on_step_end=cb)
    assert cb.fired and float((theirs - ours).abs().max()) < 1e-4
    assert float((theirs - _run(pipe, m, x_T, grid)).abs().max()) > 1e-2


def test_bad_flux_input(tiny_flux_dir, tmp_path):
    with pytest.raises(LatentBasisError, match="T5"):
        load_model(str(without_part(tiny_flux_dir, "text_encoder_2", tmp_path)), device="cpu")
    m = load_model(str(tiny_flux_dir), device="cpu")
    for bad in (float("nan"), -1.0, 1e6):
        with pytest.raises(LatentBasisError, match="guidance scale"):
            m.set_guidance(bad)
    m.guidance_embeds = False       # as a schnell-style model
    with pytest.raises(LatentBasisError, match="no guidance embedding"):
        m.set_guidance(3.5)


def test_the_command_line_takes_a_flux_folder_and_its_guidance_scale(tiny_flux_dir, tmp_path, capsys):
    """`--model` takes the FLUX folder; `--guidance-scale` sets the embedded guidance, is kept in the recipe, and the
    replay gives the same pixels; `layers` lists the double- and single-stream blocks with their shapes."""
    import numpy as np
    from PIL import Image

    from latentbasis.cli import main

    def png_pixels(path):
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()

    assert main(["layers", "--model", str(tiny_flux_dir), "--device", "cpu"]) == 0
    listing = capsys.readouterr().out
    assert "transformer_blocks.0" in listing and "single_transformer_blocks.1" in listing
    out = tmp_path / "e.png"
    assert main(["edit", "--model", str(tiny_flux_dir), "--device", "cpu", "--prompt", PROMPT, "--guidance-scale",
                 "2", "--k", "1", "--strengths", "0,2", "--steps", "4", "--n-iter", "1", "--quiet",
                 "--out", str(out)]) == 0
    recipe = json.loads(out.with_suffix(".json").read_text())
    assert recipe["guidance_scale"] == 2.0
    again = tmp_path / "again.png"
    assert main(["edit", "--recipe", str(out.with_suffix(".json")), "--device", "cpu", "--quiet",
                 "--out", str(again)]) == 0
    assert (png_pixels(again) == png_pixels(out)).all()
