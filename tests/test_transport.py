"""Carrying directions: global directions (the mean projector's eigenvectors) and what they do on each sample."""
import pytest
import torch
from helpers import blob, isotropic_gaussian

from latentbasis import Basis, LatentBasisError, load_basis, save_basis
from latentbasis.basis import Provenance
from latentbasis.basisfile import info_lines
from latentbasis.describe import gist, shared_descriptions
from latentbasis.transport import global_directions


def _basis(tangent, latent=None, timestep=599, point=None):
    latent = tangent if latent is None else latent
    k = tangent.shape[0]
    return Basis(latent=latent, tangent=tangent, singular_values=torch.ones(k),
                 point=torch.zeros(latent.shape[1:]) if point is None else point, residuals=torch.zeros(k),
                 provenance=Provenance(timestep=timestep))


def test_global_directions_are_the_top_eigenvectors_of_the_mean_projector():
    """Random orthonormal spans: the shares are the mean projector's top eigenvalues, the tangent rows its
    eigenvectors; a direction every span holds comes first with share 1."""
    gen = torch.Generator().manual_seed(0)
    n, k, d = 5, 3, 12
    common = torch.zeros(d)
    common[0] = 1.0
    spans = []
    for _ in range(n):
        rest = torch.linalg.qr(torch.randn(d - 1, k - 1, generator=gen, dtype=torch.float64))[0].T
        spans.append(torch.cat([common[None].double(), torch.cat([torch.zeros(k - 1, 1), rest], 1)]).float())
    g = global_directions([_basis(U) for U in spans], k)
    M = sum(U.double().T @ U.double() for U in spans) / n
    evals, evecs = torch.linalg.eigh(M)
    assert torch.allclose(g.singular_values.double(), evals.flip(0)[:k], atol=1e-5)
    assert abs(float(g.singular_values[0]) - 1.0) < 1e-6 and abs(float(g.tangent[0] @ common)) > 1 - 1e-6
    for i in range(k):
        assert abs(float(g.tangent[i].double() @ evecs[:, -1 - i])) > 1 - 1e-4
    with pytest.raises(LatentBasisError, match="one model, timestep and space"):
        global_directions([_basis(spans[0]), _basis(spans[1], timestep=199)], k)


def _desc(name, reading="edit"):
    return {"name": name, "shares": {"shift": 1.0}, "outside": None, "coefficients": {}, "reading": reading,
            "strength": 6.0}


def test_a_shared_description_is_what_most_samples_show():
    assert gist("shifts right 0.03 box, grows 5 %") == "shifts right" and gist("darkens the background") == "darkens"
    assert gist("less blue in the content") == "less blue" and gist("grows 1.2e-05 %") == "grows"
    per = [[_desc("shifts right 0.02 box"), _desc("darkens"), None],
           [_desc("shifts left 0.01 box"), _desc("brightens"), None],
           [_desc("shifts right 0.04 box, grows 2 %"), _desc("darkens the background"), None]]
    out = shared_descriptions(per, {"reading": "edit", "strength": 6.0})
    assert [(d["name"], d["agreeing"], d["samples"]) for d in out[:2]] == \
        [("shifts right 0.02 box", 2, 3), ("darkens", 2, 3)]
    assert out[2]["agreeing"] == 0 and sum(out[2]["shares"].values()) == 0 and out[2]["reading"] == "edit"
    tie = shared_descriptions([[_desc("brightens")], [_desc("more red")]], {"reading": "change"})
    assert (tie[0]["name"], tie[0]["agreeing"]) == ("brightens", 1)          # a tie: the earliest sample's
    with pytest.raises(LatentBasisError):
        shared_descriptions([[_desc("brightens")], []], {"reading": "change"})


def test_global_directions_are_described_by_what_they_do_on_each_sample(tmp_path):
    """On an isotropic Gaussian model (a finished edit changes the image by c s v: test_registration) with built
    bases: each sample carries the global tangent vectors e1, e2, e3 onto its own latent rows. Samples 0 and 1 turn
    them into a shift, a brightening and more red; sample 2 into the same with less red; sample 3's span does not
    hold e3 at all. The descriptions: the shift and the brightening on 4 of 4, more red on 2 of 4; the counts
    travel in the basis file and `info` prints them; a file whose counts are off is refused."""
    from latentbasis.basis import GlobalDirections
    from latentbasis.editing import EditSettings
    from latentbasis.motion import motion_fields
    from latentbasis.sampling import sample_trajectory
    from latentbasis.transport import describe_global

    image = blob(3, 16, cx=7.0, cy=8.0, r=2.5)
    model = isotropic_gaussian(image)
    ts = 599
    shift = motion_fields(image, torch.ones(image.shape, dtype=torch.bool))[0]
    red, green = torch.zeros_like(image), torch.zeros_like(image)
    red[0], red[1], red[2] = 1.0, -0.5, -0.5
    green[0], green[1], green[2] = -0.5, 1.0, -0.5
    shift, bright, red, green = (u / u.norm() for u in (shift, torch.ones_like(image), red, green))
    e = torch.eye(4).reshape(4, 4, 1, 1)                                     # tangent vectors in a 4-d h
    rows = [(torch.stack([shift, bright, red]), e[:3]), (torch.stack([shift, bright, red]), e[:3]),
            (torch.stack([shift, bright, -red]), e[:3]), (torch.stack([shift, bright, green]), e[[0, 1, 3]])]
    trajectories = [sample_trajectory(model, seed, num_steps=20, through=[ts]) for seed in range(4)]
    bases = [_basis(U, V.float(), ts, traj.at(ts)) for (V, U), traj in zip(rows, trajectories)]
    for b in bases:
        b.model, b.model_hash = model.name, model.model_hash
    g = GlobalDirections(latent=torch.stack([shift, bright, red]), tangent=e[:3], singular_values=torch.ones(3),
                         point=bases[0].point, residuals=torch.zeros(3),
                         provenance=Provenance(timestep=ts, model=model.name, model_hash=model.model_hash,
                                               algorithm="global"))
    out = describe_global(model, g, bases, trajectories, "edit", 6.0, settings=EditSettings("direct"))
    assert [(gist(d["name"]), d["agreeing"], d["samples"]) for d in out] == \
        [("shifts right", 4, 4), ("brightens", 4, 4), ("more red", 2, 4)]
    f = tmp_path / "g.safetensors"
    save_basis(g, f)
    assert [(d["agreeing"], d["samples"]) for d in load_basis(f).descriptions] == [(4, 4), (4, 4), (2, 4)]
    text = "\n".join(info_lines(f))
    assert "on each of 4 samples" in text and "; the same on 2 of 4 samples" in text
    assert text.count("; the same on all 4 samples") == 2

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(f, "pt") as fh:
        meta, tensors = fh.metadata(), {name: fh.get_tensor(name) for name in fh.keys()}
    meta["descriptions"] = meta["descriptions"].replace('"agreeing": 2', '"agreeing": 5')
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(LatentBasisError, match="sample counts"):
        load_basis(tmp_path / "bad.safetensors")
