"""FLUX.1 (diffusers' FluxTransformer2DModel): a rectified-flow transformer over 2x2-packed VAE latents, with
double-stream (text and image) blocks, then single-stream blocks, CLIP-pooled and T5 conditioning, and, in the
guidance-distilled models (dev), the guidance scale as an input.

    x        the VAE latents [C, H, W] (C = in_channels / 4; scaled and shifted by the VAE's config), unpacked: the
             network packs them into (H / 2)(W / 2) tokens of 4C numbers and unpacks its output, as FluxPipeline
             does (_pack_latents / _unpack_latents), with image ids (0, i, j) and zero text ids
    network  transformer(packed x, timestep = sigma T / 1000, guidance, pooled_projections = CLIP pooled,
             encoder_hidden_states = T5, txt_ids, img_ids) -> the velocity eps - x0 (flow matching)
    h        the image tokens [N, D] out of one block; default the middle of the whole stack (double blocks, then
             single blocks), any block by name (`latentbasis layers`)
    schedule FlowMatchEulerDiscreteScheduler's sigmas; with use_dynamic_shifting the shift at this model's token
             count, as FluxPipeline computes mu (latentbasis.schedules.flow_sigmas)
    size     the VAE's native resolution (its config's sample_size, 1024 px for FLUX.1: x is 16x128x128)

Guidance: `distilled_guidance` (default 3.5, FluxPipeline's guidance_scale) is the embedded guidance of a
guidance-distilled model (guidance_embeds); schnell-style models have none and refuse one. latentbasis' `guidance`
(classifier-free, two passes) is FluxPipeline's true_cfg_scale with the empty negative prompt.
"""
from __future__ import annotations

import torch

from .base import Conditioning
from ..errors import LatentBasisError
from ..schedules import flow_sigmas
from .transformer import TransformerModel
from ..validate import guidance

T5_MAX_SEQUENCE = 512      # FluxPipeline's default max_sequence_length
DEFAULT_GUIDANCE = 3.5     # FluxPipeline's default guidance_scale


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H / 2)(W / 2), 4C] (FluxPipeline._pack_latents)."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)


def unpack(tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """[B, (H / 2)(W / 2), 4C] -> [B, C, H, W] (FluxPipeline._unpack_latents)."""
    B, _, D = tokens.shape
    return tokens.reshape(B, H // 2, W // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, D // 4, H, W)


def image_ids(H: int, W: int, device, dtype=torch.float32) -> torch.Tensor:
    """[(H / 2)(W / 2), 3]: (0, row, column) of each packed token (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(H // 2, W // 2, 3)
    ids[..., 1] += torch.arange(H // 2)[:, None]
    ids[..., 2] += torch.arange(W // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


class FluxModel(TransformerModel):
    denoisers = ("FluxTransformer2DModel",)
    pipelines = ("FluxPipeline",)

    def __init__(self, transformer, scheduler_config: dict, *, name: str, model_hash: str, path: str | None = None,
                 text_encoders=(), tokenizers=(), vae=None, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32, max_memory: int | None = None):
        if len(text_encoders) != 2:
            raise LatentBasisError(f"{path or name}: a FLUX pipeline needs its CLIP text encoder and its T5 encoder "
                                   "(text_encoder/, text_encoder_2/) with their tokenizers")
        self.transformer, self.denoiser, self.vae = transformer, transformer, vae
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)
        self.scheduler_config = dict(scheduler_config)
        self.name, self.model_hash, self.path = name, model_hash, path
        self.device, self.dtype, self.max_memory = device, dtype, max_memory
        cfg = transformer.config
        size = int(vae.config.sample_size) if vae is not None else 1024
        scale = self.vae_scale_factor()
        side = 2 * (size // (scale * 2))
        self.x_shape = (int(cfg.in_channels) // 4, side, side)
        self.patch, self.n_tokens = 2, (side // 2) ** 2
        self.learned_sigma, self.num_classes = False, None
        self.flow, self.prediction_type, self.clip_sample = True, "flow", None
        self.sigmas = flow_sigmas(self.scheduler_config, image_seq_len=self.n_tokens)
        self.alphas = 1 - self.sigmas
        self.guidance_embeds = bool(cfg.get("guidance_embeds", False))
        self.distilled_guidance = DEFAULT_GUIDANCE if self.guidance_embeds else None
        blocks = self.layers()[1:]
        self.default_layer = blocks[len(blocks) // 2]
        self._prompt_cache: dict[str, Conditioning] = {}

    @classmethod
    def from_components(cls, parts: dict, scheduler_config: dict, pipeline_config: dict, **common):
        missing = [k for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2") if k not in parts]
        if missing:
            raise LatentBasisError(f"{common.get('path') or common.get('name')}: a FLUX pipeline needs its CLIP and "
                                   f"T5 text encoders with their tokenizers; {'/, '.join(missing)}/ is missing")
        return cls(parts["transformer"], scheduler_config, vae=parts.get("vae"), **common,
                   text_encoders=[parts["text_encoder"], parts["text_encoder_2"]],
                   tokenizers=[parts["tokenizer"], parts["tokenizer_2"]])

    def set_guidance(self, scale: float | None) -> None:
        """The embedded guidance of a guidance-distilled model (FluxPipeline's guidance_scale)."""
        if scale is None:
            return
        if not self.guidance_embeds:
            raise LatentBasisError(f"model {self.name!r} has no guidance embedding (a schnell-style FLUX): it takes "
                                   "no guidance scale")
        self.distilled_guidance = guidance(scale, "guidance scale")

    # ------------------------------------------------------------------ conditioning
    def encode_prompt(self, prompt: str | None) -> Conditioning:
        """FluxPipeline.encode_prompt for one prompt: CLIP's pooled output (77 tokens, or the tokenizer's
        model_max_length) and T5's last hidden states over 512 tokens."""
        prompt = prompt or ""
        if prompt not in self._prompt_cache:
            (clip_tok, t5_tok), (clip, t5) = self.tokenizers, self.text_encoders
            with torch.no_grad():
                ids = clip_tok(prompt, padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                               return_tensors="pt").input_ids.to(self.device)
                pooled = clip(ids, output_hidden_states=False).pooler_output
                ids = t5_tok(prompt, padding="max_length", max_length=T5_MAX_SEQUENCE, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
                hidden = t5(ids, output_hidden_states=False)[0]
            self._prompt_cache[prompt] = Conditioning({"encoder_hidden_states": hidden.float(),
                                                       "pooled_projections": pooled.float()})
        return self._prompt_cache[prompt]

    # ------------------------------------------------------------------ the network
    def network_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """sigma T / 1000: FluxPipeline passes its timesteps (sigma T) divided by 1000."""
        return (self.sigmas.to(t.device)[t.long()] * self.num_train_timesteps / 1000).float()

    def _call(self, x, t, kw: dict, params: dict | None = None):
        B, _, H, W = x.shape
        hidden = kw["encoder_hidden_states"]
        kwargs = dict(kw, timestep=self.network_timesteps(t).to(x.dtype), return_dict=False,
                      img_ids=image_ids(H, W, x.device, x.dtype),
                      txt_ids=torch.zeros(hidden.shape[1], 3, device=x.device, dtype=x.dtype))
        if self.guidance_embeds:
            kwargs["guidance"] = torch.full((B,), float(self.distilled_guidance), device=x.device,
                                            dtype=torch.float32)
        if params is None:
            out = self.transformer(pack(x), **kwargs)[0]
        else:
            out = torch.func.functional_call(self.transformer, params, (pack(x),), kwargs)[0]
        return unpack(out, H, W)

    def layers(self) -> list[str]:
        """The candidate layers for h: the token embedding, the double-stream blocks, then the single-stream ones."""
        tr = self.transformer
        return (["x_embedder"] + [f"transformer_blocks.{i}" for i in range(len(tr.transformer_blocks))]
                + [f"single_transformer_blocks.{i}" for i in range(len(tr.single_transformer_blocks))])

    def _default_condition(self):
        return self.encode_prompt("")

    # ------------------------------------------------------------------ the pipeline's latents
    def x_from_pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return unpack(latents, *self.x_shape[1:])

    def x_to_pipeline_latents(self, x: torch.Tensor) -> torch.Tensor:
        return pack(x)
