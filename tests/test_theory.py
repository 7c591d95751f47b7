"""Closed forms of theory.md: resolution chromatography, the data's principal components."""

import numpy as np
import torch

from latentbasis.theory import data_pca, half_signal_timestep
from latentbasis.families.gaussian import ddpm_linear_alphas_cumprod


def test_resolution_chromatography_matches_theory_md():
    ab = ddpm_linear_alphas_cumprod()
    assert [half_signal_timestep(ab, m) for m in (1, 2, 4, 8, 16, 32)] == [259, 396, 527, 641, 740, 827]
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd = torch.cumprod(1 - betas, 0)
    assert [half_signal_timestep(sd, m) for m in (1, 2, 4, 8, 16)] == [354, 563, 745, 892, None]


def test_data_pca_recovers_a_known_covariance():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    lam = torch.tensor([9.0, 4, 1, 0.5, 0.2, 0.1], dtype=torch.float64)
    X = (torch.randn(200000, 6, generator=g, dtype=torch.float64) * lam.sqrt()) @ U.T
    got_lam, comps = data_pca(X.reshape(-1, 1, 2, 3))
    np.testing.assert_allclose(got_lam.numpy(), lam.numpy(), rtol=0.02)
    assert abs(float(comps[0].reshape(-1) @ U[:, 0])) > 0.999
