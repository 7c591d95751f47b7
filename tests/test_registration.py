"""latentbasis.registration: a finished edit described by registering its two ends, checked on edits built to be a
shift, a growth, a colour change, a brightening and a change of shape."""
import torch

from latentbasis import latent_basis, load_model
from latentbasis.editing import EditSettings, edit_images, sweep_directions
from latentbasis.loading import resolve_timestep
from latentbasis.recipe import EditRecipe, EditResult
from latentbasis.registration import _similarity_warp, describe_edit
from latentbasis.sampling import sample_trajectory

from helpers import blob, isotropic_gaussian


def test_an_edits_own_result_is_described_by_registration():
    """describe_edit registers the image edited at -s onto the one at +s: built finite edits (a 3-pixel shift, a
    20 % growth, a redder blob, a brightening, a brighter background, a flat disc turned into a square of its area)
    come out named as built, with shares > 0.9, the size per unit strength and where a level or colour change is
    (the content or the background) when it is only one's; a shape change is no motion or colour (the rest, by
    frequency)."""
    image = blob(3, 32, cx=15.0, cy=16.0, r=4.0)

    def moved(dx=0.0, ls=0.0):
        return _similarity_warp(image, torch.tensor([dx, 0.0, ls, 0.0], dtype=torch.float64))

    d = describe_edit(moved(dx=3 / 16), moved(dx=-3 / 16), 2.0)          # 6 pixels of 32 over 2 x 2 strength
    assert d["shares"]["shift"] > 0.9 and d["name"] == "shifts right 0.047 box", d
    d = describe_edit(moved(ls=0.1), moved(ls=-0.1), 1.0)
    assert d["shares"]["scale"] > 0.9 and d["name"].startswith("grows 11 %"), d
    redder = torch.tensor([0.3, 0.0, -0.3], dtype=torch.float64)[:, None, None] * (image[0] + 0.5)  # mean 0
    d = describe_edit(image + redder, image - redder, 1.0)
    assert d["shares"]["colour"] > 0.9 and d["name"] == "more red in the content", d
    d = describe_edit(image - 0.2, image + 0.2, 1.0)
    assert d["shares"]["brightness"] > 0.9 and d["name"] == "darkens", d
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    outside = (((x - 15) ** 2 + (y - 16) ** 2) > 25).double()        # a flat disc: the background, not it, brightens
    disc = torch.where(outside.bool(), -0.5, torch.tensor([0.5, 0.2, -0.1])[:, None, None]).double()
    d = describe_edit(disc + 0.2 * outside, disc - 0.2 * outside, 1.0)
    assert d["shares"]["brightness"] > 0.9 and d["name"] == "brightens the background", d
    square = torch.full((3, 32, 32), -0.5, dtype=torch.float64)           # the disc's area, colour and centre
    square[:, 12:21, 11:20] = torch.tensor([0.5, 0.2, -0.1], dtype=torch.float64)[:, None, None]
    d = describe_edit(square, disc, 1.0)
    assert sum(d["shares"][p] for p in ("coarse", "mid", "fine")) > 0.5, d
    assert describe_edit(image, image, 1.0)["shares"] == dict.fromkeys(d["shares"], 0.0)   # no change: no parts


def test_an_edit_says_what_each_row_did_from_its_lowest_to_its_highest_strength():
    """EditResult.result_lines reads each row of the grid from its lowest to its highest strength (the order the
    strengths were given in does not matter): a row built as a shift to the right at rising strength is named so,
    per unit strength; one combined edit has no such lines."""
    image = blob(3, 32, cx=15.0, cy=16.0, r=4.0).float()
    strengths = [2.0, -2.0, 0.0]
    row = torch.stack([_similarity_warp(image.double(), torch.tensor([s * 0.05, 0, 0, 0], dtype=torch.float64))
                       for s in strengths]).float()
    recipe = EditRecipe(model="m", seed=0, timestep=500, directions=[1], strengths=strengths)
    res = EditResult(row[None], basis=None, trajectory=None, recipe=recipe)
    (line,) = res.result_lines()
    assert line.startswith("v2 from -2 to +2: shifts right 0.025 box (shift 1.00"), line   # 0.05 half-box per unit
    recipe.combination = {"0": 1.0}
    assert res.result_lines() == []


def test_shares_lie_in_0_1_and_add_up_to_1_whatever_the_images():
    """On pairs of noise images (a random network's edits look like this) no registration may explain less than
    nothing: the shares stay in [0, 1] and add up to 1. (A fit refined on blurred images could end farther from the
    image at +s than the one at -s is; the rest then held up to 5.6 times the whole change.)"""
    from latentbasis.registration import register_change

    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        C, n = (1 if seed % 2 else 3), (8 if seed % 3 else 16)
        minus = torch.rand(C, n, n, generator=g, dtype=torch.float64) * 2 - 1
        plus = (minus + 0.3 * torch.randn(C, n, n, generator=g, dtype=torch.float64)).clamp(-1, 1)
        shares = register_change(minus, plus, 6.0)["shares"]
        assert all(0 <= x <= 1 + 1e-9 for x in shares.values()) and abs(sum(shares.values()) - 1) < 1e-9, (seed, shares)


def test_a_jump_and_a_recolouring_share_by_the_pixels_each_changes_alone():
    """An object that jumps clear of itself and changes colour: motion and colour share the change in proportion to
    the pixel change each makes alone, 2 A |c0 - bg|^2 (the old place cleared, the new one filled) against
    A |c1 - c0|^2, here 3.30 : 1.16 (not in proportion to what each adds to the other, 2.25 : 1.16, which credits a
    colour map that blanks the old object)."""
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    bg = -0.5
    c0, c1 = torch.tensor([0.5, 0.2, -0.1]), torch.tensor([-0.3, 0.6, 0.5])

    def disc(cx, colour):
        inside = ((x - cx) ** 2 + (y - 16) ** 2) <= 16
        return torch.where(inside, colour[:, None, None], torch.tensor(bg)).double()

    d = describe_edit(disc(22.0, c1), disc(10.0, c0), 1.0)
    motion = 2 * float(((c0 - bg) ** 2).sum())
    expected = motion / (motion + float(((c1 - c0) ** 2).sum()))             # 0.74
    assert abs(d["shares"]["shift"] - expected) < 0.03 and abs(d["shares"]["colour"] - (1 - expected)) < 0.03, d
    assert d["name"].startswith("shifts right"), d


def test_a_grey_stroked_digits_edits_are_registered_as_what_they_do():
    """The bundled digits model's first four directions (the README's edit: seed 0, t = 0.6 T, +-6) are described
    as motions of the digit: no fit zooms the 16-pixel digit (scale per unit strength within 0.1), and none names the
    black background, which no edit changes. (With the content mask read as coverage of the farthest pixel, a
    digit's grey strokes were half content and v1 came out "darkens the background", zoomed sevenfold.)"""
    model = load_model("digits", device="cpu")
    ts = resolve_timestep(model.num_train_timesteps, fraction=0.6)[0]
    traj = sample_trajectory(model, 0, num_steps=50, through=[ts])
    b = latent_basis(model, traj.at(ts), timestep=ts, k=4)
    images = edit_images(model, traj, ts, sweep_directions(b.latent, [0, 1, 2, 3], [6.0, -6.0]),
                         EditSettings("guidance"))
    for i in range(4):
        d = describe_edit(images[2 * i], images[2 * i + 1], 6.0)
        assert abs(d["coefficients"]["scale"][0]) < 0.1 and "background" not in d["name"], (i, d)


def test_a_basis_is_described_by_what_its_edits_do():
    """describe_by_edits edits every direction at -s and +s and registers the pairs. On an isotropic Gaussian model
    (every DDIM step is affine with one gain for all of x, so a finished edit changes the image by c s v) built
    directions come out named as built, the same per unit strength at s = 2 and 6; the pick by description finds
    them; the reading travels in the basis file and `info` says which it is; with a region, the share of the change
    outside it is exact (a uniform brightening: the area outside, 3/4)."""
    from latentbasis import Basis, load_basis, save_basis
    from latentbasis.basis import Provenance
    from latentbasis.basisfile import info_lines
    from latentbasis.describe import pick_direction
    from latentbasis.motion import motion_fields
    from latentbasis.registration import describe_by_edits

    image = blob(3, 16, cx=7.0, cy=8.0, r=2.5)
    model = isotropic_gaussian(image)
    ts = 599
    traj = sample_trajectory(model, 0, num_steps=20, through=[ts])
    shift = motion_fields(image, torch.ones(image.shape, dtype=torch.bool))[0]
    red = torch.zeros_like(image)
    red[0], red[1], red[2] = 1.0, -0.5, -0.5
    rows = torch.stack([u / u.norm() for u in (shift, torch.ones_like(image), red)]).float()
    b = Basis(latent=rows, tangent=rows, singular_values=torch.ones(3), point=traj.at(ts), residuals=torch.zeros(3),
              provenance=Provenance(timestep=ts, model=model.name, model_hash=model.model_hash))
    direct = EditSettings("direct")
    at2 = describe_by_edits(model, b, traj, 2.0, direct)
    at6 = describe_by_edits(model, b, traj, 6.0, direct)
    assert b.descriptions is at6
    for d, part, word, least in zip(at6, ("shift", "brightness", "colour"), ("shifts right", "brightens", "more red"),
                                    (0.8, 0.9, 0.9)):
        assert d["shares"][part] > least and d["name"].startswith(word) and d["reading"] == "edit", d
    c2, c6 = at2[0]["coefficients"]["shift"][0], at6[0]["coefficients"]["shift"][0]
    assert c6 > 0 and abs(c2 - c6) < 0.05 * c6                           # per unit strength: the edit is linear
    assert pick_direction(at6, "shift right")[:2] == (0, 1) and pick_direction(at6, "darken")[:2] == (1, -1)
    assert pick_direction(at6, "colour")[0] == 2
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "b.safetensors"
        save_basis(b, f)
        assert [(d["name"], d["reading"], d["strength"]) for d in load_basis(f).descriptions] == \
            [(d["name"], "edit", 6.0) for d in at6]
        assert "as edited from -6 to +6 and registered" in "\n".join(info_lines(f))
    b.mask = torch.zeros(16, 16, dtype=torch.bool)
    b.mask[4:12, 4:12] = True
    d = describe_by_edits(model, b, traj, 6.0, direct)[1]
    assert abs(d["outside"] - 0.75) < 1e-6 and d["name"].endswith("mostly outside the region"), d


def test_a_turn_is_named_only_where_the_outline_turns_with_it():
    """A square turned by 20 degrees is named a turn (share > 0.9); a change of outline that a least-squares turn
    half fits is not: on `shapes` (seed 4508, 0.2 T, v1 at -6 and +6) the edit makes a tilted square a rounded
    diamond, which a turn of 45 degrees explained 71 % of (named "turns clockwise 3.8 deg" before); the turned
    square's outline covers the edited one's 0.83 < TURN_OVERLAP, so no turn is named and the rest holds the
    change."""
    from latentbasis.registration import TURN_OVERLAP, content_centre, content_mask, outline_overlap

    square = torch.full((3, 32, 32), -0.5, dtype=torch.float64)
    square[:, 11:21, 11:21] = torch.tensor([0.6, 0.1, -0.2], dtype=torch.float64)[:, None, None]
    turned = _similarity_warp(square, torch.tensor([0.0, 0.0, 0.0, 0.35], dtype=torch.float64), content_centre(square)[0])
    d = describe_edit(turned, square, 1.0)
    assert d["shares"]["rotation"] > 0.9 and d["name"].startswith("turns clockwise 10 deg"), d
    assert outline_overlap(content_mask(square), content_mask(turned)) < TURN_OVERLAP   # the turn moved the outline

    m = load_model("shapes", device="cpu")
    ts = resolve_timestep(m.num_train_timesteps, fraction=0.2)[0]
    traj = sample_trajectory(m, 4508, num_steps=50, through=[ts])
    b = latent_basis(m, traj.at(ts), timestep=ts, k=1)
    plus, minus = edit_images(m, traj, ts, sweep_directions(b.latent, [0], [6.0, -6.0]), EditSettings("guidance"))
    d = describe_edit(plus, minus, 6.0)
    assert d["shares"]["rotation"] == 0.0 and "turns" not in d["name"], d
    assert sum(d["shares"][p] for p in ("coarse", "mid", "fine")) > 0.5, d
