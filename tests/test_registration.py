"""latentbasis.registration: a finished edit described by registering its two ends, checked on edits built to be a
shift, a growth, a colour change, a brightening and a change of shape."""
import torch

from latentbasis import latent_basis, load_model
from latentbasis.editing import EditSettings, edit_images, sweep_directions
from latentbasis.loading import resolve_timestep
from latentbasis.recipe import EditRecipe, EditResult
from latentbasis.registration import _similarity_warp, describe_edit
from latentbasis.sampling import sample_trajectory

from helpers import blob


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
