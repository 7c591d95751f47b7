"""latentbasis.describe: what each direction does to the denoised image, checked on changes built to be a shift, a
brightness change and a fine-detail pattern, directly and through the Gaussian model (whose x0_hat is known)."""
import torch

from latentbasis import Basis, GaussianModel, load_basis, save_basis
from latentbasis.basis import Provenance
from latentbasis.describe import decompose_change, describe_basis, name_change
from latentbasis.motion import motion_fields
from latentbasis.families.gaussian import ddpm_linear_alphas_cumprod

from helpers import blob


def built_changes(image):
    """A shift right, a brightness change and a fine checkerboard, each [C, n, n]."""
    C, n, _ = image.shape
    whole = torch.ones(image.shape, dtype=torch.bool)
    shift = motion_fields(image, whole)[0]
    bright = torch.ones_like(image)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    fine = ((-1.0) ** (i + j)).double().expand(C, n, n).clone()
    return {"shift": shift, "brightness": bright, "fine": fine}


def test_built_changes_are_named_as_built():
    for C in (1, 3):
        image = blob(C)
        for part, u in built_changes(image).items():
            d = decompose_change(image, 0.1 * u)
            assert abs(sum(d["shares"].values()) - 1) < 1e-9
            assert d["shares"][part] > 0.9, (C, part, d["shares"])
            name = name_change(d)
            assert {"shift": "shifts right", "brightness": "brightens", "fine": "fine detail"}[part] in name, name
    d = decompose_change(blob(), -0.1 * built_changes(blob())["shift"])
    assert "shifts left 0.05 box" in name_change(d)     # -0.1 of a half-box shift: 0.05 of the box, to the left


def test_a_region_says_inside_and_outside():
    image = blob()
    u = built_changes(image)["brightness"]
    region = torch.zeros(image.shape, dtype=torch.bool)
    region[:, 4:12, 4:12] = True
    d = decompose_change(image, u * region, region)
    assert d["outside"] == 0.0 and d["shares"]["brightness"] > 0.9 and "inside the region" in name_change(d)
    d = decompose_change(image, u, region)
    assert abs(d["outside"] - (1 - 64 / 256)) < 1e-9


def test_the_gaussian_models_directions_are_described_as_constructed(tmp_path):
    """An isotropic Gaussian (all variances equal) has J_x0 = g I, so a direction's change of x0_hat is the
    direction itself: built directions come out named as built, and the names travel in the basis file."""
    image = blob(3, 8, cx=3.5, cy=4.0, r=1.5)
    D = image.numel()
    model = GaussianModel(image.reshape(-1), torch.eye(D, dtype=torch.float64), torch.full((D,), 50.0,
                          dtype=torch.float64), torch.eye(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64),
                          tuple(image.shape), ddpm_linear_alphas_cumprod())
    ts = 300
    x_t = (float(model.alphas[ts]) * image).float()            # x0_hat(x_t) = mu = the image
    rows = torch.stack([u / u.norm() for u in built_changes(image).values()]).float()
    b = Basis(latent=rows, tangent=rows, singular_values=torch.ones(3), point=x_t, residuals=torch.zeros(3),
              provenance=Provenance(timestep=ts, model=model.name, model_hash=model.model_hash))
    described = describe_basis(model, b)
    for d, part, word in zip(described, ("shift", "brightness", "fine"), ("shifts right", "brightens", "fine detail")):
        assert d["shares"][part] > 0.9 and word in d["name"], d
    from latentbasis.describe import pick_direction

    assert pick_direction(described, "shift right")[:2] == (0, 1)
    assert pick_direction(described, "motion:x-")[:2] == (0, -1)          # the same direction, along its "-"
    assert pick_direction(described, "brighten")[:2] == (1, 1) and pick_direction(described, "darken")[:2] == (1, -1)
    assert pick_direction(described, "Fine  Detail")[:2] == (2, 1)
    import pytest

    from latentbasis import LatentBasisError

    with pytest.raises(LatentBasisError, match="shift right"):               # the message lists what it knows
        pick_direction(described, "make it prettier")
    save_basis(b, tmp_path / "b.safetensors")
    again = load_basis(tmp_path / "b.safetensors")
    assert [d["name"] for d in again.descriptions] == [d["name"] for d in described]
    b.descriptions = None                                       # an older file: no descriptions
    save_basis(b, tmp_path / "old.safetensors")
    assert load_basis(tmp_path / "old.safetensors").descriptions is None


def test_basis_and_info_print_a_line_per_direction(tmp_path, capsys):
    """`basis` describes what it computed and stores it; `info` prints `v1  <name> (<shares>)` for every direction,
    "no description" for an older file, and a tampered description is one message."""
    import json

    import pytest
    from safetensors import safe_open
    from safetensors.torch import save_file

    from latentbasis import LatentBasisError
    from latentbasis.cli import main

    out = tmp_path / "b.safetensors"
    assert main(["basis", "--model", "digits", "--k", "3", "--steps", "10", "--quiet", "--out", str(out),
                 "--png", ""]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    said = capsys.readouterr().out
    lines = [ln for ln in said.splitlines() if ln[:2] in ("v1", "v2", "v3")]
    assert [ln.split()[0] for ln in lines] == ["v1", "v2", "v3"]
    assert all("(" in ln and "no description" not in ln for ln in lines)
    assert "as edited from -6 to +6 and registered" in said                  # the reading `edit` prints
    first = tmp_path / "first.safetensors"
    assert main(["basis", "--model", "digits", "--k", "3", "--steps", "10", "--quiet", "--out", str(first),
                 "--png", "", "--describe", "change"]) == 0
    assert "by the first-order change of x0_hat" in capsys.readouterr().out
    assert [d["reading"] for d in load_basis(first).descriptions] == ["change"] * 3
    with safe_open(str(out), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    stored = json.loads(meta.pop("descriptions"))
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    assert main(["info", str(tmp_path / "old.safetensors")]) == 0
    assert capsys.readouterr().out.count("no description") == 3
    older = [{key: x for key, x in d.items() if key not in ("reading", "strength")} for d in stored]
    save_file(tensors, str(tmp_path / "older.safetensors"), metadata=dict(meta, descriptions=json.dumps(older)))
    assert main(["info", str(tmp_path / "older.safetensors")]) == 0     # described before the reading was stored
    assert "by the first-order change of x0_hat" in capsys.readouterr().out
    for told in ([{"name": "x", "shares": {"shift": 7}}] * 3, [dict(d, reading="exec") for d in stored],
                 [dict(d, strength=float("nan")) for d in stored], [dict(d, strength=-6) for d in stored],
                 [dict(stored[0], reading="change")] + stored[1:]):         # ... and two readings in one file
        bad = dict(meta, descriptions=json.dumps(told))
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=bad)
        with pytest.raises(LatentBasisError, match="corrupt header"):
            load_basis(tmp_path / "bad.safetensors")


def test_edit_picks_a_direction_by_its_description(tmp_path, capsys):
    """`edit --direction "shift right"` says which direction it picked, keeps the query in the recipe, and the
    replay gives the same pixels; a query it does not know is one message."""
    import json

    import numpy as np
    from PIL import Image

    from latentbasis.cli import main

    out = tmp_path / "e.png"
    assert main(["edit", "--model", "digits", "--k", "3", "--steps", "10", "--strengths", "0,3", "--n-iter", "2",
                 "--direction", "shift right", "--quiet", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "note: picked shift right: v" in said
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["direction"] == "shift right" and len(r["directions"]) == 1
    again = tmp_path / "again.png"
    assert main(["edit", "--recipe", str(out.with_suffix(".json")), "--quiet", "--out", str(again)]) == 0
    with Image.open(out) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert main(["edit", "--model", "digits", "--direction", "sideways", "--quiet",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "not one latentbasis can look for" in capsys.readouterr().err


def test_a_class_models_directions_name_the_label_whose_change_of_h_they_follow(tmp_path):
    """condition_alignment on the bundled class-conditional digits-flow: per direction, the label c of largest
    |cos(u_i, h(x_t; c) - h(x_t; c0))| (c0 the basis' own label), recomputed here from that definition; stored in
    the basis file and printed by info; no such line for an unconditional model or a text model without prompts."""
    from latentbasis import latent_basis, load_model
    from latentbasis.basisfile import info_lines
    from latentbasis.describe import condition_alignment

    model = load_model("digits-flow", device="cpu")
    x = torch.randn(model.x_shape, generator=torch.Generator().manual_seed(0))
    b = latent_basis(model, x, timestep=600, k=3, prompt="7")
    h0 = model.features(600, "7")(x).reshape(-1).double()
    deltas = torch.stack([model.features(600, str(c))(x).reshape(-1).double() - h0 for c in range(10)])
    aligned = condition_alignment(model, b)
    for i, a in enumerate(aligned):
        u = b.tangent[i].reshape(-1).double()
        cos = (deltas @ u) / (deltas.norm(dim=1) * u.norm()).clamp(min=1e-300)
        j = int(cos.abs().argmax())
        assert a["kind"] == "label" and a["condition"] == str(j) and abs(a["cosine"] - float(cos[j])) < 1e-6, a
    assert abs(aligned[0]["cosine"]) > 0.0
    describe_basis(model, b)
    save_basis(b, tmp_path / "b.safetensors")
    loaded = load_basis(tmp_path / "b.safetensors")
    assert [d["condition"] for d in loaded.descriptions] == [d["condition"] for d in b.descriptions]
    lines = info_lines(tmp_path / "b.safetensors")
    assert sum("closest label" in line for line in lines) == 3, lines
    digits = load_model("digits", device="cpu")
    assert condition_alignment(digits, latent_basis(digits, torch.zeros(digits.x_shape), timestep=500, k=2)) is None
    text = load_model("digits-text", device="cpu")
    tb = latent_basis(text, torch.zeros(text.x_shape), timestep=500, k=2, prompt="the digit seven")
    assert condition_alignment(text, tb) is None
    (a,) = condition_alignment(text, tb, ["the digit one"])[:1]
    assert a["kind"] == "prompt" and a["condition"] == "the digit one" and -1 <= a["cosine"] <= 1
