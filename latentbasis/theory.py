"""Theory overlays (theory.md): closed forms the report draws beside the measurements.

    g_i(t) = sqrt(abar_t) lam_i / (abar_t lam_i + 1 - abar_t)      the Gaussian model's gain along the data's
                                                                  principal component i (variance lam_i)
    rho_m(t) = SNR_m / (1 + SNR_m),  SNR_m = m^2 abar_t / (1 - abar_t)   resolution chromatography: the share of
                                                                  signal in m x m average-pooled x_t
"""
from __future__ import annotations

import numpy as np
import torch


def data_pca(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of data [N, *x_shape]: (variances lam [r] descending, components [r, *x_shape]),
    r = min(N, D). From the eigendecomposition of the D x D covariance when N > D (8x faster than the SVD of the
    data for `shapes`: 9 s against 77 s on one core), else from the SVD."""
    X = images.reshape(len(images), -1).double()
    X = X - X.mean(0)
    if len(X) > X.shape[1]:
        lam, V = torch.linalg.eigh(X.T @ X / (len(X) - 1))
        lam, V = lam.flip(0).clamp(min=0), V.flip(1)
        return lam, V.T.reshape(len(lam), *images.shape[1:])
    _, S, Vh = torch.linalg.svd(X, full_matrices=False)
    lam = S ** 2 / (len(X) - 1)
    return lam, Vh.reshape(len(Vh), *images.shape[1:])


def gaussian_gains(alphas_cumprod: torch.Tensor, lam: torch.Tensor, timesteps: list[int]) -> np.ndarray:
    """g_i(t) = sqrt(abar_t) lam_i / (abar_t lam_i + 1 - abar_t) (theory.md), [len(timesteps), len(lam)]."""
    ab = alphas_cumprod.double()[torch.tensor(timesteps)][:, None]
    return (ab.sqrt() * lam[None].double() / (ab * lam[None].double() + 1 - ab)).numpy()


def signal_fraction(alphas_cumprod: torch.Tensor, m: int) -> np.ndarray:
    """rho_m(t) = SNR_m / (1 + SNR_m), SNR_m = m^2 abar_t / (1 - abar_t): the signal share of x_t average-pooled
    by m x m (pooling divides the noise variance by m^2), [T]."""
    ab = alphas_cumprod.double()
    snr = m ** 2 * ab / (1 - ab)
    return (snr / (1 + snr)).numpy()


def half_signal_timestep(alphas_cumprod: torch.Tensor, m: int) -> int | None:
    """The first timestep at which rho_m(t) < 1/2: where resolution m x m stops being mostly signal
    (None when it never does, e.g. coarse resolutions under Stable Diffusion's schedule)."""
    rho = signal_fraction(alphas_cumprod, m)
    below = np.nonzero(rho < 0.5)[0]
    return None if len(below) == 0 else int(below[0])


def generation_rate(alphas_cumprod: torch.Tensor, m: int) -> np.ndarray:
    """r_m(t) = -d rho_m / dt (per timestep, central differences), [T]."""
    return -np.gradient(signal_fraction(alphas_cumprod, m))
