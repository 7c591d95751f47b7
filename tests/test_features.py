"""The feature map h = f_t(x_t) against a hand-written partial forward, and under torch.func."""
import pytest
import torch
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from latentbasis import LatentBasisError, load_model


def oracle_mid_block(unet, x, timestep, ehs=None):
    """time_proj -> time_embedding -> conv_in -> every down block -> mid_block, written out by hand."""
    t = torch.full((x.shape[0],), timestep, dtype=torch.long)
    emb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
    h = unet.conv_in(x)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=ehs)
        else:
            h, _ = block(hidden_states=h, temb=emb)
    if ehs is None:
        return unet.mid_block(h, emb)
    return unet.mid_block(h, emb, encoder_hidden_states=ehs)


@pytest.fixture(scope="module")
def pixel(tiny_unet_dir):
    return load_model(str(tiny_unet_dir))


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return load_model(str(tiny_sd_dir))


def test_matches_hand_written_forward(pixel):
    x = torch.randn(3, *pixel.x_shape)
    with torch.no_grad():
        assert torch.allclose(pixel.feature_forward(x, 321, None, "mid_block"), oracle_mid_block(pixel.unet, x, 321),
                              atol=1e-5)


def test_matches_hand_written_forward_with_prompt(sd):
    x = torch.randn(2, *sd.x_shape)
    cond = sd.encode_prompt("the digit seven")
    with torch.no_grad():
        got = sd.feature_forward(x, 500, cond, "mid_block")
        want = oracle_mid_block(sd.unet, x, 500, cond.inputs["encoder_hidden_states"].expand(2, -1, -1))
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("which", ["pixel", "sd"])
def test_forward_and_reverse_mode_agree(which, pixel, sd):
    """jacfwd (forward mode through attention and group_norm) equals jacrev, and <u, Jv> = <J^T u, v>."""
    model = pixel if which == "pixel" else sd
    f = model.features(400, prompt="a cat" if which == "sd" else None)
    x = torch.randn(model.x_shape)
    Jf, Jr = jacfwd(f)(x), jacrev(f)(x)
    assert torch.allclose(Jf, Jr, atol=1e-4 * Jr.abs().max())
    v, h = torch.randn_like(x), f(x)
    u = torch.randn_like(h)
    Jv = jvp(f, (x,), (v,))[1]
    JTu = vjp(f, x)[1](u)[0]
    assert torch.allclose((u * Jv).sum(), (JTu * v).sum(), rtol=1e-4)
    # batched tangents under vmap give the same as one by one
    V = torch.randn(3, *model.x_shape)
    batched = vmap(lambda w: jvp(f, (x,), (w,))[1])(V)
    assert torch.allclose(batched[1], jvp(f, (x,), (V[1],))[1], atol=1e-5)


def test_prompt_changes_features(sd):
    x = torch.randn(sd.x_shape)
    assert not torch.allclose(sd.features(500, "a cat")(x), sd.features(500, "the digit seven")(x))


def test_unknown_layer(pixel):
    with pytest.raises(LatentBasisError, match="no layer"):
        pixel.features(10, layer="not_a_block")(torch.randn(pixel.x_shape))


def test_other_layer(pixel):
    h = pixel.features(10, layer="down_blocks.0")(torch.randn(pixel.x_shape))
    assert h.shape == (8, 4, 4)


def test_the_feature_map_leaves_the_model_untouched(tiny_unet_dir):
    """Hooks live only during the feature map: sampling after a basis is bit-identical to sampling before it
    (so an edit recipe replays to the same pixels in a fresh process)."""
    from latentbasis.basis import latent_basis
    from latentbasis.loading import load_model
    from latentbasis.sampling import sample_trajectory

    model = load_model(str(tiny_unet_dir))
    before = sample_trajectory(model, 3, num_steps=10, through=500)
    latent_basis(model, before.at(500), timestep=500, k=2)
    after = sample_trajectory(model, 3, num_steps=10, through=500)
    assert torch.equal(before.xs, after.xs)
    assert not any(m._forward_hooks for m in model.unet.modules())
