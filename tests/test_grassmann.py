import math

import pytest
import torch

from latentbasis.grassmann import chordal_distance, geodesic_distance, principal_angles, random_subspace_distances


def subspaces_with_angles(n: int, angles: list[float], seed: int = 0):
    """A = span(e_1..e_k), B = span(cos t_i e_i + sin t_i e_{k+i}), both rotated by one random orthogonal Q."""
    k = len(angles)
    A = torch.zeros(k, n, dtype=torch.float64)
    B = torch.zeros(k, n, dtype=torch.float64)
    for i, t in enumerate(angles):
        A[i, i] = 1.0
        B[i, i], B[i, k + i] = math.cos(t), math.sin(t)
    Q = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]
    return A @ Q, B @ Q


def test_identical_subspaces_are_at_distance_zero():
    g = torch.Generator().manual_seed(0)            # float64: a float32 product moves the subspace by ~1e-6 itself
    A = torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64)
    mixed = torch.randn(4, 4, generator=g, dtype=torch.float64) @ A.reshape(4, -1)  # another basis of the same subspace
    assert float(geodesic_distance(A, mixed)) < 1e-6 and float(chordal_distance(A, mixed)) < 1e-6


def test_chosen_principal_angles_are_recovered():
    angles = [0.1, 0.4, 0.9, 1.3]
    A, B = subspaces_with_angles(20, angles)
    assert torch.allclose(principal_angles(A, B), torch.tensor(angles, dtype=torch.float64), atol=1e-10)
    assert float(geodesic_distance(A, B)) == pytest.approx(math.sqrt(sum(t * t for t in angles)), abs=1e-10)
    assert float(chordal_distance(A, B)) == pytest.approx(math.sqrt(sum(math.sin(t) ** 2 for t in angles)), abs=1e-10)


@pytest.mark.parametrize("n,k", [(10, 2), (64, 8)])
def test_random_baseline_matches_the_exact_chordal_mean(n, k):
    r = random_subspace_distances(n, k, samples=800, seed=1)
    # E[chordal^2] = k (1 - k/n); the Monte Carlo mean of chordal^2 is mean^2 + var
    second_moment = r["chordal_mean"] ** 2 + r["chordal_std"] ** 2
    assert second_moment == pytest.approx(k * (1 - k / n), rel=0.03)
    assert 0 < r["geodesic_mean"] <= math.sqrt(k) * math.pi / 2


def test_random_baseline_against_an_independent_monte_carlo():
    r = random_subspace_distances(30, 3, samples=400, seed=2)
    g = torch.Generator().manual_seed(99)
    d = [float(geodesic_distance(torch.randn(3, 30, generator=g), torch.randn(3, 30, generator=g)))
         for _ in range(400)]
    assert r["geodesic_mean"] == pytest.approx(sum(d) / len(d), rel=0.03)
