"""Diffusion transformers: DiT (class-conditional, diffusers' DiTTransformer2DModel) and Stable Diffusion 3
(SD3Transformer2DModel: joint text-image attention, two CLIP encoders and T5), trained with a VP noise schedule or
with flow matching.

    x        pixels or VAE latents [C, H, W]; the network cuts them into p x p patches (tokens)
    network  transformer(x, timestep, class_labels | encoder_hidden_states + pooled_projections) -> output;
             a flow model is told sigma * T as its timestep, as diffusers' flow pipelines do
    h        the image tokens [N, D] output by one transformer block, `transformer_blocks.{L // 2}` (the middle of
             the stack) by default; any block (or module) by name
    output   flow matching (FlowMatchEulerDiscreteScheduler config): the velocity eps - x0; VP: the config's
             prediction_type. A DiT with learned variance (out_channels = 2 in_channels) predicts eps in its first
             in_channels channels, which is what is used.
    schedule flow: shifted sigmas (latentbasis.schedules.flow_sigmas); VP: the config's betas

Class labels travel as the condition string "7" (latentbasis' CLI: --label 7); "" is the null label num_classes
(the extra row of the label embedding, used for classifier-free guidance). SD3 prompts are encoded as diffusers'
StableDiffusion3Pipeline does (the penultimate hidden states of both CLIP encoders, concatenated and padded to
T5's width, then T5's; the pooled embeddings of both CLIP encoders concatenated; zeros where T5 is absent).
"""
from __future__ import annotations

import torch

from ..errors import LatentBasisError
from ..schedules import check_prediction_type, flow_sigmas, vp_alphas_cumprod, vp_levels
from .base import Conditioning, DiffusionModel

SD3_MAX_SEQUENCE = 256   # StableDiffusion3Pipeline's default max_sequence_length of T5


def is_flow_schedule(config: dict) -> bool:
    """A flow-matching scheduler config: a FlowMatch* class, or (a config without its class name) shift and no
    betas."""
    name = str(config.get("_class_name", ""))
    return (name.startswith("FlowMatch") or config.get("prediction_type") == "flow"
            or (not name and "shift" in config and "beta_start" not in config))


class TransformerModel(DiffusionModel):
    """What every diffusion transformer here shares: patches, the schedule (VP or flow), blocks as layers, image
    tokens as h. Each kind is a subclass saying what conditions it (DiTModel, SD3Model; PixArt, FLUX)."""

    family = "transformer"

    def __init__(self, transformer, scheduler_config: dict, *, name: str, model_hash: str, path: str | None = None,
                 text_encoders=(), tokenizers=(), vae=None, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32, max_memory: int | None = None):
        self.transformer, self.vae = transformer, vae
        self.denoiser = transformer
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)
        self.scheduler_config = dict(scheduler_config)
        self.name, self.model_hash, self.path = name, model_hash, path
        self.device, self.dtype, self.max_memory = device, dtype, max_memory
        self.flow = is_flow_schedule(self.scheduler_config)
        if self.flow:
            self.sigmas = flow_sigmas(self.scheduler_config)
            self.alphas = 1 - self.sigmas
            self.prediction_type = "flow"
            self.clip_sample = None
        else:
            self.alphas, self.sigmas = vp_levels(vp_alphas_cumprod(self.scheduler_config))
            self.prediction_type = check_prediction_type(self.scheduler_config.get("prediction_type", "epsilon"))
            c = self.scheduler_config
            self.clip_sample = float(c.get("clip_sample_range", 1.0)) if c.get("clip_sample", False) else None
        cfg = transformer.config
        s = cfg.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        self.x_shape = (int(cfg.in_channels), int(h), int(w))
        self.patch = int(cfg.patch_size)
        self.n_tokens = (self.x_shape[1] // self.patch) * (self.x_shape[2] // self.patch)
        out = cfg.get("out_channels") or cfg.in_channels
        self.learned_sigma = int(out) == 2 * int(cfg.in_channels)
        self.num_classes = None
        self.default_layer = f"transformer_blocks.{len(transformer.transformer_blocks) // 2}"
        self._prompt_cache: dict[str, Conditioning] = {}

    @classmethod
    def from_components(cls, parts: dict, scheduler_config: dict, pipeline_config: dict, **common):
        encoders = [parts[k] for k in ("text_encoder", "text_encoder_2", "text_encoder_3") if k in parts]
        tokenizers = [parts[k] for k in ("tokenizer", "tokenizer_2", "tokenizer_3") if k in parts]
        if len(encoders) != len(tokenizers):
            raise LatentBasisError(f"{common.get('path')}: every text encoder needs its tokenizer (found "
                                   f"{len(encoders)} text encoder(s) and {len(tokenizers)} tokenizer(s))")
        return cls(parts["transformer"], scheduler_config, text_encoders=encoders, tokenizers=tokenizers,
                   vae=parts.get("vae"), **common)

    # ------------------------------------------------------------------ conditioning
    @property
    def conditional(self) -> bool:
        return bool(self.text_encoders)

    @property
    def conditioning(self) -> str | None:
        return "text" if self.text_encoders else None

    def encode_prompt(self, prompt: str | None) -> Conditioning | None:
        prompt = prompt or ""
        if prompt not in self._prompt_cache:
            with torch.no_grad():
                self._prompt_cache[prompt] = self._encode(prompt)
        return self._prompt_cache[prompt]

    def _encode(self, prompt: str) -> Conditioning:
        raise NotImplementedError

    def _tokens(self, tokenizer, prompt: str, max_length: int) -> torch.Tensor:
        return tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    # ------------------------------------------------------------------ the network
    def _call(self, x, t, kw: dict, params: dict | None = None):
        kwargs = dict(kw, timestep=self.network_timesteps(t), return_dict=False)
        if params is None:
            out = self.transformer(x, **kwargs)[0]
        else:
            out = torch.func.functional_call(self.transformer, params, (x,), kwargs)[0]
        return out[:, : self.x_shape[0]] if self.learned_sigma else out

    def network(self, x, t, cond=None):
        x, t = x.to(self.device, self.dtype), t.to(self.device)
        cond = cond if cond is not None else self._default_condition()
        kw = cond.batch(x.shape[0], self.dtype) if cond is not None else {}
        with torch.no_grad():
            return self._call(x, t, kw)

    def layers(self) -> list[str]:
        """The candidate layers for h: the patch embedding, then every transformer block, in forward order."""
        return ["pos_embed"] + [f"transformer_blocks.{i}" for i in range(len(self.transformer.transformer_blocks))]

    def feature_select(self, output) -> torch.Tensor:
        return self._image_tokens(output)

    def _probe(self) -> None:
        cond = self.encode_prompt("") if self.conditional else None
        self._call(torch.zeros(1, *self.x_shape, device=self.device, dtype=self.dtype),
                   torch.zeros(1, dtype=torch.long, device=self.device),
                   cond.batch(1, self.dtype) if cond is not None else {})

    def _image_tokens(self, output) -> torch.Tensor:
        """A block's image tokens [B, N, D]: the output itself, or, for a joint-attention block that returns
        (text tokens, image tokens), the element with the image's N tokens (the last when both have N)."""
        if isinstance(output, torch.Tensor):
            return output
        tensors = [o for o in output if isinstance(o, torch.Tensor)] if isinstance(output, (tuple, list)) else []
        image = [o for o in tensors if o.dim() == 3 and o.shape[1] == self.n_tokens]
        if image:
            return image[-1]
        raise LatentBasisError("the layer's output holds no image tokens: pick another layer (latentbasis layers)")

    def _network_call(self, x, t, kw, params=None):
        return self._call(x, t, kw, params)

    def _default_condition(self):
        return None


class DiTModel(TransformerModel):
    """DiT (DiTTransformer2DModel): class-conditional; "" is the null label of classifier-free guidance."""

    denoisers = ("DiTTransformer2DModel",)
    pipelines = ("DiTPipeline",)

    def __init__(self, transformer, scheduler_config: dict, **kw):
        super().__init__(transformer, scheduler_config, **kw)
        self.num_classes = int(transformer.config.num_embeds_ada_norm)

    @property
    def conditional(self) -> bool:
        return True

    @property
    def conditioning(self) -> str | None:
        return "class"

    def _default_condition(self):
        return self.encode_prompt("")

    def _encode(self, label: str) -> Conditioning:
        n = self.num_classes
        if label == "":
            value = n   # the null label: the unconditional branch of classifier-free guidance
        else:
            try:
                value = int(label)
            except ValueError:
                raise LatentBasisError(f"model {self.name!r} is class-conditional: give a class label 0..{n - 1} "
                                       "(a label), not a prompt") from None
            if not 0 <= value < n:
                raise LatentBasisError(f"class label {value} is out of range: model {self.name!r} has classes "
                                       f"0..{n - 1}")
        return Conditioning({"class_labels": torch.tensor([value], dtype=torch.long, device=self.device)})



class SD3Model(TransformerModel):
    """Stable Diffusion 3 (SD3Transformer2DModel): joint text-image attention, two CLIP encoders and T5 (optional),
    prompts encoded as StableDiffusion3Pipeline does."""

    denoisers = ("SD3Transformer2DModel",)
    pipelines = ("StableDiffusion3Pipeline",)

    def __init__(self, transformer, scheduler_config: dict, **kw):
        super().__init__(transformer, scheduler_config, **kw)
        if len(self.text_encoders) < 2:
            raise LatentBasisError(f"{kw.get('name')}: an SD3-style transformer needs text_encoder/, text_encoder_2/ "
                                   "and their tokenizers (text_encoder_3/ with T5 is optional)")

    def _encode(self, prompt: str) -> Conditioning:
        """StableDiffusion3Pipeline.encode_prompt for one prompt (clip_skip None)."""
        hidden, pooled = [], []
        max_clip = self.tokenizers[0].model_max_length
        for tok, enc in zip(self.tokenizers[:2], self.text_encoders[:2]):
            out = enc(self._tokens(tok, prompt, max_clip), output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        joint = int(self.transformer.config.joint_attention_dim)
        if len(self.text_encoders) > 2:
            t5 = self.text_encoders[2](self._tokens(self.tokenizers[2], prompt, SD3_MAX_SEQUENCE))[0]
        else:
            t5 = torch.zeros(1, SD3_MAX_SEQUENCE, joint, device=self.device, dtype=clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Conditioning({"encoder_hidden_states": torch.cat([clip, t5], dim=-2).float(),
                             "pooled_projections": torch.cat(pooled, dim=-1).float()})
