"""Bases of a region: the Jacobian of x0_hat restricted to a mask (LOCO-Edit's object), with the null-space
projection that keeps an edit off the rest of the image; against dense Jacobians and the Gaussian's closed form."""

import numpy as np
import pytest
import torch
from helpers import separated
from torch.func import jacrev

from latentbasis import GaussianModel, LatentBasisError, latent_basis, load_model, principal_angles
from latentbasis.masks import mask_in_x, mask_sha256, parse_mask


@pytest.mark.parametrize("flow", [False, True])
def test_the_x0_jacobian_of_the_gaussian_has_the_gains_as_singular_values(flow):
    """theory.md: d x0_hat / d x_t = J_D = sum_i g_i u_i u_i^T, singular values g_i(t), vectors u_i."""
    g = GaussianModel.random(x_shape=(1, 4, 4), lam=torch.logspace(1, -2, 16), seed=2, flow=flow)
    for ts in (300, 800):
        b = latent_basis(g, torch.randn(1, 4, 4), timestep=ts, k=4, space="x0", tol=1e-7)
        gains, order = torch.sort(g.gains(ts), descending=True)
        assert torch.allclose(b.singular_values.double(), gains[:4], rtol=1e-5)
        for i in separated(gains, 4):
            angle = principal_angles(b.latent[i:i + 1], g.U[:, order[i]].reshape(1, 1, 4, 4)).max().rad2deg()
            assert float(angle) < 0.1


@pytest.fixture(scope="module")
def model(tiny_unet_dir):
    return load_model(str(tiny_unet_dir))


def test_a_region_basis_matches_the_dense_masked_jacobian(model):
    mask = parse_mask("1,2,5,7", 8)
    x = torch.randn(model.x_shape, generator=torch.Generator().manual_seed(3))
    x0 = model.denoised_function(400, None)
    J = jacrev(lambda y: x0(y[None])[0])(x).reshape(64, 64).double()
    Jm = J[mask.reshape(-1)]                                   # the rows of the region's pixels
    U, S, Vh = torch.linalg.svd(Jm, full_matrices=False)
    b = latent_basis(model, x, timestep=400, k=4, space="x0", mask=mask, tol=1e-6)
    assert torch.allclose(b.singular_values.double(), S[:4], rtol=1e-3)
    sep = separated(S, 4)
    assert sep
    for i in sep:
        assert float(principal_angles(b.latent[i:i + 1], Vh[i:i + 1]).max().rad2deg()) < 1.0
    assert b.space == "x0" and b.mask_sha256 == mask_sha256(mask) and b.tangent.shape == (4, int(mask.sum()))


def test_the_null_space_projection_keeps_the_edit_off_the_rest(model):
    mask = parse_mask("0,0,4,8", 8)
    x = torch.randn(model.x_shape, generator=torch.Generator().manual_seed(4))
    x0 = model.denoised_function(400, None)
    J = jacrev(lambda y: x0(y[None])[0])(x).reshape(64, 64).double()
    out = ~mask.reshape(-1)
    Vc = torch.linalg.svd(J[out], full_matrices=False)[2][:6]        # the complement's top-6 right vectors
    b = latent_basis(model, x, timestep=400, k=3, space="x0", mask=mask, null_rank=6, tol=1e-6)
    L = b.latent.reshape(3, -1).double()
    assert float((L @ Vc.T).abs().max()) < 1e-3   # the dense SVD's complement directions, to their accuracy
    assert torch.allclose(L.norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    # the best directions of J_M under the constraint: the dense SVD of J_M P
    P = torch.eye(64, dtype=torch.float64) - Vc.T @ Vc
    S = torch.linalg.svdvals(J[~out] @ P)
    assert torch.allclose(b.singular_values.double(), S[:3], rtol=1e-3)
    assert b.null_rank == 6


def test_the_complement_directions_are_those_of_latentbasis_itself(model):
    """Orthogonal to 1e-5 to the top-r complement directions latentbasis computes (what the issue checks)."""
    mask = parse_mask("2,2,6,6", 8)
    x = torch.randn(model.x_shape, generator=torch.Generator().manual_seed(5))
    from latentbasis.basis import pullback_basis, region_maps

    _, f_c = region_maps(model, 400, None, mask_in_x(model, mask))
    Vc = pullback_basis(f_c, x, 5, tol=1e-3).latent.reshape(5, -1).double()
    b = latent_basis(model, x, timestep=400, k=2, space="x0", mask=mask, null_rank=5)
    assert float((b.latent.reshape(2, -1).double() @ Vc.T).abs().max()) < 1e-5


@pytest.mark.parametrize("spec, says", [("0,0,0,0", "not inside"), ("1,1,9,9", "not inside"),
                                        ("a,b", "neither a box"), ("empty.png", "empty"),
                                        ("big.png", "is 16x16 pixels, the image is 8x8")])
def test_bad_masks(spec, says, tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "big.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LatentBasisError, match=says):
        parse_mask(spec, 8)


def test_bad_region_settings(model):
    x = torch.randn(model.x_shape)
    mask = parse_mask("0,0,4,4", 8)
    with pytest.raises(LatentBasisError, match="out of range"):
        latent_basis(model, x, timestep=400, k=2, space="x0", mask=mask, null_rank=49)   # 48 numbers outside
    with pytest.raises(LatentBasisError, match="needs a mask"):
        latent_basis(model, x, timestep=400, k=2, space="x0", null_rank=2)
    with pytest.raises(LatentBasisError, match="need --space x0"):
        latent_basis(model, x, timestep=400, k=2, mask=mask)
