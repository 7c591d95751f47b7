"""What a model family provides: the one interface the rest of latentbasis talks to.

A family adapter wraps a foreign network (as k-diffusion's external.py wraps foreign models) and says four things:
1. x: its shape (`x_shape`), and how an image becomes x and back (`image_to_x`, `x_to_image`: identity for pixel
   models, the VAE for latent models);
2. the network call: the conditioning a prompt becomes (`encode_prompt` -> Conditioning), the raw output for
   sampling (`network`, in the sampling dtype), and the feature map h at a named layer (`feature_forward`,
   float32, differentiable under torch.func);
3. the output's meaning (`prediction_type`: epsilon, v_prediction, sample), converted to eps / x0_hat in one place,
   latentbasis.schedules.to_eps_x0;
4. the schedule: `alphas_cumprod` (float64, on the CPU) and `clip_sample`.
Everything else (`eps`, `predict`, `features`) is written once here, so sampling, inversion, editing, analysis,
the CLI and the app never ask which family a model is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import LatentBasisError
from ..schedules import to_eps_x0


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
    name: str
    model_hash: str
    path: str | None = None
    x_shape: tuple[int, ...]
    alphas_cumprod: torch.Tensor           # [T] float64, CPU
    prediction_type: str = "epsilon"
    clip_sample: float | None = None       # clamp x0_hat to [-r, r] while sampling (where the config asks)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32     # the sampling forward; features are float32 whatever this is
    max_memory: int | None = None          # bytes the Jacobian products may use (None: the device's default)
    default_layer: str = "mid_block"

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
        """The raw network output (a `prediction_type` quantity) for x [B, *x_shape] and integer timesteps t [B],
        in the sampling dtype on the model's device; no gradients."""
        raise NotImplementedError

    def feature_function(self, timestep: int, cond: Conditioning | None, layer: str):
        """The batched feature map at one timestep: a function x [B, *x_shape] (float32, on the device) ->
        h [B, *h_shape] (float32), differentiable under torch.func (forward and reverse mode). Whatever it needs
        beyond the model (float32 copies of half-precision weights) lives as long as the function."""
        raise NotImplementedError

    def feature_forward(self, x: torch.Tensor, timestep: int, cond: Conditioning | None, layer: str) -> torch.Tensor:
        """h for a batch x [B, *x_shape]: feature_function(timestep, cond, layer)(x)."""
        return self.feature_function(timestep, cond, layer)(x)

    def image_to_x(self, image: torch.Tensor) -> torch.Tensor:
        """Pixels [C, H, W] in [-1, 1] (CPU) -> x [*x_shape] (CPU)."""
        return image

    def x_to_image(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, *x_shape] -> pixels [B, C, H, W] in [-1, 1] (CPU)."""
        return x.detach().float().cpu().clamp(-1, 1)

    @property
    def x_is_latent(self) -> bool:
        """Whether x is a VAE latent (else pixels in [-1, 1])."""
        return False

    def pixel_size(self) -> tuple[int, int]:
        """(channels, size) of the images the model takes."""
        return self.x_shape[0], self.x_shape[-1]

    # ------------------------------------------------------------------ shared
    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def math_dtype(self) -> torch.dtype:
        """Precision of the sampler's arithmetic: float64 (MPS has none: float32 there)."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """eps_theta(x, t) whatever the prediction type (x [B, *x_shape] on the device, t [B]); float32."""
        out = self.network(x, t, cond)
        ab = self.alphas_cumprod.to(self.device, self.math_dtype)[t.long()].reshape(-1, *[1] * (x.dim() - 1))
        return to_eps_x0(out.to(self.math_dtype), x.to(self.math_dtype), ab, self.prediction_type)[0].float()

    def features(self, timestep: int, prompt: str | None = None, layer: str | None = None):
        """The feature map f_t: x_t [*x_shape] -> h [*h_shape], float32 on the model's device, at an integer
        timestep (and prompt, for text models: no classifier-free guidance inside J)."""
        run = self.feature_function(int(timestep), self.encode_prompt(prompt), layer or self.default_layer)

        def f(x: torch.Tensor) -> torch.Tensor:
            return run(x[None])[0]

        return f

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, x_shape={self.x_shape}, "
                f"prediction_type={self.prediction_type!r}, device={self.device}, dtype={self.dtype})")
