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
