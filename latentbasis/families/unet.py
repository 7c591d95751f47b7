"""U-Net diffusion models: pixel DDPMs (UNet2DModel), Stable Diffusion 1.x / 2.x (UNet2DConditionModel + CLIP +
VAE) and SDXL (two text encoders, pooled embeddings and time ids as added conditioning).

    x        pixels [C, H, W] in [-1, 1], or VAE latents (z - shift_factor) * scaling_factor
    network  unet(x, t, encoder_hidden_states=..., added_cond_kwargs={"text_embeds", "time_ids"}) -> output
    h        the output of `mid_block` (the bottleneck, "h-space"; Park et al. 2023), or any named module
    output   the scheduler config's prediction_type (epsilon, v_prediction, sample)
    schedule the scheduler config's own betas (latentbasis.schedules.vp_alphas_cumprod)

Prompts are encoded as diffusers' pipelines do: StableDiffusionPipeline takes the text encoder's last hidden state;
StableDiffusionXLPipeline concatenates both encoders' penultimate hidden states, takes the pooled (projected)
embedding of the second, and time ids (H, W, 0, 0, H, W) of the default image size; with the pipeline's
force_zeros_for_empty_prompt (SDXL's default) the unconditional embedding is zeros, not the encoding of "".
"""
from __future__ import annotations

import copy
import threading
import warnings

import torch

from .base import Conditioning, DiffusionModel
from ..errors import LatentBasisError
from ..schedules import check_prediction_type, vp_alphas_cumprod, vp_levels
from ..validate import MAX_X_ELEMENTS

_TRACE_LOCK = threading.Lock()
CHANNELS_LAST_MAX_BYTES = 512 * 2**20


class UNetModel(DiffusionModel):
    family = "unet"
    denoisers = ("UNet2DModel", "UNet2DConditionModel")
    pipelines = ("DDPMPipeline", "DDIMPipeline", "StableDiffusionPipeline", "StableDiffusionXLPipeline")
    default_layer = "mid_block"

    def __init__(self, unet, scheduler_config: dict, *, name: str, model_hash: str, path: str | None = None,
                 text_encoders=(), tokenizers=(), vae=None, force_zeros_for_empty_prompt: bool = False,
                 device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                 max_memory: int | None = None):
        self.unet, self.vae = unet, vae
        self.denoiser = unet
        self.text_encoders, self.tokenizers = list(text_encoders), list(tokenizers)
        self.scheduler_config = dict(scheduler_config)
        self.name, self.model_hash, self.path = name, model_hash, path
        self.device, self.dtype, self.max_memory = device, dtype, max_memory
        self.alphas, self.sigmas = vp_levels(vp_alphas_cumprod(self.scheduler_config))
        self.prediction_type = check_prediction_type(self.scheduler_config.get("prediction_type", "epsilon"))
        c = self.scheduler_config
        self.clip_sample = float(c.get("clip_sample_range", 1.0)) if c.get("clip_sample", False) else None
        cfg = unet.config
        s = cfg.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        self.x_shape = (int(cfg.in_channels), int(h), int(w))

        if not 1 <= self.x_shape[0] * self.x_shape[1] * self.x_shape[2] <= MAX_X_ELEMENTS:
            raise LatentBasisError(f"{name}: x of shape {self.x_shape} (from the U-Net's config) is outside what "
                                   f"latentbasis handles (1 to {MAX_X_ELEMENTS:,} numbers)")
        self.sdxl = cfg.get("addition_embed_type") == "text_time"
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self._check_conditioning()
        self._prompt_cache: dict[str, Conditioning] = {}
        self._traced: dict = {}

    @classmethod
    def from_components(cls, parts: dict, scheduler_config: dict, pipeline_config: dict, **common) -> "UNetModel":
        """The adapter over loaded folder components (unet, vae, text_encoder[_2], tokenizer[_2])."""
        if parts["unet"].config.get("addition_embed_type") == "text_time":
            missing = [k for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2") if k not in parts]
            if missing:
                raise LatentBasisError(f"{common.get('path')} is an SDXL-style pipeline (the U-Net takes pooled text "
                                       f"embeddings and time ids) but has no {'/, '.join(missing)}/ folder")
        encoders = [parts[k] for k in ("text_encoder", "text_encoder_2") if k in parts]
        tokenizers = [parts[k] for k in ("tokenizer", "tokenizer_2") if k in parts]
        if len(encoders) != len(tokenizers):
            raise LatentBasisError(f"{common.get('path')}: every text encoder needs its tokenizer (found "
                                   f"{len(encoders)} text encoder(s) and {len(tokenizers)} tokenizer(s))")
        force_zeros = pipeline_config.get("force_zeros_for_empty_prompt",
                                          parts["unet"].config.get("addition_embed_type") == "text_time")
        return cls(parts["unet"], scheduler_config, text_encoders=encoders, tokenizers=tokenizers,
                   vae=parts.get("vae"), force_zeros_for_empty_prompt=bool(force_zeros), **common)

    def _check_conditioning(self) -> None:
        cfg = self.unet.config
        takes_text = cfg.get("cross_attention_dim") is not None and "Condition" in type(self.unet).__name__
        if cfg.get("addition_embed_type") not in (None, "text_time"):
            raise LatentBasisError(f"U-Nets with addition_embed_type {cfg.get('addition_embed_type')!r} are not "
                                   "supported (only SDXL's 'text_time')")
        if cfg.get("class_embed_type") is not None or cfg.get("num_class_embeds") is not None:
            raise LatentBasisError("class-conditional U-Nets are not supported yet")
        if takes_text and not self.text_encoders:
            raise LatentBasisError(f"{self.name}: the U-Net takes text (cross-attention) but the folder has no "
                                   "text_encoder/")
        if self.sdxl:
            if len(self.text_encoders) != 2 or len(self.tokenizers) != 2:
                raise LatentBasisError(f"{self.name}: an SDXL-style U-Net (addition_embed_type 'text_time') needs two "
                                       "text encoders and their tokenizers: text_encoder/, tokenizer/, "
                                       "text_encoder_2/ and tokenizer_2/")
            want = self.unet.add_embedding.linear_1.in_features
            have = cfg.addition_time_embed_dim * 6 + self.text_encoders[1].config.projection_dim
            if want != have:
                raise LatentBasisError(f"{self.name}: the U-Net's added embedding takes {want} numbers, but 6 time ids "
                                       f"and text_encoder_2's projection give {have}")

    # ------------------------------------------------------------------ conditioning
    @property
    def conditional(self) -> bool:
        return bool(self.text_encoders)

    @property
    def conditioning(self) -> str | None:
        return "text" if self.text_encoders else None

    def encode_prompt(self, prompt: str | None) -> Conditioning | None:
        if not self.conditional:
            return super().encode_prompt(prompt)
        prompt = prompt or ""
        if prompt not in self._prompt_cache:
            with torch.no_grad():
                self._prompt_cache[prompt] = self._encode(prompt)
        return self._prompt_cache[prompt]

    def _tokens(self, tokenizer, prompt: str) -> torch.Tensor:
        return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def _encode(self, prompt: str) -> Conditioning:
        if not self.sdxl:  # StableDiffusionPipeline.encode_prompt: the last hidden state
            enc = self.text_encoders[0]
            ids = self._tokens(self.tokenizers[0], prompt)
            mask = torch.ones_like(ids) if getattr(enc.config, "use_attention_mask", False) else None
            hidden = enc(ids, attention_mask=mask)[0]
            return Conditioning({"encoder_hidden_states": hidden.float()})
        hiddens, pooled = [], None   # StableDiffusionXLPipeline.encode_prompt (clip_skip None)
        for tok, enc in zip(self.tokenizers, self.text_encoders):
            out = enc(self._tokens(tok, prompt), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:
                pooled = out[0]
            hiddens.append(out.hidden_states[-2])
        hidden = torch.cat(hiddens, dim=-1).float()
        pooled = pooled.float()
        if prompt == "" and self.force_zeros_for_empty_prompt:
            hidden, pooled = torch.zeros_like(hidden), torch.zeros_like(pooled)
        H, W = (s * self.vae_scale_factor() for s in self.x_shape[1:])
        time_ids = torch.tensor([[H, W, 0, 0, H, W]], dtype=torch.float32, device=self.device)
        return Conditioning({"encoder_hidden_states": hidden, "text_embeds": pooled, "time_ids": time_ids})

    # ------------------------------------------------------------------ the network
    @staticmethod
    def _call(unet, x, t, kw: dict, params: dict | None = None):
        kwargs = {"return_dict": False}
        if "encoder_hidden_states" in kw:
            kwargs["encoder_hidden_states"] = kw["encoder_hidden_states"]
        if "text_embeds" in kw:
            kwargs["added_cond_kwargs"] = {"text_embeds": kw["text_embeds"], "time_ids": kw["time_ids"]}
        if params is None:
            return unet(x, t, **kwargs)[0]
        return torch.func.functional_call(unet, params, (x, t), kwargs)[0]

    def network(self, x, t, cond=None):
        x, t = x.to(self.device, self.dtype), t.to(self.device)
        kw = cond.batch(x.shape[0], self.dtype) if cond is not None else {}
        names = tuple(sorted(kw))
        key = (names, x.device.type, self.dtype)
        with _TRACE_LOCK:
            if key not in self._traced:
                self._traced[key] = _trace_unet(self.unet, x, t, kw, names)
        net = self._traced[key]
        with torch.no_grad():
            if net is None:
                return self._call(self.unet, x, t, kw)
            return net(x, t, *(kw[n] for n in names))

    def layers(self) -> list[str]:
        """The candidate layers for h: the U-Net's stages in forward order."""
        u = self.unet
        return (["conv_in"] + [f"down_blocks.{i}" for i in range(len(u.down_blocks))] + ["mid_block"]
                + [f"up_blocks.{i}" for i in range(len(u.up_blocks))])

    def _network_call(self, x, t, kw, params=None):
        return self._call(self.unet, x, t, kw, params)

    def _probe(self):
        """One forward at batch 1 in the sampling dtype (to find which modules run before a layer)."""
        x = torch.zeros(1, *self.x_shape, device=self.device, dtype=self.dtype)
        t = torch.zeros(1, dtype=torch.long, device=self.device)
        cond = self.encode_prompt("") if self.conditional else None
        self._call(self.unet, x, t, cond.batch(1, self.dtype) if cond is not None else {})


def _trace_unet(unet, x, t, kw: dict, names: tuple[str, ...]):
    """A traced network function (x, t, *conditioning in `names` order) of the U-Net, or None when tracing fails or
    x is not on the CPU (measured on an H200: the traced SDXL forward took 18 s a call over its first three calls).

    The trace runs a copy of the U-Net with channels-last conv weights, so oneDNN convolves in NHWC: 10-25 % faster
    per call on the bundled models at batch 1-10 (benchmarks/bench_edit.py); outputs differ from the eager forward
    by rounding only (~1e-6). A copy, because the eager U-Net must stay as it is: torch.func's batched forward mode
    fails in group_norm on channels-last activations, and with in-place channels-last weights plus contiguous
    activations the basis ran slower. The copy doubles the weights in memory, so above CHANNELS_LAST_MAX_BYTES of
    parameters (where per-call overhead matters least) the U-Net is traced as it is.
    """
    if x.device.type != "cpu":  # the gain is oneDNN's; on a GPU TorchScript's first calls profile and fuse, slowly
        return None
    size = sum(p.numel() * p.element_size() for p in unet.parameters())
    if size <= CHANNELS_LAST_MAX_BYTES:
        unet = copy.deepcopy(unet).to(memory_format=torch.channels_last)

    def fn(a, b, *c):
        return UNetModel._call(unet, a, b, dict(zip(names, c)))

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.trace(fn, (x, t, *(kw[n] for n in names)), check_trace=False)
    except Exception:  # any tracing failure: fall back to the eager forward, which is always correct
        return None
