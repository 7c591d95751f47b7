"""What a model family provides: the one interface the rest of latentbasis talks to.

A family adapter wraps a foreign network (as k-diffusion's external.py wraps foreign models) and says four things:
1. x: its shape (`x_shape`), and how an image becomes x and back (`image_to_x`, `x_to_image`: identity for pixel
   models, the VAE for latent models);
2. the network call: the conditioning a prompt becomes (`encode_prompt` -> Conditioning), the raw output for
   sampling (`network`, in the sampling dtype), and the feature map h at a named layer (`feature_forward`,
   float32, differentiable under torch.func);
3. the output's meaning (`prediction_type`: epsilon, v_prediction, sample), converted to eps / x0_hat in one place,
   latentbasis.schedules.to_eps_x0;
4. the schedule: the levels x_t = alphas[t] x0 + sigmas[t] eps at the integer timesteps t = 0..T-1 (float64, on
   the CPU; latentbasis.schedules), what the network is told the timestep is (`network_timesteps`), and
   `clip_sample`.
Everything else (`eps`, `predict`, `features`) is written once here, so sampling, inversion, editing, analysis,
the CLI and the app never ask which family a model is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import LatentBasisError
from ..features import (OUTPUT, checkpointed, differentiable_attention, _first_tensor, forward_to, modules_run_before,
                        output_shapes)
from ..schedules import to_eps_x0, vp_equivalent_alphas_cumprod


@dataclass
class Conditioning:
    """The network's inputs besides x and t, by keyword, each with a batch dimension of 1 (float32, on the model's
    device): encoder_hidden_states [1, L, D] for a text U-Net; for SDXL also text_embeds [1, P] and time_ids [1, 6]."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def batch(self, n: int, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The inputs repeated to batch n (a view, no copy), cast to dtype."""
        out = {}
        for k, v in self.inputs.items():
            v = v.expand(n, *v.shape[1:])
            out[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
        return out


class DiffusionModel:
    """A loaded model behind the family interface (see the module docstring). Subclasses set the attributes in
    __init__ and implement the methods marked 'family'."""

    family: str = "base"
    denoisers: tuple[str, ...] = ()         # the diffusers denoiser classes this adapter wraps (families.FAMILIES)
    pipelines: tuple[str, ...] = ()         # the diffusers pipeline classes built around this family's denoiser
    name: str
    model_hash: str
    path: str | None = None
    x_shape: tuple[int, ...]
    alphas: torch.Tensor                   # [T] float64, CPU: x_t = alphas[t] x0 + sigmas[t] eps
    sigmas: torch.Tensor                   # [T]
    flow: bool = False                     # a flow-matching model (alphas = 1 - sigmas), else variance preserving
    prediction_type: str = "epsilon"
    clip_sample: float | None = None       # clamp x0_hat to [-r, r] while sampling (where the config asks)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32     # the sampling forward; features are float32 whatever this is
    max_memory: int | None = None          # bytes the Jacobian products may use (None: the device's default)
    default_layer: str = "mid_block"
    denoiser: torch.nn.Module | None = None  # the network (a U-Net's unet, a transformer)
    vae = None                             # an AutoencoderKL when x is a VAE latent (float32 when loaded here; a
                                           # pipeline's own in its dtype, latentbasis.pipelines)
    conditioning: str | None = None        # what encode_prompt reads: "text", "class" (a label "0".."N-1"), None

    # ------------------------------------------------------------------ family
    @property
    def conditional(self) -> bool:
        """Whether the model takes a prompt."""
        return False

    def encode_prompt(self, prompt: str | None) -> Conditioning | None:
        """The conditioning of a prompt ("" is the unconditional one); None for unconditional models, which
        refuse a prompt."""
        if prompt:
            raise LatentBasisError(f"model {self.name!r} is not text-conditioned; it takes no prompt")
        return None

    def network(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """The raw network output (a `prediction_type` quantity) for x [B, *x_shape] and integer timesteps t [B]
        (the family converts them with network_timesteps), in the sampling dtype on the model's device; no
        gradients."""
        raise NotImplementedError

    def _network_call(self, x, t, kw: dict, params: dict | None = None) -> torch.Tensor:
        """The network's output for x [B, *x_shape], integer timesteps t [B], conditioning inputs kw (batched), with
        the weights `params` (functional_call) when given (family)."""
        raise NotImplementedError

    def _default_condition(self) -> Conditioning | None:
        """The conditioning the network needs when none is given (a class-conditional model's null label)."""
        return None

    def layer_name(self, layer: str | None) -> str:
        """`layer`, or the family's default for None; an empty or non-text name is refused, not read as the
        default."""
        if layer is None:
            return self.default_layer
        if not isinstance(layer, str) or not layer.strip():
            raise LatentBasisError(f"layer {layer!r} is no layer name (`latentbasis layers` lists them; None for "
                                   f"the default, {self.default_layer})")
        return layer

    def feature_function(self, timestep: int, cond: Conditioning | None, layer: str):
        """The batched feature map at one timestep: a function x [B, *x_shape] (float32, on any device: computed on the
        model's, returned on x's) -> h [B, *h_shape] (float32), differentiable under torch.func (forward and reverse mode): the output of the
        module `layer` (feature_select of it), or with layer = features.OUTPUT the network's whole output. Whatever
        it needs beyond the model (float32 copies of half-precision weights) lives as long as the function."""
        self.require_weights(f"the feature map at {layer!r}", layer)
        cond = cond if cond is not None else self._default_condition()
        kw = cond.batch(1, torch.float32) if cond is not None else {}
        params = self.float32_params(self.denoiser, "" if layer == OUTPUT else layer, self._probe)
        candidates = self.layers()

        def on_device(x):
            t = torch.full((x.shape[0],), int(timestep), dtype=torch.long, device=self.device)
            c = {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in kw.items()}
            if layer == OUTPUT:
                with differentiable_attention(self.denoiser):
                    return self._network_call(x, t, c, params)
            return forward_to(self.denoiser, layer, lambda: self._network_call(x, t, c, params),
                              select=self.feature_select, candidates=candidates)

        def run(x):   # x on any device: computed on the model's, returned on x's (both moves differentiable)
            return on_device(x.to(self.device)).to(x.device)

        return run

    def denoised_function(self, timestep: int, cond: Conditioning | None):
        """x0_hat(x_t) at one timestep as a batched, differentiable function (float32): the network's output
        converted from its prediction type (no clamping: the posterior mean whose Jacobian LOCO-Edit reads)."""
        net = self.feature_function(timestep, cond, OUTPUT)
        alpha, sigma = (float(v[int(timestep)]) for v in (self.alphas, self.sigmas))

        def x0(x):
            return to_eps_x0(net(x), x, torch.tensor(alpha), torch.tensor(sigma), self.prediction_type)[1]

        return x0

    def feature_forward(self, x: torch.Tensor, timestep: int, cond: Conditioning | None, layer: str) -> torch.Tensor:
        """h for a batch x [B, *x_shape]: feature_function(timestep, cond, layer)(x)."""
        return self.feature_function(timestep, cond, layer)(x)

    def layers(self) -> list[str]:
        """The candidate layers for h, in forward order (the family's)."""
        return [self.default_layer]

    def layer_lines(self) -> list[str]:
        """The candidate layers for h in forward order, each with the shape of h for one sample, the default
        marked (what `latentbasis layers` prints)."""
        shapes = self.layer_shapes()
        width = max(len(n) for n in shapes)
        return [f"model {self.name} ({self.family}, {type(self.denoiser).__name__}): candidate layers for h, in "
                "forward order, with the shape of h for one sample"] + [
            f"  {name:<{width}}  {' x '.join(map(str, shape)) if shape else 'no tensor output'}"
            f"{'  (default)' if name == self.default_layer else ''}" for name, shape in shapes.items()]

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """{layer: shape of h there (one sample)} for every candidate layer, from one forward of the network."""
        return output_shapes(self.denoiser, self.layers(), self._probe, self.feature_select)

    def feature_select(self, output) -> torch.Tensor:
        """h from a layer's output (a tensor, or the first tensor of a tuple; transformers pick image tokens)."""
        return _first_tensor(output)

    def _probe(self) -> None:
        """One forward at batch 1 in the sampling dtype (family): to find the modules and shapes of the layers."""
        raise NotImplementedError

    def set_guidance(self, scale: float | None) -> None:
        """The guidance scale a guidance-distilled network takes as an input (FLUX.1-dev); None leaves it. Families
        without one refuse a scale (classifier-free guidance is the samplers' `guidance`)."""
        if scale is not None:
            raise LatentBasisError(f"model {self.name!r} takes no guidance scale as an input (only guidance-distilled "
                                   "models such as FLUX.1-dev do); classifier-free guidance is the sampler's guidance")

    # ------------------------------------------------------------------ the pipeline's latents
    def x_from_pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """x [B, *x_shape] from the latents a diffusers pipeline of this family carries (identity; FLUX unpacks)."""
        return latents

    def x_to_pipeline_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of x_from_pipeline_latents."""
        return x

    # ------------------------------------------------------------------ images (identity, or the VAE)
    def image_to_x(self, image: torch.Tensor) -> torch.Tensor:
        """Pixels [C, H, W] in [-1, 1] (CPU) -> x [*x_shape] (CPU): the image itself, or the VAE's latent mean,
        shifted and scaled by its config (shift_factor, scaling_factor)."""
        if self.vae is None:
            return image
        c = self.vae.config
        with torch.no_grad():
            z = self.vae.encode(image[None].to(self.device, self.vae.dtype)).latent_dist.mean.float()
        return ((z - (c.get("shift_factor") or 0.0)) * c.scaling_factor)[0].cpu()

    def x_to_image(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, *x_shape] -> pixels [B, C, H, W] in [-1, 1] (CPU); the VAE decodes latents."""
        if self.vae is None:
            return x.detach().float().cpu().clamp(-1, 1)
        c = self.vae.config
        with torch.no_grad():
            z = x.to(self.device, torch.float32) / c.scaling_factor + (c.get("shift_factor") or 0.0)
            return self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1).cpu()

    @property
    def x_is_latent(self) -> bool:
        """Whether x is a VAE latent (else pixels in [-1, 1])."""
        return self.vae is not None

    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    def pixel_size(self) -> tuple[int, int]:
        """(channels, size) of the images the model takes."""
        if self.vae is None:
            return self.x_shape[0], self.x_shape[-1]
        return int(self.vae.config.in_channels), self.x_shape[-1] * self.vae_scale_factor()

    # ------------------------------------------------------------------ float32 features of a half model
    def float32_params(self, root: torch.nn.Module, layer: str, probe) -> dict | None:
        """None for a float32 model (detached views where its weights require gradients); else float32 copies of the weights the feature map uses (the modules of `root`
        that run before `layer` ends, found once per layer by running probe() under hooks): the Jacobian is float32
        whatever the sampling dtype. The copies live as long as the caller keeps them (one feature map)."""
        if self.dtype == torch.float32:
            if not any(p.requires_grad for p in root.parameters()):
                return None
            # a user's module (from_pipeline) whose weights ask for gradients: detached views, so that no product
            # records the weights' graph (nothing copied, the user's module unchanged)
            return {n: p.detach() for n, p in root.named_parameters()}
        cache = self.__dict__.setdefault("_layer_modules", {})
        if layer not in cache:
            cache[layer] = modules_run_before(root, layer, probe)
        copies = {}
        for mname in cache[layer]:
            mod = root.get_submodule(mname) if mname else root
            for pname, p in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
                if p.is_floating_point():
                    copies[f"{mname}.{pname}" if mname else pname] = torch.nn.Parameter(p.detach().float(),
                                                                                         requires_grad=False)
        return copies

    # ------------------------------------------------------------------ a basis-only model
    def keep_feature_weights(self, layer: str | None = None) -> int:
        """Free the weights the feature map at `layer` (default: the family's) never uses: the parameters and
        buffers of the modules that do not run before `layer` ends (a U-Net's up blocks and output convolution) go
        to the 'meta' device, so the Jacobian products of a model too big for memory fit (SDXL on 24 GB: 10.3 GB of
        float32 weights, 5.0 GB of them before mid_block). Sampling, editing, x0_hat and other layers need the
        whole network and refuse afterwards, with one message. Returns the bytes freed."""
        layer = self.layer_name(layer)
        used = modules_run_before(self.denoiser, layer, self._probe)
        freed = 0
        for mname, mod in self.denoiser.named_modules():
            if mname in used:
                continue
            for pname, p in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
                if p.device.type != "meta":
                    freed += p.numel() * p.element_size()
                    setattr(mod, pname, torch.nn.Parameter(p.to("meta"), requires_grad=False)
                            if isinstance(p, torch.nn.Parameter) else p.to("meta"))
        self.__dict__.setdefault("_layer_modules", {})[layer] = used
        self.kept_layer = layer
        if "_traced" in self.__dict__:   # traced copies of the network hold the freed weights
            self._traced = {}
        return freed

    kept_layer: str | None = None      # set by keep_feature_weights: the only layer whose weights are all here

    def require_weights(self, what: str, layer: str | None = None) -> None:
        """One clear error when `what` (the whole network, or the feature map at `layer`) needs freed weights."""
        if self.kept_layer is not None and layer != self.kept_layer:
            raise LatentBasisError(f"{what} needs weights this model freed (keep_feature_weights kept only what the "
                                   f"feature map at {self.kept_layer!r} uses): load the model again")

    # ------------------------------------------------------------------ shared
    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t of the VP process with the same signal-to-noise ratio as each level (the VP schedule itself for a
        VP model), for SNR-based theory in the analysis."""
        return vp_equivalent_alphas_cumprod(self.alphas, self.sigmas)

    def level(self, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) at an integer timestep, as scalar tensors in the math dtype on the model's device."""
        return (self.alphas[int(timestep)].to(self.device, self.math_dtype),
                self.sigmas[int(timestep)].to(self.device, self.math_dtype))

    def network_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is given as the timestep for integer timesteps t [B]: t itself for a VP model, the
        level's sigma times T for a flow model (as diffusers' flow-matching pipelines call it)."""
        if not self.flow:
            return t
        return (self.sigmas.to(t.device)[t.long()] * self.num_train_timesteps).float()

    @property
    def math_dtype(self) -> torch.dtype:
        """Precision of the sampler's arithmetic: float64 (MPS has none: float32 there)."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """eps_theta(x, t) whatever the prediction type (x [B, *x_shape] on the device, integer t [B]); float32."""
        self.require_weights("the network's whole forward (sampling, editing)")
        out = self.network(x, t, cond)
        shape = (-1, *[1] * (x.dim() - 1))
        a = self.alphas.to(self.device, self.math_dtype)[t.long()].reshape(shape)
        s = self.sigmas.to(self.device, self.math_dtype)[t.long()].reshape(shape)
        return to_eps_x0(out.to(self.math_dtype), x.to(self.math_dtype), a, s, self.prediction_type)[0].float()

    def features(self, timestep: int, prompt: str | None = None, layer: str | None = None):
        """The feature map f_t: x_t [*x_shape] -> h [*h_shape], float32, computed on the model's device (x_t on any:
        h comes back on x_t's), at an integer
        timestep (and prompt, for text models: no classifier-free guidance inside J)."""
        run = self.feature_function(int(timestep), self.encode_prompt(prompt), self.layer_name(layer))

        def f(x: torch.Tensor) -> torch.Tensor:
            return run(x[None])[0]

        f.checkpointed = lambda: checkpointed(self.denoiser)   # for a JacobianOperator that records nothing
        return f

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, x_shape={self.x_shape}, "
                f"prediction_type={self.prediction_type!r}, device={self.device}, dtype={self.dtype})")
