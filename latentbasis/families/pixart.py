"""PixArt-α and PixArt-Σ (diffusers' PixArtTransformer2DModel): a DiT over VAE latents with T5 cross-attention.

    x        VAE latents [4, H, W] (scaled by the VAE's scaling_factor), cut into p x p patches
    network  transformer(x, encoder_hidden_states = T5(prompt), encoder_attention_mask, timestep,
             added_cond_kwargs = {resolution, aspect_ratio}) -> output; with learned variance (out_channels =
             2 in_channels) its first in_channels channels are the prediction (eps), as the pipelines take them
    h        the image tokens [N, D] out of `transformer_blocks.{L // 2}` by default (latentbasis layers)
    schedule the scheduler config's VP betas and prediction_type (the pipelines ship DPM-Solver; latentbasis samples
             with DDIM on the same levels)

Prompts are encoded as PixArtSigmaPipeline / PixArtAlphaPipeline do (clean_caption off): T5 over the prompt padded to
max_sequence_length tokens (300 for Σ, 120 for α) with its attention mask, which also masks the cross-attention.
Where the transformer uses the additional conditions (PixArt-α at 1024 px) the resolution is the image's size in
pixels and the aspect ratio H / W, as PixArtAlphaPipeline passes them.
"""
from __future__ import annotations

import torch

from ..errors import LatentBasisError
from .base import Conditioning
from .transformer import TransformerModel

MAX_SEQUENCE = {"PixArtAlphaPipeline": 120}    # PixArtSigmaPipeline and others: 300


class PixArtModel(TransformerModel):
    denoisers = ("PixArtTransformer2DModel",)
    pipelines = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")

    def __init__(self, transformer, scheduler_config: dict, *, max_sequence: int = 300, **kw):
        super().__init__(transformer, scheduler_config, **kw)
        if len(self.text_encoders) != 1:
            raise LatentBasisError(f"{kw.get('name')}: a PixArt pipeline needs its T5 text encoder: text_encoder/ "
                                   "and tokenizer/")
        self.max_sequence = int(max_sequence)

    @classmethod
    def from_components(cls, parts: dict, scheduler_config: dict, pipeline_config: dict, **common):
        missing = [k for k in ("text_encoder", "tokenizer") if k not in parts]
        if missing:
            raise LatentBasisError(f"{common.get('path') or common.get('name')}: a PixArt pipeline needs its T5 "
                                   f"text encoder, and {'/, '.join(missing)}/ is missing")
        seq = MAX_SEQUENCE.get(str(pipeline_config.get("_class_name", "")), 300)
        return cls(parts["transformer"], scheduler_config, text_encoders=[parts["text_encoder"]],
                   tokenizers=[parts["tokenizer"]], vae=parts.get("vae"), max_sequence=seq, **common)

    def encode_prompt(self, prompt: str | None) -> Conditioning:
        prompt = prompt or ""
        if prompt not in self._prompt_cache:
            tok = self.tokenizers[0](prompt, padding="max_length", max_length=self.max_sequence, truncation=True,
                                     add_special_tokens=True, return_tensors="pt")
            mask = tok.attention_mask.to(self.device)
            with torch.no_grad():
                emb = self.text_encoders[0](tok.input_ids.to(self.device), attention_mask=mask)[0]
            self._prompt_cache[prompt] = Conditioning({"encoder_hidden_states": emb.float(),
                                                       "encoder_attention_mask": mask})
        return self._prompt_cache[prompt]

    def _call(self, x, t, kw: dict, params: dict | None = None):
        added = {"resolution": None, "aspect_ratio": None}
        if getattr(self.transformer, "use_additional_conditions", False):
            H, W = (s * self.vae_scale_factor() for s in self.x_shape[1:])
            dt = kw["encoder_hidden_states"].dtype
            added = {"resolution": torch.tensor([[H, W]], dtype=dt, device=x.device).expand(x.shape[0], 2),
                     "aspect_ratio": torch.tensor([[H / W]], dtype=dt, device=x.device).expand(x.shape[0], 1)}
        kwargs = dict(kw, timestep=self.network_timesteps(t), added_cond_kwargs=added, return_dict=False)
        if params is None:
            out = self.transformer(x, **kwargs)[0]
        else:
            out = torch.func.functional_call(self.transformer, params, (x,), kwargs)[0]
        return out[:, : self.x_shape[0]] if self.learned_sigma else out

    def _default_condition(self):
        return self.encode_prompt("")
