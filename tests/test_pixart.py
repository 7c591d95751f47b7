"""The PixArt family (families/pixart.py) on a tiny random PixArt-Σ pipeline folder: the basis against the dense
Jacobian, prompts and sampling against diffusers' PixArtSigmaPipeline, from_pipeline and edit_callback."""
import pytest
import torch
from helpers import assert_matches_dense, dense_svd, own_edit, without_part

from latentbasis import LatentBasisError, latent_basis, load_model
from latentbasis.pipelines import edit_callback, from_pipeline
from latentbasis.sampling import denoise, initial_noise

PROMPT = "the digit seven"


def _pipe(folder):
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, x_T, steps=8, **kw):
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=3.0, latents=x_T.clone(), eta=0.0,
                output_type="latent", use_resolution_binning=False, clean_caption=False, **kw).images.cpu()


def test_basis_matches_the_dense_jacobian(tiny_pixart_dir):
    m = load_model(str(tiny_pixart_dir), device="cpu")
    assert m.prediction_type == "epsilon" and m.conditioning == "text" and m.learned_sigma
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(7))
    U, S, Vh = dense_svd(m.features(500, PROMPT), x)
    assert_matches_dense(latent_basis(m, x, timestep=500, k=4, prompt=PROMPT, tol=1e-5), U, S, Vh, 4)


def test_prompts_and_sampling_match_the_pixart_sigma_pipeline(tiny_pixart_dir):
    """T5 embeddings and masks as the pipeline encodes them; the same initial noise, DDIM scheduler, 8 steps and
    guidance 3: latentbasis' sampler gives the pipeline's latents to 1e-4."""
    m = load_model(str(tiny_pixart_dir), device="cpu")
    pipe = _pipe(tiny_pixart_dir)
    emb, mask, neg, neg_mask = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True, device="cpu",
                                                  clean_caption=False)
    c, e = m.encode_prompt(PROMPT).inputs, m.encode_prompt("").inputs
    torch.testing.assert_close(c["encoder_hidden_states"], emb, rtol=0, atol=1e-6)
    torch.testing.assert_close(e["encoder_hidden_states"], neg, rtol=0, atol=1e-6)
    assert torch.equal(c["encoder_attention_mask"], mask) and torch.equal(e["encoder_attention_mask"], neg_mask)
    pipe.scheduler.set_timesteps(8)
    grid = pipe.scheduler.timesteps.tolist()
    x_T = initial_noise(m, 3)[None]
    ref = _run(pipe, x_T)
    ours = denoise(m, x_T, grid, PROMPT, 3.0, clip_denoised=False)
    assert float((ref - ours).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))


def test_from_pipeline_and_an_edit_inside_its_call(tiny_pixart_dir):
    """from_pipeline gives load_model's basis; the old-style callback(step, t, latents) that PixArt's pipelines call
    edits in place and equals latentbasis' own edit to 1e-4."""
    pipe = _pipe(tiny_pixart_dir)
    m = from_pipeline(pipe)
    assert m.max_sequence == 300
    pipe.scheduler.set_timesteps(8)
    x_T = initial_noise(m, 3)[None]
    b, _, angle, ours = own_edit(m, x_T, pipe.scheduler.timesteps.tolist(), PROMPT, 3.0, folder=tiny_pixart_dir)
    assert angle < 0.1
    cb = edit_callback(b, 0, 2.0, prompt=PROMPT, n_iter=4, pipe=pipe)
    theirs = _run(pipe, x_T, callback=cb)
    assert cb.fired and float((theirs - ours).abs().max()) < 1e-4
    assert float((theirs - _run(pipe, x_T)).abs().max()) > 1e-2


def test_a_pixart_folder_without_its_t5_is_refused(tiny_pixart_dir, tmp_path):
    with pytest.raises(LatentBasisError, match="T5 text encoder"):
        load_model(str(without_part(tiny_pixart_dir, "text_encoder", tmp_path)), device="cpu")
