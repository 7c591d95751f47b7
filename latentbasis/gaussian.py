"""A Gaussian data model whose pullback basis is known in closed form (shared/docs/theory.md).

Data x0 ~ N(mu, U diag(lam) U^T); VP forward x_t = a x0 + s eps, a = sqrt(abar_t), s = sqrt(1 - abar_t).
    optimal denoiser  D(x_t) = mu + sum_i g_i c_i u_i,  c_i = u_i^T (x_t - a mu),  g_i = a lam_i / v_i,
                      v_i = abar_t lam_i + 1 - abar_t
    feature map       h = P diag(w) U^T (D(x_t) - mu)      (P: orthonormal columns; w = 1 gives h = B (D - mu))
    Jacobian          J = P diag(w g) U^T  -> latent basis u_i, tangent basis P e_i, singular values w_i g_i.
The model exposes the same interface as a loaded DiffusionModel (features, x_shape, alphas_cumprod, ...), so every
algorithm is tested on it exactly as it runs on a U-Net.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import LatentBasisError


def ddpm_linear_alphas_cumprod(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """abar_t for DDPM's linear betas, float64 [T]."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


@dataclass
class GaussianModel:
    mu: torch.Tensor      # [D]
    U: torch.Tensor       # [D, D] orthonormal columns u_i
    lam: torch.Tensor     # [D] data variances along u_i
    P: torch.Tensor       # [m, D] orthonormal columns
    w: torch.Tensor       # [D] readout weights
    x_shape: tuple[int, ...]
    alphas_cumprod: torch.Tensor
    name: str = "gaussian"
    model_hash: str = "gaussian"
    conditional: bool = False
    clip_sample: float | None = None   # as DiffusionModel.clip_sample: the sampler never clamps x0_hat here

    @classmethod
    def random(cls, x_shape=(1, 4, 4), h_dim: int | None = None, lam=None, w=None, seed: int = 0) -> "GaussianModel":
        """A random instance: random orthonormal U and P, lam spread over two decades unless given."""
        g = torch.Generator().manual_seed(seed)
        D = int(torch.tensor(x_shape).prod())
        m = h_dim or D
        U = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
        P = torch.linalg.qr(torch.randn(m, D, generator=g, dtype=torch.float64))[0]
        lam = torch.as_tensor(lam, dtype=torch.float64) if lam is not None else torch.logspace(1, -1, D, dtype=torch.float64)
        w = torch.as_tensor(w, dtype=torch.float64) if w is not None else torch.ones(D, dtype=torch.float64)
        mu = torch.randn(D, generator=g, dtype=torch.float64) * 0.1
        return cls(mu, U, lam, P, w, tuple(x_shape), ddpm_linear_alphas_cumprod())

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def gains(self, timestep: int) -> torch.Tensor:
        """g_i(t) = sqrt(abar) lam_i / (abar lam_i + 1 - abar), [D]."""
        ab = self.alphas_cumprod[timestep]
        return ab.sqrt() * self.lam / (ab * self.lam + 1 - ab)

    def denoiser(self, x: torch.Tensor, timestep: int) -> torch.Tensor:
        """D(x_t) for x of shape x_shape."""
        ab = self.alphas_cumprod[timestep]
        xf = x.reshape(-1).to(torch.float64)
        c = self.U.T @ (xf - ab.sqrt() * self.mu)
        return (self.mu + self.U @ (self.gains(timestep) * c)).reshape(self.x_shape)

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: None = None) -> torch.Tensor:
        """eps(x_t, t) = (x_t - sqrt(abar) D(x_t)) / sqrt(1 - abar) for x [B, *x_shape], t [B]: the same call as
        DiffusionModel.eps, so the DDIM sampler runs on this model unchanged."""
        ab = self.alphas_cumprod[t.long()].reshape(-1, *[1] * (x.dim() - 1))
        D = torch.stack([self.denoiser(xi, int(ti)) for xi, ti in zip(x, t)])
        return ((x.double() - ab.sqrt() * D) / (1 - ab).sqrt()).to(x.dtype)

    def encode_prompt(self, prompt: str | None):
        if prompt is not None:
            raise LatentBasisError("the Gaussian model is unconditional: it takes no prompt")
        return None

    def features(self, timestep: int, prompt: str | None = None, layer: str = "mid_block"):
        """h = P diag(w) U^T (D(x_t) - mu), as a float32 map like a U-Net's."""
        ab = self.alphas_cumprod[timestep]
        A = (self.P * (self.w * self.gains(timestep))) @ self.U.T  # J = P diag(w g) U^T, [m, D]
        A32, mu32, a = A.float(), self.mu.float(), float(ab.sqrt())

        def f(x: torch.Tensor) -> torch.Tensor:
            return A32 @ (x.reshape(-1) - a * mu32)

        return f

    def exact_basis(self, timestep: int, k: int):
        """(latent [k, *x_shape], tangent [k, m], singular values [k]) in descending order, float64."""
        s = self.w * self.gains(timestep)
        order = torch.argsort(s, descending=True)[:k]
        latent = self.U[:, order].T.reshape(k, *self.x_shape)
        return latent, self.P[:, order].T, s[order]

