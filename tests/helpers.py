"""Small helpers shared by the exact tests (imported as `helpers`: pytest puts tests/ on the path)."""
import math

import torch
from torch.func import jacrev

from latentbasis import principal_angles


def separated(S, k, rel=0.02) -> list[int]:
    """Indices i < k whose singular value S[i] stands apart from both neighbours by more than rel * S[i]: the
    singular vectors that are well defined, so angles to them can be compared."""
    return [i for i in range(k) if min(float(S[i] - S[i + 1]),
                                       float(S[i - 1] - S[i]) if i else math.inf) > rel * float(S[i])]


def dense_svd(f, x):
    """The SVD (U, S, Vh) of the dense Jacobian of f at x, flattened to [dim h, dim x], in float64."""
    J = jacrev(f)(x).reshape(-1, x.numel()).double()
    return torch.linalg.svd(J, full_matrices=False)


def assert_matches_dense(b, U, S, Vh, k, degrees=1.0, rtol=1e-3):
    """A basis b against the dense SVD: singular values to rtol, and latent and tangent vectors within `degrees`
    on every separated index (at least one)."""
    assert torch.allclose(b.singular_values.double(), S[:k], rtol=rtol), (b.singular_values, S[:k])
    sep = separated(S, k)
    assert sep, "the test needs a usable spectral gap"
    for i in sep:
        assert float(principal_angles(b.latent[i:i + 1], Vh[i:i + 1]).max().rad2deg()) < degrees
        assert float(principal_angles(b.tangent[i].reshape(1, -1), U[:, i][None]).max().rad2deg()) < degrees
