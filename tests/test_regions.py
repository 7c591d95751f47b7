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
    with pytest.raises(LatentBasisError, match="need space x0"):
        latent_basis(model, x, timestep=400, k=2, mask=mask)


def _blob(cx, cy, sigma, colour, bg=0.2, size=24):
    """A smooth coloured Gaussian blob on a grey background: [3, size, size]."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    a = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    return (a[None] * torch.tensor(colour, dtype=torch.float64)[:, None, None] + (1 - a[None]) * bg).float()


def _box(x0, y0, x1, y1, size=24):
    m = torch.zeros(3, size, size, dtype=torch.bool)
    m[:, y0:y1, x0:x1] = True
    return m


def test_motion_fields_are_the_first_order_change_under_a_shift_and_a_scaling():
    from latentbasis.motion import motion_fields

    region = _box(4, 4, 20, 20)                      # centre (11.5, 11.5), half-sizes 8
    I = _blob(11.5, 11.5, 3.0, (0.9, 0.1, 0.1))
    G = motion_fields(I, region)
    eps = 1e-3
    shift = (_blob(11.5 + eps * 8, 11.5, 3.0, (0.9, 0.1, 0.1)) - I) / eps       # a shift by eps half-boxes along x
    scale = (_blob(11.5, 11.5, 3.0 * (1 + eps), (0.9, 0.1, 0.1)) - I) / eps     # a scaling by 1 + eps
    for dense, field in ((shift, G[0]), (scale, G[2])):
        dense = dense * region
        assert float((field - dense).norm() / dense.norm()) < 0.05    # central differences on a 3-pixel blob
    assert float(G[:, ~region].abs().max()) == 0


def test_motion_transport_moves_another_colour_the_same_way():
    """A red blob moved right, carried to a cyan blob elsewhere and larger: the cyan blob moved right (the
    pixel changes of the two have opposite signs in every channel but one, so any pixelwise carry goes wrong)."""
    from latentbasis.motion import motion_transport

    ra, rb = _box(2, 2, 14, 14), _box(8, 6, 24, 22)
    A, B = _blob(7.5, 7.5, 2.0, (0.9, 0.1, 0.1)), _blob(15.5, 13.5, 2.7, (0.1, 0.9, 0.9))
    u0 = (_blob(7.6, 7.5, 2.0, (0.9, 0.1, 0.1)) - A) * ra
    u1, share = motion_transport(u0, A, ra, B, rb)
    assert share > 0.95
    right_b = (_blob(15.6, 13.5, 2.7, (0.1, 0.9, 0.9)) - B) * rb
    cos = float((u1 * right_b).sum() / (u1.norm() * right_b.norm()))
    assert cos > 0.95
    # the same change carried pixelwise (its box resampled onto B's) points the other way
    crop = torch.nn.functional.interpolate(u0[None, :, 2:14, 2:14], size=(16, 16), mode="bilinear")[0]
    warped = torch.zeros_like(B)
    warped[:, 6:22, 8:24] = crop
    assert float((warped * right_b).sum()) < 0


def test_motion_transfer_of_a_region_basis(model, tmp_path):
    """transported_basis(transfer="motion") is motion_transport then transport into the local region basis; it
    keeps the file's mask, reports each direction's motion share, and stays off the rest's top directions."""
    from latentbasis.basis import pullback_basis, region_maps
    from latentbasis.basisfile import load_basis, save_basis
    from latentbasis.motion import motion_transport
    from latentbasis.transport import transport, transported_basis

    gen = torch.Generator().manual_seed(7)
    xa, xb = torch.randn(model.x_shape, generator=gen), torch.randn(model.x_shape, generator=gen)
    ma, mb = parse_mask("0,0,5,5", 8), parse_mask("3,2,8,8", 8)
    a = latent_basis(model, xa, timestep=300, k=2, space="x0", mask=ma, null_rank=4, tol=1e-6)
    save_basis(a, tmp_path / "a.safetensors")
    a = load_basis(tmp_path / "a.safetensors", model=model)
    assert torch.equal(a.mask, ma)
    moved = transported_basis(model, a, xb, 300, mask=mb, null_rank=4, transfer="motion", tol=1e-6)
    local = latent_basis(model, xb, timestep=300, k=2, space="x0", mask=mb, null_rank=4, tol=1e-6)
    x0 = model.denoised_function(300, None)
    with torch.no_grad():
        ia, ib = x0(xa[None])[0], x0(xb[None])[0]
    ra, rb = mask_in_x(model, ma), mask_in_x(model, mb)
    for i in range(2):
        u0 = torch.zeros(model.x_shape)
        u0[ra] = a.tangent[i]
        u1, share = motion_transport(u0, ia, ra, ib, rb)
        want = transport(u1[rb], local.latent, local.tangent)
        assert float((moved.latent[i] * want).sum()) > 1 - 1e-4
        assert moved.extra["motion_share"][i] == pytest.approx(share, rel=1e-4)
        assert 0 <= moved.extra["kept"][i] <= 1 + 1e-9
    _, f_c = region_maps(model, 300, None, rb)
    Vc = pullback_basis(f_c, xb, 4, tol=1e-6).latent.reshape(4, -1).double()
    assert float((moved.latent.reshape(2, -1).double() @ Vc.T).abs().max()) < 1e-4


def test_motion_transfer_refuses_what_it_cannot_carry(model):
    from latentbasis.transport import transported_basis

    x = torch.randn(model.x_shape)
    h = latent_basis(model, x, timestep=300, k=2)
    with pytest.raises(LatentBasisError, match="motion transfer needs a basis of x0_hat"):
        transported_basis(model, h, torch.randn(model.x_shape), 300, transfer="motion")
    r = latent_basis(model, x, timestep=300, k=2, space="x0", mask=parse_mask("0,0,4,4", 8))
    r.mask = None                                     # as read from a file written before masks were kept
    with pytest.raises(LatentBasisError, match="does not hold its mask"):
        transported_basis(model, r, torch.randn(model.x_shape), 300, mask=parse_mask("0,0,4,4", 8),
                          transfer="motion")
    with pytest.raises(LatentBasisError, match="unknown transfer"):
        transported_basis(model, r, torch.randn(model.x_shape), 300, transfer="warp")
