import json

import pytest
import torch
from safetensors import safe_open

from latentbasis import LatentBasisError, latent_basis, load_basis, load_model, save_basis
from latentbasis.basisfile import FORMAT

KEYS = {"format", "model", "model_hash", "layer", "timestep", "t_fraction", "prompt", "k", "algorithm", "jvps",
        "vjps", "residuals", "seed", "version"}


@pytest.fixture(scope="module")
def model(tiny_unet_dir):
    return load_model(str(tiny_unet_dir))


@pytest.fixture(scope="module")
def basis(model):
    return latent_basis(model, torch.randn(model.x_shape), t=0.6, k=3, seed=2)


def test_round_trip(basis, model, tmp_path):
    p = save_basis(basis, tmp_path / "b.safetensors")
    b = load_basis(p, model=model)
    for name in ("latent", "tangent", "singular_values", "point", "residuals"):
        assert torch.equal(getattr(b, name), getattr(basis, name).float())
    assert (b.timestep, b.k, b.jvps, b.vjps, b.seed, b.model_hash) == (
        basis.timestep, 3, basis.jvps, basis.vjps, 2, model.model_hash)


def test_header_is_the_documented_format(basis, tmp_path):
    p = save_basis(basis, tmp_path / "b.safetensors")
    with safe_open(str(p), framework="pt") as fh:
        meta = fh.metadata()
        assert set(fh.keys()) == {"latent", "tangent", "singular_values", "point"}
        assert all(fh.get_tensor(n).dtype == torch.float32 for n in fh.keys())
    assert KEYS <= set(meta) and all(isinstance(v, str) for v in meta.values())
    assert meta["format"] == FORMAT and meta["timestep"] == "599" and meta["k"] == "3"
    assert len(json.loads(meta["residuals"])) == 3 and float(meta["t_fraction"]) == 0.6


def test_other_model_refused(basis, other_unet_dir, tmp_path):
    p = save_basis(basis, tmp_path / "b.safetensors")
    with pytest.raises(LatentBasisError, match="computed with model"):
        load_basis(p, model=load_model(str(other_unet_dir)))


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_file(tmp_path, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(LatentBasisError):
        load_basis(p)


def test_truncated_file(basis, tmp_path):
    p = save_basis(basis, tmp_path / "b.safetensors")
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(LatentBasisError, match="not a readable basis file"):
        load_basis(p)


def test_missing_file(tmp_path):
    with pytest.raises(LatentBasisError, match="does not exist"):
        load_basis(tmp_path / "nope.safetensors")


def test_failed_write_keeps_the_old_file(basis, tmp_path, monkeypatch):
    p = save_basis(basis, tmp_path / "b.safetensors")
    before = p.read_bytes()
    import safetensors.torch

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_basis(basis, p)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["b.safetensors"]  # no temporary left behind


def test_what_would_not_load_back_is_not_written(basis, tmp_path):
    """save_basis reads its temporary file back with load_basis before the rename: a basis its own reader would
    refuse (a NaN from a broken model, a description's share out of [0, 1]) is one message, and the file already
    at the path stays as it was, no temporary left."""
    import copy

    p = save_basis(basis, tmp_path / "b.safetensors")
    before = p.read_bytes()
    broken = copy.deepcopy(basis)
    broken.latent[0, 0] = float("nan")
    shares = {"shift": 5.6}
    described = copy.deepcopy(basis)
    described.descriptions = [{"name": "x", "shares": shares, "reading": "edit", "strength": 6.0}] * basis.k
    for bad, says in ((broken, "latent"), (described, "share 'shift'")):
        with pytest.raises(LatentBasisError, match="was not written: the basis would not load back") as e:
            save_basis(bad, p)
        assert says in str(e.value) and ".tmp" not in str(e.value), e.value
        assert p.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["b.safetensors"]


def test_every_output_gets_the_same_permissions(tiny_unet_dir, tmp_path):
    """Basis files (written by safetensors, which makes 0600 files), pictures and recipes all follow the umask."""
    import os
    import stat

    from latentbasis.cli import main

    out = tmp_path / "e.png"
    assert main(["basis", "--model", str(tiny_unet_dir), "--k", "2", "--steps", "3", "--quiet",
                 "--out", str(tmp_path / "b.safetensors")]) == 0
    assert main(["edit", "--model", str(tiny_unet_dir), "--k", "1", "--steps", "3", "--n-iter", "1", "--quiet",
                 "--strengths", "1", "--out", str(out)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert set(modes) == {"b.safetensors", "b.png", "e.png", "e.json"}
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_a_region_keeps_its_mask_and_a_changed_mask_is_refused(model, tmp_path):
    from safetensors.torch import load_file, save_file

    from latentbasis.masks import parse_mask

    mask = parse_mask("1,1,5,6", 8)
    b = latent_basis(model, torch.randn(model.x_shape), timestep=400, k=2, space="x0", mask=mask)
    path = save_basis(b, tmp_path / "r.safetensors")
    assert torch.equal(load_basis(path).mask, mask)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    tensors["mask"][0, 0] = 1.0                       # another region than the header's mask_sha256
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(LatentBasisError, match="does not match the header's mask_sha256"):
        load_basis(tmp_path / "bad.safetensors")
