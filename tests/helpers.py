"""Small helpers shared by the exact tests (imported as `helpers`: pytest puts tests/ on the path)."""
import math

import torch
from torch.func import jacfwd, jacrev

from latentbasis import principal_angles


def separated(S, k, rel=0.02) -> list[int]:
    """Indices i < k whose singular value S[i] stands apart from both neighbours by more than rel * S[i]: the
    singular vectors that are well defined, so angles to them can be compared."""
    return [i for i in range(k) if min(float(S[i] - S[i + 1]),
                                       float(S[i - 1] - S[i]) if i else math.inf) > rel * float(S[i])]


def dense_jacobian(f, x):
    """The dense Jacobian of f at x, [dim h, dim x], in float64, by torch's own AD: forward mode (jacfwd, one JVP
    per entry of x) where x has fewer entries than h, else reverse mode (jacrev, one VJP per entry of h). Both are
    exact; the cheaper one is taken (a 16x16 input against a 6144-entry h: 256 columns, not 6144 rows)."""
    with torch.no_grad():
        jac = jacfwd if x.numel() < f(x).numel() else jacrev
    return jac(f)(x).reshape(-1, x.numel()).double()


def dense_svd(f, x):
    """The SVD (U, S, Vh) of the dense Jacobian of f at x (dense_jacobian), flattened to [dim h, dim x]."""
    return torch.linalg.svd(dense_jacobian(f, x), full_matrices=False)


def assert_matches_dense(b, U, S, Vh, k, degrees=1.0, rtol=1e-3):
    """A basis b against the dense SVD: singular values to rtol, and latent and tangent vectors within `degrees`
    on every separated index (at least one)."""
    assert torch.allclose(b.singular_values.double(), S[:k], rtol=rtol), (b.singular_values, S[:k])
    sep = separated(S, k)
    assert sep, "the test needs a usable spectral gap"
    for i in sep:
        assert float(principal_angles(b.latent[i:i + 1], Vh[i:i + 1]).max().rad2deg()) < degrees
        assert float(principal_angles(b.tangent[i].reshape(1, -1), U[:, i][None]).max().rad2deg()) < degrees


def own_edit(m, x_T, grid, prompt, guidance, *, at=2, folder=None, direction=0, strength=2.0, method="guidance"):
    """latentbasis' side of an edit-inside-a-pipeline check: its own trajectory over `grid` from x_T [1, ...], the
    basis (k = 2) of model m (from_pipeline's) at grid[at], and edit_images along that basis' direction (n_iter 4,
    not clipped). folder: the pipeline's folder; load_model's model of it must have m's weights (model hash) and
    the same basis there (the largest angle is returned). Returns (basis, its timestep, the angle or None, the
    edited x0 [1, ...])."""
    from latentbasis import latent_basis, load_model, principal_angles
    from latentbasis.editing import EditSettings, edit_images
    from latentbasis.sampling import Trajectory, denoise

    x0, kept, _ = denoise(m, x_T, grid, prompt, guidance, clip_denoised=False, keep=True)
    traj = Trajectory(grid, kept[:, 0], x0[0], prompt, guidance)
    ts = grid[at]
    b = latent_basis(m, traj.at(ts), timestep=ts, k=2, prompt=prompt, tol=1e-5)
    angle = None
    if folder is not None:
        ref = load_model(str(folder), device="cpu")
        assert ref.model_hash == m.model_hash
        a = latent_basis(ref, traj.at(ts), timestep=ts, k=2, prompt=prompt, tol=1e-5)
        angle = float(principal_angles(a.latent, b.latent).max().rad2deg())
    ours = edit_images(m, traj, ts, strength * b.latent[direction][None], EditSettings(method=method, n_iter=4),
                       clip_denoised=False)
    return b, ts, angle, ours


def without_part(folder, part, tmp_path):
    """A copy of a pipeline folder whose model_index.json no longer has `part` (and whose folder is gone)."""
    import json
    import shutil

    d = tmp_path / f"no_{part}"
    shutil.copytree(folder, d)
    shutil.rmtree(d / part)
    index = json.loads((d / "model_index.json").read_text())
    index[part] = [None, None]
    (d / "model_index.json").write_text(json.dumps(index))
    return d


def blob(C=1, n=16, cx=7.0, cy=8.0, r=3.0):
    """A smooth disc-like bump [C, n, n] (its colour differs by channel)."""
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    b = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r ** 2))
    return torch.stack([b * (1.0 - 0.3 * c) - 0.5 for c in range(C)])


def isotropic_gaussian(image):
    """A Gaussian model of one image with a tiny isotropic variance: every DDIM step is affine with one gain for
    all of x, so a finished edit changes the image by c s v (the exact case the descriptions are tested on)."""
    from latentbasis import GaussianModel
    from latentbasis.families.gaussian import ddpm_linear_alphas_cumprod

    D = image.numel()
    eye = torch.eye(D, dtype=torch.float64)
    return GaussianModel(image.reshape(-1), eye, torch.full((D,), 1e-4, dtype=torch.float64), eye,
                         torch.ones(D, dtype=torch.float64), tuple(image.shape), ddpm_linear_alphas_cumprod())
