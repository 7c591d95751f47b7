"""Distances between k-dimensional subspaces (points on the Grassmannian).

Subspaces are given as [k, ...] tensors whose rows span them (any shape after the first axis; rows need not be
orthonormal: they are orthonormalised here).
"""
from __future__ import annotations

import torch

from .errors import LatentBasisError
from .validate import count


def orthonormal_rows(A: torch.Tensor, name: str = "A") -> torch.Tensor:
    """[k, ...] -> [D, k] float64 with orthonormal columns spanning the rows of A. A must be a floating tensor of
    k <= D finite rows that are linearly independent (|R_ii| of its QR above 1e-10 of the largest): anything else
    spans no k-dimensional subspace and is one message naming it."""
    if not isinstance(A, torch.Tensor) or not A.is_floating_point() or A.dim() < 2:
        what = type(A).__name__ if not isinstance(A, torch.Tensor) else f"{str(A.dtype)[6:]} {tuple(A.shape)}"
        raise LatentBasisError(f"{name} must be a floating-point torch.Tensor [k, ...] whose rows span a subspace, "
                               f"got {what}")
    M = A.reshape(A.shape[0], -1).to(torch.float64).T
    if not 1 <= M.shape[1] <= M.shape[0]:
        raise LatentBasisError(f"{name} has shape {tuple(A.shape)}: it needs 1 <= k <= D rows of D numbers")
    if not bool(torch.isfinite(M).all()):
        raise LatentBasisError(f"{name} holds NaN or infinite values")
    Q, R = torch.linalg.qr(M)
    d = R.diagonal().abs()
    if bool((d <= 1e-10 * d.max()).any()):          # all zero rows included: then every d_i <= 0
        raise LatentBasisError(f"the rows of {name} are not linearly independent: they span fewer than "
                               f"{M.shape[1]} dimensions")
    return Q


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """theta_i = arccos(sigma_i(Qa^T Qb)), ascending, in radians; [min(ka, kb)]. A and B: [k, ...] with the same
    number of entries per row."""
    Qa, Qb = orthonormal_rows(A, "A"), orthonormal_rows(B, "B")
    if Qa.shape[0] != Qb.shape[0]:
        raise LatentBasisError(f"A and B live in different spaces: rows of {Qa.shape[0]} and {Qb.shape[0]} numbers")
    s = torch.linalg.svdvals(Qa.T @ Qb)
    return torch.arccos(s.clamp(-1.0, 1.0)).sort().values


def geodesic_distance(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Grassmannian geodesic distance d(A, B) = sqrt(sum_i theta_i^2)."""
    return principal_angles(A, B).square().sum().sqrt()


def chordal_distance(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Projection (chordal) distance sqrt(sum_i sin^2 theta_i) = ||P_A - P_B||_F / sqrt(2)."""
    return principal_angles(A, B).sin().square().sum().sqrt()


def random_subspace_distances(n: int, k: int, samples: int = 256, seed: int = 0) -> dict[str, float]:
    """Baseline: geodesic and chordal distances between two independent uniformly random k-dimensional subspaces
    of R^n (QR of Gaussian matrices), Monte Carlo over `samples` pairs.

    Returns mean and standard deviation of each. For reference, E[chordal^2] = k (1 - k/n) exactly, since
    E ||P_A P_B||_F^2 = k^2 / n.
    """
    n = count(n, "n", 1 << 30)
    k = count(k, "k", n)
    samples = count(samples, "samples", 1 << 20)
    g = torch.Generator().manual_seed(seed)
    geo, cho = [], []
    for _ in range(samples):
        a = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
        b = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
        theta = torch.arccos(torch.linalg.svdvals(a.T @ b).clamp(-1, 1))
        geo.append(float(theta.square().sum().sqrt()))
        cho.append(float(theta.sin().square().sum().sqrt()))
    t_geo, t_cho = torch.tensor(geo), torch.tensor(cho)
    return {"geodesic_mean": float(t_geo.mean()), "geodesic_std": float(t_geo.std()),
            "chordal_mean": float(t_cho.mean()), "chordal_std": float(t_cho.std())}
