"""Every U-Net family, loaded from a folder through the public loader: the basis against the SVD of the dense
Jacobian, and one DDIM run against diffusers' own pipeline (the independent reference for the prediction-type and
conditioning arithmetic): pixel eps / v / sample, Stable-Diffusion-style eps / v, SDXL-style."""
import pytest
import torch
from helpers import assert_matches_dense, dense_svd

from latentbasis import load_model
from latentbasis.basis import latent_basis
from latentbasis.sampling import denoise, initial_noise

FAMILIES = ["pixel-epsilon", "pixel-v_prediction", "pixel-sample", "sd-epsilon", "sd-v_prediction", "sdxl"]
TRANSFORMERS = ["dit-flow", "dit-vp", "sd3", "sd35"]
PROMPT = "the digit seven"


@pytest.fixture(scope="module")
def folders(pixel_dirs, tiny_sd_dir, tiny_sd_v_dir, tiny_sdxl_dir, tiny_dit_dir, tiny_dit_vp_dir, tiny_sd3_dir,
            tiny_sd35_dir):
    return {"pixel-epsilon": pixel_dirs["epsilon"], "pixel-v_prediction": pixel_dirs["v_prediction"],
            "pixel-sample": pixel_dirs["sample"], "sd-epsilon": tiny_sd_dir, "sd-v_prediction": tiny_sd_v_dir,
            "sdxl": tiny_sdxl_dir, "dit-flow": tiny_dit_dir, "dit-vp": tiny_dit_vp_dir, "sd3": tiny_sd3_dir,
            "sd35": tiny_sd35_dir}


def _condition(family: str):
    return None if family.startswith("pixel") else "1" if family.startswith("dit") else PROMPT


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_family_reads_its_prediction_type_and_conditioning(family, folders):
    m = load_model(str(folders[family]))
    assert m.prediction_type == (family.split("-")[1] if "-" in family else "epsilon")
    assert m.conditional == (not family.startswith("pixel"))
    if family == "sdxl":
        c = m.encode_prompt(PROMPT).inputs
        assert set(c) == {"encoder_hidden_states", "text_embeds", "time_ids"}
        assert c["encoder_hidden_states"].shape == (1, 8, 32) and c["text_embeds"].shape == (1, 12)
        assert c["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]   # (H, W, 0, 0, H, W) of 16x16 images
        assert not m.encode_prompt("").inputs["text_embeds"].any()            # force_zeros_for_empty_prompt


@pytest.mark.parametrize("family", FAMILIES + TRANSFORMERS)
def test_basis_matches_the_dense_jacobian(family, folders):
    m = load_model(str(folders[family]))
    prompt = _condition(family)
    ts, k = 500, 4
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(7))
    U, S, Vh = dense_svd(m.features(ts, prompt), x)
    b = latent_basis(m, x, timestep=ts, k=k, prompt=prompt, tol=1e-5)
    assert_matches_dense(b, U, S, Vh, k)


def _ddim(folder, set_alpha_to_one=True):
    from diffusers import DDIMScheduler

    from latentbasis.loading import read_folder

    cfg = read_folder(folder)[1]
    return DDIMScheduler.from_config({**cfg, "set_alpha_to_one": set_alpha_to_one})


@pytest.mark.parametrize("family", FAMILIES)
def test_ddim_sampling_matches_the_diffusers_pipeline(family, folders):
    """Same initial noise (seed 3 on a CPU generator), the pipeline's own timesteps (DDIMScheduler, eta = 0), 8 steps:
    latentbasis' sampler gives the pipeline's output to 1e-4."""
    from diffusers import DDIMPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    m = load_model(str(folders[family]))
    sched = _ddim(folders[family])
    sched.set_timesteps(8)
    grid = sched.timesteps.tolist()
    x_T = initial_noise(m, 3)[None]
    gen = torch.Generator().manual_seed(3)
    if family.startswith("pixel"):
        pipe = DDIMPipeline(unet=m.unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(generator=gen, num_inference_steps=8, eta=0.0, use_clipped_model_output=True,
                   output_type="pt").images                                 # (x0 / 2 + 0.5) clamped to [0, 1]
        ours = (denoise(m, x_T, grid) / 2 + 0.5).clamp(0, 1)
    else:
        parts = dict(vae=m.vae, text_encoder=m.text_encoders[0], tokenizer=m.tokenizers[0], unet=m.unet,
                     scheduler=sched)
        if family == "sdxl":
            pipe = StableDiffusionXLPipeline(text_encoder_2=m.text_encoders[1], tokenizer_2=m.tokenizers[1],
                                             force_zeros_for_empty_prompt=True, add_watermarker=False, **parts)
        else:
            pipe = StableDiffusionPipeline(safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False, **parts)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(PROMPT, num_inference_steps=8, guidance_scale=3.0, latents=x_T.clone(), eta=0.0,
                   output_type="latent").images
        ours = denoise(m, x_T, grid, PROMPT, 3.0, clip_denoised=False)
    ref = ref.cpu()    # the pipeline's output stays on the model's device (LATENTBASIS_DEVICE=cuda), ours on the CPU
    assert ref.shape == ours.shape
    assert float((ref - ours).abs().max()) < 1e-4


def test_prediction_types_give_the_same_sampler_on_the_gaussian_model():
    """The optimal network of one Gaussian, emitting eps, v or x0: every conversion lands on the same DDIM
    trajectory and the same guidance edit (to float64 rounding)."""
    from latentbasis import GaussianModel
    from latentbasis.editing import guidance_edit
    from latentbasis.sampling import sample_trajectory

    trajs, edits = {}, {}
    for p in ("epsilon", "v_prediction", "sample"):
        g = GaussianModel.random(x_shape=(1, 4, 4), seed=2, prediction_type=p)
        trajs[p] = sample_trajectory(g, 5, num_steps=20)
        edits[p] = guidance_edit(g, trajs[p].xs[5], trajs[p].timesteps[5], torch.ones(1, 1, 4, 4), n_iter=3)
    for p in ("v_prediction", "sample"):
        torch.testing.assert_close(trajs[p].xs, trajs["epsilon"].xs, rtol=0, atol=1e-5)
        torch.testing.assert_close(edits[p], edits["epsilon"], rtol=0, atol=1e-5)


def test_a_transformer_family_reads_its_schedule_and_conditioning(folders):
    dit, vp, sd3 = (load_model(str(folders[f])) for f in TRANSFORMERS[:3])
    assert dit.flow and dit.prediction_type == "flow" and dit.conditioning == "class" and dit.num_classes == 3
    assert float(dit.sigmas[-1]) == 1.0 and float(dit.alphas[-1]) == 0.0                    # pure noise at T-1
    u = 500 / 1000
    assert float(dit.sigmas[499]) == pytest.approx(3 * u / (1 + 2 * u))                     # shift 3
    assert not vp.flow and vp.learned_sigma and vp.prediction_type == "epsilon"
    assert dit.default_layer == "transformer_blocks.1" and dit.layers()[0] == "pos_embed"
    assert sd3.conditioning == "text" and sd3.x_is_latent and sd3.pixel_size() == (3, 16)
    h = dit.features(500, "2")(torch.zeros(dit.x_shape))
    assert h.shape == (dit.n_tokens, 16)                                                    # tokens x width


def test_sd3_prompts_are_encoded_as_the_diffusers_pipeline_does(folders):
    from diffusers import StableDiffusion3Pipeline

    m = load_model(str(folders["sd3"]))
    pipe = StableDiffusion3Pipeline(transformer=m.transformer, scheduler=None, vae=m.vae,
                                    text_encoder=m.text_encoders[0], tokenizer=m.tokenizers[0],
                                    text_encoder_2=m.text_encoders[1], tokenizer_2=m.tokenizers[1],
                                    text_encoder_3=m.text_encoders[2], tokenizer_3=m.tokenizers[2])
    emb, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, device=m.device,
                                                      do_classifier_free_guidance=True)
    ours, empty = m.encode_prompt(PROMPT).inputs, m.encode_prompt("").inputs
    torch.testing.assert_close(ours["encoder_hidden_states"], emb, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["pooled_projections"], pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(empty["encoder_hidden_states"], neg, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", TRANSFORMERS)
def test_transformer_sampling_matches_diffusers(family, folders):
    """The same noise and levels through diffusers: its FlowMatchEulerDiscreteScheduler (fed latentbasis' grid as
    unshifted sigmas, so its shift gives the same levels) for the flow DiT, the whole StableDiffusion3Pipeline for
    SD3, its DDIMScheduler for the DDPM DiT with learned variance; classifier-free guidance 2.5 throughout."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from latentbasis.loading import read_folder
    from latentbasis.sampling import trajectory_grid

    m = load_model(str(folders[family]))
    cfg, g, cond = read_folder(folders[family])[1], 2.5, _condition(family)
    x_T = initial_noise(m, 4)[None]
    if family == "dit-vp":
        sched = DDIMScheduler.from_config({**cfg, "set_alpha_to_one": True})
        sched.set_timesteps(8)
        grid = sched.timesteps.tolist()
    else:
        grid = trajectory_grid(m.num_train_timesteps, 8)
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    ours = denoise(m, x_T, grid, cond, g, clip_denoised=False)
    if family in ("sd3", "sd35"):
        pipe = StableDiffusion3Pipeline(transformer=m.transformer, scheduler=sched, vae=m.vae,
                                        text_encoder=m.text_encoders[0], tokenizer=m.tokenizers[0],
                                        text_encoder_2=m.text_encoders[1], tokenizer_2=m.tokenizers[1],
                                        text_encoder_3=m.text_encoders[2], tokenizer_3=m.tokenizers[2])
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(PROMPT, num_inference_steps=len(grid), guidance_scale=g, latents=x_T.clone(),
                   sigmas=[(t + 1) / m.num_train_timesteps for t in grid], output_type="latent").images
    else:
        if family == "dit-flow":
            sched.set_timesteps(sigmas=[(t + 1) / m.num_train_timesteps for t in grid])
        x = x_T.clone()
        label, null = torch.tensor([1]), torch.tensor([m.num_classes])
        for t in sched.timesteps:
            with torch.no_grad():
                out = [m.transformer(x, timestep=t.reshape(1), class_labels=c).sample[:, :1] for c in (label, null)]
            step = {"use_clipped_model_output": True} if family == "dit-vp" else {}   # as latentbasis clips
            x = sched.step(out[1] + g * (out[0] - out[1]), t, x, **step).prev_sample
        ref = x
    # 1e-4 of the sample's scale: diffusers steps in float32, latentbasis in float64, and these random transformers
    # reach |x| ~ 6 after guidance
    ref = ref.cpu()
    assert float((ref - ours).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_keeping_only_the_feature_weights_gives_the_same_basis(family, folders):
    """keep_feature_weights frees what the feature map never runs (a U-Net's up blocks, the blocks after h) and the
    basis stays the same; sampling, which needs the whole network, is refused with one message."""
    from latentbasis import LatentBasisError
    from latentbasis.sampling import sample_to

    whole, kept = load_model(str(folders[family]), device="cpu"), load_model(str(folders[family]), device="cpu")
    x = torch.randn(whole.x_shape, generator=torch.Generator().manual_seed(3))
    before = sum(p.numel() for p in kept.denoiser.parameters() if p.device.type != "meta")
    freed = kept.keep_feature_weights()
    after = sum(p.numel() for p in kept.denoiser.parameters() if p.device.type != "meta")
    assert freed > 0 and after < before
    a = latent_basis(whole, x, timestep=500, k=3, prompt=_condition(family))
    b = latent_basis(kept, x, timestep=500, k=3, prompt=_condition(family))
    assert torch.allclose(a.latent, b.latent, atol=1e-5) and torch.allclose(a.singular_values, b.singular_values)
    with pytest.raises(LatentBasisError, match="needs weights this model freed"):
        sample_to(kept, seed=0, t=0.6, num_steps=3)
    with pytest.raises(LatentBasisError, match="needs weights this model freed"):
        latent_basis(kept, x, timestep=500, k=2, space="x0")
