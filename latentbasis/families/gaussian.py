"""A Gaussian data model whose pullback basis is known in closed form (shared/docs/theory.md): the test family.

Data x0 ~ N(mu, U diag(lam) U^T); forward x_t = a x0 + s eps: VP (a = sqrt(abar_t), s = sqrt(1 - abar_t)) or, with
flow=True, rectified flow (a = 1 - s_t, s = s_t, the flow-matching sigmas with shift 1).
    optimal denoiser  D(x_t) = mu + sum_i g_i c_i u_i,  c_i = u_i^T (x_t - a mu),  g_i = a lam_i / v_i,
                      v_i = a^2 lam_i + s^2  (the variance of x_t along u_i; abar lam_i + 1 - abar for VP)
    network output    the optimal eps = (x_t - a D) / s, or v = a eps - s D, or D itself, by `prediction_type`;
                      a flow model's velocity eps - D
    feature map       h = P diag(w) U^T (D(x_t) - mu)      (P: orthonormal columns; w = 1 gives h = B (D - mu))
    Jacobian          J = P diag(w g) U^T  -> latent basis u_i, tangent basis P e_i, singular values w_i g_i.
It is a DiffusionModel like any loaded one, so every algorithm, the sampler and the prediction-type conversions
are tested on it exactly as they run on a real network.
"""
from __future__ import annotations

import torch

from ..schedules import check_prediction_type, flow_sigmas, from_eps_x0, vp_levels
from .base import DiffusionModel


def ddpm_linear_alphas_cumprod(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """abar_t for DDPM's linear betas, float64 [T]."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class GaussianModel(DiffusionModel):
    family = "gaussian"

    def __init__(self, mu: torch.Tensor, U: torch.Tensor, lam: torch.Tensor, P: torch.Tensor, w: torch.Tensor,
                 x_shape: tuple[int, ...], alphas_cumprod: torch.Tensor | None = None, name: str = "gaussian",
                 prediction_type: str = "epsilon", flow: bool = False):
        self.mu, self.U, self.lam, self.P, self.w = mu, U, lam, P, w   # [D], [D, D], [D], [m, D], [D]
        self.x_shape = tuple(x_shape)
        self.flow = flow
        if flow:
            self.sigmas = flow_sigmas({"num_train_timesteps": 1000, "shift": 1.0})
            self.alphas = 1 - self.sigmas
            self.prediction_type = check_prediction_type(prediction_type if prediction_type != "epsilon" else "flow",
                                                         flow=True)
        else:
            self.alphas, self.sigmas = vp_levels(alphas_cumprod.to(torch.float64))
            self.prediction_type = check_prediction_type(prediction_type)
        self.name = self.model_hash = name

    @classmethod
    def random(cls, x_shape=(1, 4, 4), h_dim: int | None = None, lam=None, w=None, seed: int = 0,
               prediction_type: str = "epsilon", flow: bool = False) -> "GaussianModel":
        """A random instance: random orthonormal U and P, lam spread over two decades unless given."""
        g = torch.Generator().manual_seed(seed)
        D = int(torch.tensor(x_shape).prod())
        m = h_dim or D
        U = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
        P = torch.linalg.qr(torch.randn(m, D, generator=g, dtype=torch.float64))[0]
        lam = torch.as_tensor(lam, dtype=torch.float64) if lam is not None else torch.logspace(1, -1, D, dtype=torch.float64)
        w = torch.as_tensor(w, dtype=torch.float64) if w is not None else torch.ones(D, dtype=torch.float64)
        mu = torch.randn(D, generator=g, dtype=torch.float64) * 0.1
        return cls(mu, U, lam, P, w, tuple(x_shape), ddpm_linear_alphas_cumprod(), prediction_type=prediction_type,
                   flow=flow)

    def gains(self, timestep: int) -> torch.Tensor:
        """g_i(t) = a lam_i / (a^2 lam_i + s^2), [D] (VP: sqrt(abar) lam_i / (abar lam_i + 1 - abar))."""
        a, s = self.alphas[timestep], self.sigmas[timestep]
        return a * self.lam / (a ** 2 * self.lam + s ** 2)

    def denoiser(self, x: torch.Tensor, timestep: int) -> torch.Tensor:
        """D(x_t) for x of shape x_shape."""
        xf = x.reshape(-1).to(torch.float64)
        c = self.U.T @ (xf - self.alphas[timestep] * self.mu)
        return (self.mu + self.U @ (self.gains(timestep) * c)).reshape(self.x_shape)

    def network(self, x, t, cond=None):
        """The optimal network's output for x [B, *x_shape], t [B]: eps = (x_t - sqrt(abar) D(x_t)) / sqrt(1 - abar),
        or v or D itself, by prediction_type."""
        shape = (-1, *[1] * (x.dim() - 1))
        a, s = self.alphas[t.long()].reshape(shape), self.sigmas[t.long()].reshape(shape)
        D = torch.stack([self.denoiser(xi, int(ti)) for xi, ti in zip(x, t)])
        eps = (x.double() - a * D) / s
        return from_eps_x0(eps, D, a, s, self.prediction_type).to(x.dtype)

    def feature_function(self, timestep, cond, layer):
        """h = P diag(w) U^T (D(x_t) - mu), float32, for x [B, *x_shape]."""
        a = float(self.alphas[timestep])
        A = ((self.P * (self.w * self.gains(timestep))) @ self.U.T).float()  # J = P diag(w g) U^T, [m, D]
        mu = self.mu.float()
        return lambda x: (x.reshape(x.shape[0], -1) - a * mu) @ A.T

    def denoised_function(self, timestep, cond):
        """x0_hat = D(x_t) = mu + U diag(g) U^T (x_t - a mu) for x [B, *x_shape], float32 (Jacobian U diag(g) U^T)."""
        a = float(self.alphas[timestep])
        M = ((self.U * self.gains(timestep)) @ self.U.T).float()
        mu = self.mu.float()
        return lambda x: (mu + (x.reshape(x.shape[0], -1) - a * mu) @ M.T).reshape(x.shape)

    def layers(self) -> list[str]:
        return ["h"]

    def exact_basis(self, timestep: int, k: int):
        """(latent [k, *x_shape], tangent [k, m], singular values [k]) in descending order, float64."""
        s = self.w * self.gains(timestep)
        order = torch.argsort(s, descending=True)[:k]
        latent = self.U[:, order].T.reshape(k, *self.x_shape)
        return latent, self.P[:, order].T, s[order]
