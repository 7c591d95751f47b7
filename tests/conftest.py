"""Tiny models built here and saved in diffusers format, then loaded through the public loading path.

Tests marked `slow` (end to end: a real browser, processes killed while they write, an installed wheel, bad input
in real processes) run in CI (CI is set there) and with LATENTBASIS_SLOW=1 or `-m slow`; a developer's default run
skips them, saying so, to stay under ten minutes on two cores."""
import json
import os

import pytest
import torch

from latentbasis.text import word_tokenizer


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end test, run in CI and with LATENTBASIS_SLOW=1 or -m slow")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI") or os.environ.get("LATENTBASIS_SLOW") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: CI runs it; here LATENTBASIS_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


WORDS = ["a", "the", "digit", "number", "handwritten", "one", "two", "seven", "cat"]


def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)


def ddpm_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_unet")
    tiny_unet().save_pretrained(d)
    ddpm_scheduler().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def other_unet_dir(tmp_path_factory):
    """Same architecture, other weights: a basis from it must be refused by tiny_unet."""
    d = tmp_path_factory.mktemp("other_unet")
    m = tiny_unet()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)
    m.save_pretrained(d)
    ddpm_scheduler().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """An SD-shaped pipeline folder: UNet2DConditionModel + AutoencoderKL + CLIPTextModel + tokenizer + scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    d = tmp_path_factory.mktemp("tiny_sd")
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         norm_num_groups=4, attention_head_dim=4).save_pretrained(d / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, sample_size=16).save_pretrained(d / "vae")
    tok = word_tokenizer(WORDS, max_length=8)
    tok.save_pretrained(d / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=8, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2)).save_pretrained(d / "text_encoder")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(d / "scheduler")   # Stable Diffusion's own settings
    (d / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    return d


def save_pixel_model(d, prediction_type="epsilon"):
    tiny_unet().save_pretrained(d)
    from diffusers import DDPMScheduler

    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  prediction_type=prediction_type).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def pixel_dirs(tmp_path_factory, tiny_unet_dir):
    """Tiny pixel U-Nets (the same weights) whose scheduler configs say epsilon, v_prediction, sample."""
    out = {"epsilon": tiny_unet_dir}
    for p in ("v_prediction", "sample"):
        out[p] = save_pixel_model(tmp_path_factory.mktemp(f"pixel_{p}"), p)
    return out


@pytest.fixture(scope="session")
def tiny_sd_v_dir(tmp_path_factory, tiny_sd_dir):
    """The SD-shaped pipeline with a v-prediction scheduler (Stable Diffusion 2.x at 768 is such a model)."""
    import shutil

    d = tmp_path_factory.mktemp("tiny_sd_v") / "m"
    shutil.copytree(tiny_sd_dir, d)
    cfg = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    cfg["prediction_type"] = "v_prediction"
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    return d


def build_sdxl(d, with_second_encoder=True):
    """An SDXL-shaped pipeline folder: a U-Net with addition_embed_type "text_time", CLIPTextModel and
    CLIPTextModelWithProjection (their penultimate hidden states concatenated: cross_attention_dim 16 + 16), two
    tokenizers, a VAE and a scaled-linear DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(1)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                         norm_num_groups=4, attention_head_dim=(2, 4), use_linear_projection=True,
                         addition_embed_type="text_time", addition_time_embed_dim=4,
                         projection_class_embeddings_input_dim=4 * 6 + 12).save_pretrained(d / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, sample_size=16).save_pretrained(d / "vae")
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    for i, key in enumerate(("", "_2")):
        tok = word_tokenizer(WORDS, max_length=8)
        tok.save_pretrained(d / f"tokenizer{key}")
        if key and not with_second_encoder:
            continue
        cls = CLIPTextModelWithProjection if key else CLIPTextModel
        cfg = CLIPTextConfig(vocab_size=len(tok), projection_dim=12, **text)
        torch.manual_seed(10 + i)
        cls(cfg).save_pretrained(d / f"text_encoder{key}")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(d / "scheduler")   # SDXL's own settings
    (d / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    return d


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    return build_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


def spread_weights(net, seed: int, scale: float = 2.0):
    """Random weights of std scale / sqrt(fan_in) for every matrix: a transformer as initialised (adaLN-zero,
    small residual branches) is nearly linear with a flat spectrum, which tells singular vectors apart poorly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * scale / p[0].numel() ** 0.5)


def build_dit(d, flow=True, shift=1.0, learned_sigma=False):
    """A tiny class-conditional DiT (3 classes, 8x8 pixels, patch 2: 16 tokens), flow-matching or DDPM."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(2)
    net = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1,
                                out_channels=2 if learned_sigma else 1, num_layers=3, sample_size=8, patch_size=2,
                                num_embeds_ada_norm=3, norm_num_groups=1)
    spread_weights(net, seed=5)
    net.save_pretrained(d)
    if flow:
        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).save_pretrained(d)
    else:
        DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_dit_dir(tmp_path_factory):
    return build_dit(tmp_path_factory.mktemp("tiny_dit"), flow=True, shift=3.0)


@pytest.fixture(scope="session")
def tiny_dit_vp_dir(tmp_path_factory):
    return build_dit(tmp_path_factory.mktemp("tiny_dit_vp"), flow=False, learned_sigma=True)


def build_sd3(d, with_t5=True, sd35=False):
    """An SD3-shaped pipeline folder: SD3Transformer2DModel (joint attention), CLIP-L and CLIP-G with projection,
    T5, their tokenizers, a VAE (16 latent channels) and a flow-matching scheduler with shift 3. sd35: as SD3.5's
    configurations, RMS-normed queries and keys (qk_norm) and a dual (second, image-only) attention in block 0."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(3)
    net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                pooled_projection_dim=24, out_channels=4, pos_embed_max_size=16,
                                **(dict(qk_norm="rms_norm", dual_attention_layers=(0,)) if sd35 else {}))
    spread_weights(net, seed=6, scale=1.0)
    net.save_pretrained(d / "transformer")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, sample_size=16, shift_factor=0.1, scaling_factor=1.5).save_pretrained(d / "vae")
    parts = {"transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
    for i, key in enumerate(("", "_2")):
        tok = word_tokenizer(WORDS, max_length=8)
        tok.save_pretrained(d / f"tokenizer{key}")
        torch.manual_seed(20 + i)
        CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=8 + 8 * i, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            projection_dim=12)).save_pretrained(d / f"text_encoder{key}")
        parts[f"tokenizer{key}"] = ["transformers", "PreTrainedTokenizerFast"]
        parts[f"text_encoder{key}"] = ["transformers", "CLIPTextModelWithProjection"]
    if with_t5:
        tok = word_tokenizer(WORDS, max_length=8)
        tok.save_pretrained(d / "tokenizer_3")
        torch.manual_seed(30)
        T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                pad_token_id=0, eos_token_id=2)).save_pretrained(d / "text_encoder_3")
        parts["tokenizer_3"] = ["transformers", "PreTrainedTokenizerFast"]
        parts["text_encoder_3"] = ["transformers", "T5EncoderModel"]
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(d / "scheduler")
    (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline", **parts}))
    return d


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("tiny_sd3"))


@pytest.fixture(scope="session")
def tiny_sd35_dir(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("tiny_sd35"), sd35=True)


def build_pixart(d, pipeline="PixArtSigmaPipeline", learned_sigma=True):
    """A PixArt-shaped pipeline folder: PixArtTransformer2DModel (adaLN-single, T5 cross-attention, learned
    variance), a T5 encoder with its tokenizer, a VAE and a VP scheduler (scaled_linear betas, epsilon)."""
    from diffusers import AutoencoderKL, DDIMScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(4)
    net = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                   out_channels=8 if learned_sigma else 4, num_layers=2, cross_attention_dim=16,
                                   sample_size=8, patch_size=2, caption_channels=32, norm_type="ada_norm_single",
                                   num_embeds_ada_norm=1000, use_additional_conditions=False)
    spread_weights(net, seed=7, scale=1.0)
    net.save_pretrained(d / "transformer")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, sample_size=16, scaling_factor=1.5).save_pretrained(d / "vae")
    tok = word_tokenizer(WORDS, max_length=8)
    tok.save_pretrained(d / "tokenizer")
    torch.manual_seed(31)
    T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                            pad_token_id=0, eos_token_id=2)).save_pretrained(d / "text_encoder")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False, set_alpha_to_one=True).save_pretrained(d / "scheduler")
    parts = {"transformer": ["diffusers", "PixArtTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDIMScheduler"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "text_encoder": ["transformers", "T5EncoderModel"]}
    (d / "model_index.json").write_text(json.dumps({"_class_name": pipeline, **parts}))
    return d


@pytest.fixture(scope="session")
def tiny_pixart_dir(tmp_path_factory):
    return build_pixart(tmp_path_factory.mktemp("tiny_pixart"))


def build_flux(d, guidance_embeds=True, with_t5=True):
    """A FLUX-shaped pipeline folder: FluxTransformer2DModel (one double-stream and two single-stream blocks over
    2x2-packed latents, rotary ids, guidance embedding as in dev), CLIP (pooled) and T5 with their tokenizers, a VAE
    (4 latent channels, native 16 px: x is 4x8x8, 16 tokens) and the flow-matching scheduler with dynamic shift."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(5)
    net = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                 pooled_projection_dim=16, guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4))
    spread_weights(net, seed=8, scale=1.0)
    net.save_pretrained(d / "transformer")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, sample_size=16, shift_factor=0.1, scaling_factor=1.5).save_pretrained(d / "vae")
    tok = word_tokenizer(WORDS, max_length=8)
    tok.save_pretrained(d / "tokenizer")
    torch.manual_seed(21)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=8, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2)).save_pretrained(d / "text_encoder")
    parts = {"transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"]}
    tok.save_pretrained(d / "tokenizer_2")
    if with_t5:
        torch.manual_seed(32)
        T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                pad_token_id=0, eos_token_id=2)).save_pretrained(d / "text_encoder_2")
        parts["text_encoder_2"] = ["transformers", "T5EncoderModel"]
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                    base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
                                    max_shift=1.15).save_pretrained(d / "scheduler")
    (d / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", **parts}))
    return d


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("tiny_flux"))
