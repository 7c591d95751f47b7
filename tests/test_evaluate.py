"""The quality judges of the bundled models: the shapes factor reader against procedural ground truth."""
import numpy as np
import pytest
import torch

from latentbasis.data import render_shapes, shapes_images
from latentbasis.evaluate import read_shapes, shape_measurements, shapes_reader


@pytest.fixture(scope="module")
def reader():
    return shapes_reader(n=1000, seed=1)


def test_reader_recovers_the_factors_of_held_out_shapes(reader):
    images, f = shapes_images(300, seed=5)
    got = read_shapes(reader, images)
    assert (got["kind"] == f["kind"]).mean() >= 0.99
    for k in ("x", "y", "size"):
        r2 = 1 - ((got[k] - f[k]) ** 2).sum() / ((f[k] - f[k].mean()) ** 2).sum()
        assert r2 >= 0.99, (k, r2)
    hue_err = np.abs((got["hue"] - f["hue"] + 0.5) % 1 - 0.5)
    assert hue_err.max() < 0.01 and np.abs(got["background"] - f["background"]).max() < 0.01


def test_measurements_follow_the_shape():
    f = {"kind": np.array([0, 0]), "x": np.array([0.3, 0.6]), "y": np.array([0.5, 0.5]),
         "size": np.array([0.15, 0.15]), "hue": np.array([0.2, 0.2]), "background": np.array([0.3, 0.3])}
    m = shape_measurements(render_shapes(f))
    assert m[1, 0] - m[0, 0] == pytest.approx(0.3, abs=0.01) and m[0, 1] == pytest.approx(0.5, abs=0.01)
    assert m[0, 3] == pytest.approx(0.15, abs=0.01)               # square half-extent from its area
    assert m[0, 6] < m[0, 7] and m[0, 6] < m[0, 8]               # the square template fits a square best


def test_recovery_accepts_clean_shapes_and_refuses_blank_or_noisy_images(reader):
    from latentbasis.evaluate import recovery

    images, _ = shapes_images(20, seed=6)
    blank = torch.zeros(1, 3, 32, 32)
    noisy = (images[:1] + torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    _, r2, ok = recovery(reader, torch.cat([images, blank, noisy]))
    assert ok[:20].all() and r2[:20].min() > 0.99
    assert not ok[20] and not ok[21]


def test_a_faint_tint_over_the_background_is_not_read_as_shape_area(reader):
    """Generated backgrounds are rarely exactly grey; a tint below the saturation floor must not grow the shape."""
    images, f = shapes_images(50, seed=7)
    tint = torch.tensor([0.06, -0.02, 0.0])[None, :, None, None]     # up to 0.08 / 2 saturation in [0, 1] units
    tinted = (images + tint).clamp(-1, 1)
    clean, got = read_shapes(reader, images), read_shapes(reader, tinted)
    assert np.abs(got["size"] - clean["size"]).max() < 0.01
    assert np.abs(got["x"] - f["x"]).max() < 0.02 and (got["kind"] == f["kind"]).mean() >= 0.98
