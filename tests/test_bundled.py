"""The bundled models load through the public loading path, offline, and sample recognisable output."""

import torch

from latentbasis import latent_basis, load_model, sample_to
from latentbasis.loading import MODELS_DIR, bundled_models


def test_bundled_models_are_present_and_small():
    assert {"digits", "digits-text", "shapes", "digits-flow"} <= set(bundled_models())
    for name in bundled_models():
        weights = sum(f.stat().st_size for f in (MODELS_DIR / name).rglob("*.safetensors"))
        assert 0 < weights < 20e6, name
        assert (MODELS_DIR / name / "README.md").exists(), f"{name} has no model card"
    assert sum(f.stat().st_size for f in MODELS_DIR.parent.rglob("*") if f.is_file()) < 50e6


def test_digits_loads_and_has_attention():
    m = load_model("digits")
    assert m.name == "digits" and m.x_shape == (1, 16, 16)
    assert any("Attn" in type(b).__name__ for b in m.unet.down_blocks)


def test_digits_samples_are_digits():
    """A smaller version of the model card's check: 32 samples, the classifier's confidence ratio >= 0.75."""
    from latentbasis.evaluate import digits_quality

    q = digits_quality(load_model("digits"), n=32, num_steps=25)
    assert q["ratio"] >= 0.75, q
    assert q["classes"] >= 7, q


def test_basis_on_digits():
    m = load_model("digits")
    b = latent_basis(m, sample_to(m, 0, t=0.6), t=0.6, k=4)
    assert float(b.residuals.max()) <= 1e-3 and (b.singular_values[:-1] >= b.singular_values[1:]).all()


def test_digits_text_is_a_text_pipeline_that_follows_prompts():
    """The SD stand-in: loaded like any SD-style pipeline (no VAE); a small version of the model card's check."""
    from latentbasis.evaluate import prompt_following

    m = load_model("digits-text")
    assert m.conditional and m.vae is None and m.x_shape == (1, 16, 16)
    p = prompt_following(m, per_prompt=2, guidance=3.0, num_steps=25, templates=(0,))
    assert p["accuracy"] >= 0.6, p


def test_prompted_basis_on_digits_text():
    m = load_model("digits-text")
    x = sample_to(m, 0, t=0.6, prompt="the digit seven", guidance=3.0)
    b = latent_basis(m, x, t=0.6, k=4, prompt="the digit seven")
    assert b.prompt == "the digit seven" and float(b.residuals.max()) <= 1e-3


def test_shapes_is_rgb_and_its_samples_are_shapes_the_reader_recovers():
    """A smaller version of the model card's check: 32 samples; the reader itself must be right on held-out
    procedural shapes, and at least 60 % of the samples must be recovered (re-rendering explains >= 90 % of pixels)."""
    from latentbasis.evaluate import shapes_quality, shapes_reader

    m = load_model("shapes")
    assert m.x_shape == (3, 32, 32) and m.clip_sample == 1.0
    q = shapes_quality(m, n=32, reader=shapes_reader(n=1000))
    assert q["held_out"]["kind_accuracy"] >= 0.95 and q["held_out"]["size_r2"] >= 0.95, q["held_out"]
    assert q["recovered"] >= 0.6, q["recovered"]
    assert min(q["kinds"]) >= 3, q["kinds"]                       # all three kinds are drawn


def test_digits_flow_is_a_class_conditional_flow_transformer_that_follows_its_labels():
    """The bundled flow-matching DiT: loaded like any transformer folder; a smaller version of its model card's
    checks (unconditional samples are digits of several classes, guided samples show their label)."""
    from latentbasis.evaluate import digits_quality, label_following

    m = load_model("digits-flow")
    assert m.family == "transformer" and m.flow and m.conditioning == "class" and m.num_classes == 10
    q = digits_quality(m, n=32, num_steps=25)
    assert q["ratio"] >= 0.75 and q["classes"] >= 7, q
    p = label_following(m, per_label=2, guidance=3.0, num_steps=25)
    assert p["accuracy"] >= 0.7, p


def test_digits_flow_basis_matches_the_dense_jacobian():
    """The bundled flow transformer at its default layer, label 7: the basis against the SVD of the dense Jacobian
    (256 x 6144)."""
    from helpers import assert_matches_dense, dense_svd

    m = load_model("digits-flow")
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(3))
    U, S, Vh = dense_svd(m.features(600, "7"), x)
    b = latent_basis(m, x, timestep=600, k=4, prompt="7", tol=1e-5)
    assert_matches_dense(b, U, S, Vh, 4)


def test_basis_and_edit_on_digits_flow():
    from latentbasis.editing import edit_images, sweep_directions
    from latentbasis.sampling import sample_trajectory

    m = load_model("digits-flow")
    tr = sample_trajectory(m, 0, num_steps=30, prompt="7", guidance=3.0, through=599)
    b = latent_basis(m, tr.at(599), timestep=599, k=4, prompt="7")
    assert float(b.residuals.max()) <= 1e-3 and b.layer == m.default_layer and b.tangent.shape[1:] == (64, 96)
    out = edit_images(m, tr, 599, sweep_directions(b.latent, [0], [-4.0, 4.0]))
    assert not torch.equal(out[0], out[1])
