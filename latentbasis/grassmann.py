"""Distances between k-dimensional subspaces (points on the Grassmannian).

Subspaces are given as [k, ...] tensors whose rows span them (any shape after the first axis; rows need not be
orthonormal: they are orthonormalised here).
"""
from __future__ import annotations

import torch


def orthonormal_rows(A: torch.Tensor) -> torch.Tensor:
    """[k, ...] -> [D, k] float64 with orthonormal columns spanning the rows of A."""
    M = A.reshape(A.shape[0], -1).to(torch.float64).T
    return torch.linalg.qr(M)[0]


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """theta_i = arccos(sigma_i(Qa^T Qb)), ascending, in radians; [min(ka, kb)]."""
    s = torch.linalg.svdvals(orthonormal_rows(A).T @ orthonormal_rows(B))
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
