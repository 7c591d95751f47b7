"""Tiny models built here and saved in diffusers format, then loaded through the public loading path."""
import json

import pytest
import torch

from latentbasis.text import word_tokenizer

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
                  beta_end=0.012).save_pretrained(d / "scheduler")
    (d / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    return d
