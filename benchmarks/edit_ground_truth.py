"""Ground truth for edits: on the bundled `shapes` model, which factor does a latent-basis direction move?

    python benchmarks/edit_ground_truth.py [--samples 16] [--first-seed 0] [--t 0.8] [--k 4] [--strengths 0.5,1,2]

For each sample and each of the top k directions at t (>= 0.7 T), the sample is edited at -s, 0, +s (published
x-space guidance) for every strength s, and the factor reader (latentbasis.evaluate.read_shapes, fitted on
procedural shapes) reads x, y, size, hue, background and kind from the images. Per direction and strength it prints:
- the mean |change| per unit strength of each factor (x, y, size: fractions of the width; hue: circular, in turns;
  background: grey level in [0, 1]) and how often the kind read changes at +s or -s;
- the factor that moves most (each change over +-s divided by its margin: x, y 0.05; size 0.05 / 4, about a quarter
  of the size range; hue 0.05; background 0.05, a tenth of its range), most often over the samples;
- "coarse factor, clear margin": how often a coarse factor (x, y or size over its margin, or the kind) changes;
- "sign follows strength": how often the factor that moves most changes with opposite signs at +s and -s;
- how many edited images are still recovered as clean shapes.
Only samples the reader recovers unedited (latentbasis.evaluate.recovery: the sample holds a shape and its
re-rendering explains >= 90 % of its pixel variance) are used, since the factors of an image that is not a clean
shape mean nothing; the header says which seeds that is.

Transport: direction v_i of sample A is moved to sample B (parallel transport, method.md) and applied there at -s
and +s (--transport-strength). It counts as the same edit when, on B, the factor that v_i moves most on A moves the
same way. "The way" is read two ways, both printed: one-sided, the sign of f(+s) - f(0) on A and on B; central, the
sign of f(+s) - f(-s) on A and on B (the central difference, less swayed by an edit that is lopsided between its two
signs). Both are also read for the coarse factor (x, y or size) that v_i moves most on A, since the check asks about
coarse factors and v1 often moves the background most; and a third time with position as one factor, as the check
names it (position, size, shape): the coarse factor is position (x, y) or size, whichever moves more over its
margin, and position moves "the same way" when its displacement on B points within 90 degrees of that on A (positive
dot product; one-sided and central as above), size by sign. The kind has no direction and is left out. Printed: the
count and fraction over the ordered pairs (A, B), A != B, of the first --pairs-of samples (target >= 80 %) with a
95 % interval from resampling the source samples A, how much of u_i of A the span of B's k tangent vectors keeps
(||U_B u|| / ||u||, mean), and the gap to the next singular value (s_i / s_i+1; near 1, v_i is hardly distinguished
from v_i+1).
Two more tables split the same pairs into thirds: by how far apart the two samples' shapes are (distance between
the centres read unedited, in widths: does a direction transfer when the shapes sit in the same place?) and by the
singular-value gap s_i / s_i+1 on A (does a direction transfer when it is well separated from the next one?).

benchmarks/edit_regions.py extends this reading to four kinds of directions side by side on the same samples
(h-space, x0-space, a masked x0 region with the null-space projection, and global directions): locality, success
and transfer, each with counts and 95 % intervals.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from latentbasis import latent_basis, load_model
from latentbasis.editing import EditSettings, edit_images, sweep_directions
from latentbasis.transport import transport
from latentbasis.evaluate import read_shapes, recovery, shapes_reader
from latentbasis.loading import resolve_timestep
from latentbasis.sampling import sample_trajectory

FACTORS = ("x", "y", "size", "hue", "background")
MARGIN = np.array([0.05, 0.05, 0.05 / 4, 0.05, 0.05])
COARSE = 3  # the first three factors are position and size


def factors(reader, images: torch.Tensor) -> np.ndarray:
    """[N, 6]: x, y, size, hue, background and kind read from images."""
    r = read_shapes(reader, images)
    return np.column_stack([r[f] for f in FACTORS] + [r["kind"]])


def change(f: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """f - f0 for factor rows [..., 6]; hue as the shortest signed turn, kind as 0/1 (changed or not)."""
    d = f - f0
    d[..., 3] = (d[..., 3] + 0.5) % 1.0 - 0.5
    d[..., 5] = d[..., 5] != 0
    return d


def rate(hits: np.ndarray, groups: np.ndarray, n_boot: int = 2000) -> str:
    """"count / pairs (percent, 95 % interval)": the interval resamples the source samples A with replacement
    (pairs that share an A are not independent), percentiles 2.5 and 97.5 of the resampled fractions."""
    ids = np.unique(groups)
    by = [hits[groups == g] for g in ids]
    rng = np.random.default_rng(0)
    boot = [np.concatenate([by[j] for j in rng.integers(len(ids), size=len(ids))]).mean() for _ in range(n_boot)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return f"{hits.sum()} / {len(hits)} ({hits.mean():.1%}; {lo:.0%}-{hi:.0%})"


def same_way(plus: np.ndarray, minus: np.ndarray, plus_b: np.ndarray, minus_b: np.ndarray) -> tuple[bool, bool]:
    """Does a factor move the same way on B as on A? Inputs: its changes, one entry or several read as one vector
    (position: x, y). One-sided: dot(f(+s) - f(0) on A, the same on B) > 0; central: the same with f(+s) - f(-s).
    For one entry that is: the same sign, and not zero."""
    return float(np.dot(plus, plus_b)) > 0, float(np.dot(plus - minus, plus_b - minus_b)) > 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=0, help="samples are the recovered ones from this seed on")
    ap.add_argument("--t", type=float, default=0.8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--strengths", default="0.5,1,2")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--pairs-of", type=int, default=16, help="transport between the first N samples (N (N - 1) pairs)")
    ap.add_argument("--transported", type=int, default=None, help="transport the top this many directions (all k)")
    ap.add_argument("--transport-strength", type=float, default=1.0)
    a = ap.parse_args()
    strengths = [float(s) for s in a.strengths.split(",")]
    model = load_model(a.model)
    reader = shapes_reader(resolution=model.x_shape[-1])
    ts, _ = resolve_timestep(model.num_train_timesteps, fraction=a.t)
    column = [-s for s in strengths[::-1]] + [0.0] + strengths            # -s_max .. 0 .. +s_max
    zero = len(strengths)

    trajs, bases, moves, still, base, seeds, seed = [], [], [], [], [], [], a.first_seed
    while len(seeds) < a.samples and seed < a.first_seed + 8 * a.samples:
        traj = sample_trajectory(model, seed, num_steps=a.steps, through=ts)
        seed += 1
        if not recovery(reader, traj.x0[None])[2][0]:
            continue
        seeds.append(seed - 1)
        b = latent_basis(model, traj.at(ts), timestep=ts, k=a.k)
        imgs = edit_images(model, traj, ts, sweep_directions(b.latent, list(range(a.k)), column),
                           EditSettings("guidance"))
        f = factors(reader, imgs).reshape(a.k, len(column), 6)
        moves.append(change(f, f[:, zero:zero + 1]))
        base.append(f[0, zero])
        still.append(recovery(reader, imgs)[2].reshape(a.k, len(column)))
        trajs.append(traj)
        bases.append(b)
    moves, still = np.stack(moves), np.stack(still)                  # [N, k, columns, 6], [N, k, columns]
    n = len(seeds)
    print(f"\nmodel {a.model}, t = {a.t} (timestep {ts}), guidance edits; {n} samples recovered unedited among "
          f"seeds {a.first_seed}..{seed - 1} (used: {seeds})\n")
    print("| direction | strength | per unit strength: x | y | size | hue | background | kind changed | "
          "moves most (most often) | coarse factor, clear margin | sign follows strength | edited still recovered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    dominant, dominant_coarse = {}, {}                # factor moved most (of all / of x, y, size): [N] per (i, s)
    dominant_position = {}                            # True where position (x, y) moves more than size: [N]
    for i in range(a.k):
        for j, s in enumerate(strengths):
            plus, minus = moves[:, i, zero + 1 + j], moves[:, i, zero - 1 - j]      # [N, 6]
            span = np.abs(plus[:, :5] - minus[:, :5])                             # [N, 5]
            dom = (span / MARGIN).argmax(1)
            dominant[i, s] = dom
            dominant_coarse[i, s] = (span[:, :COARSE] / MARGIN[:COARSE]).argmax(1)
            position = np.hypot(span[:, 0], span[:, 1]) / MARGIN[0]          # x, y as one factor
            dominant_position[i, s] = position >= span[:, 2] / MARGIN[2]
            kind = (plus[:, 5] > 0) | (minus[:, 5] > 0)
            coarse = ((span[:, :COARSE] / MARGIN[:COARSE]).max(1) >= 1) | kind
            rows = np.arange(n)
            sign_ok = (np.sign(plus[rows, dom]) == -np.sign(minus[rows, dom])) & (plus[rows, dom] != 0)
            per_unit = span.mean(0) / (2 * s)
            top = FACTORS[np.bincount(dom, minlength=5).argmax()]
            kept = still[:, i, [zero - 1 - j, zero + 1 + j]].mean()
            print(f"| v{i + 1} | {s:g} | " + " | ".join(f"{v:.4f}" for v in per_unit)
                  + f" | {kind.mean():.0%} | {top} | {coarse.mean():.0%} | {sign_ok.mean():.0%} | {kept:.0%} |")

    s = a.transport_strength
    if (0, s) not in dominant:
        raise SystemExit(f"--transport-strength {s:g} is not one of --strengths {a.strengths}")
    print(f"\nTransport at strength {s:g}: direction v_i of sample A moved to sample B and applied there; the factor "
          "it moves most on A moves the same way on B:\n")
    print("Each rate: pairs that pass / pairs (fraction; 95 % interval from resampling the source samples A).\n")
    print("| direction | same factor, same way on B: one-sided | central | the coarse factor (x, y, size) it moves most "
          "on A: one-sided | central | position (x, y as a vector) or size: one-sided | central | pairs | "
          "u_i of A kept by B's tangent span | s_i / s_i+1 (mean over A) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    n_pairs = min(a.pairs_of, n)
    j = strengths.index(s)
    split = []
    for i in range(min(a.transported or a.k, a.k)):
        reads, reads_c, reads_p, kept, dist, gap, source = [], [], [], [], [], [], []  # (one-sided, central) per pair
        for A in range(n_pairs):
            plus_a, minus_a = moves[A, i, zero + 1 + j], moves[A, i, zero - 1 - j]          # [6]
            dom, dom_c = [dominant[i, s][A]], [dominant_coarse[i, s][A]]            # factor indices
            dom_p = [0, 1] if dominant_position[i, s][A] else [2]                 # position (x, y) or size
            u = bases[A].tangent[i]
            sv = bases[A].singular_values
            gap_a = float(sv[i] / sv[i + 1]) if i + 1 < a.k else np.nan
            for B in range(n_pairs):
                if A == B:
                    continue
                U = bases[B].tangent.reshape(a.k, -1).double()
                kept.append(float((U @ u.reshape(-1).double()).norm() / u.norm()))
                dist.append(float(np.hypot(*(base[A][:2] - base[B][:2]))))
                gap.append(gap_a)
                source.append(A)
                v = transport(u, bases[B].latent, bases[B].tangent)
                img = edit_images(model, trajs[B], ts, torch.stack([-s * v, torch.zeros_like(v), s * v]),
                                  EditSettings("guidance"))
                f = factors(reader, img)
                plus_b, minus_b = change(f[2:], f[1:2])[0], change(f[:1], f[1:2])[0]
                for hits, d in ((reads, dom), (reads_c, dom_c), (reads_p, dom_p)):
                    hits.append(same_way(plus_a[d], minus_a[d], plus_b[d], minus_b[d]))
        one, central = np.array(reads).T
        one_c, central_c = np.array(reads_c).T
        one_p, central_p = np.array(reads_p).T
        kept, dist, gap, source = map(np.array, (kept, dist, gap, source))
        print(f"| v{i + 1} | {rate(one, source)} | {rate(central, source)} | {rate(one_c, source)} | "
              f"{rate(central_c, source)} | {rate(one_p, source)} | {rate(central_p, source)} | {len(one)} | "
              f"{kept.mean():.0%} | {gap.mean():.2f} |")
        split.append((i, one, central, kept, {"distance between the two shapes' centres (widths)": dist,
                                                "s_i / s_i+1 of A": gap}))

    for name in split[0][4]:
        print(f"\nThe same pairs in thirds by the {name}:\n")
        print("| direction | range | pairs | same way on B: one-sided | central | u_i of A kept |")
        print("|---|---|---|---|---|---|")
        for i, one, central, kept, by in split:
            value = by[name]
            if np.isnan(value).any():
                continue
            cuts = np.quantile(value, [0, 1 / 3, 2 / 3, 1])
            third = np.searchsorted(cuts[1:-1], value, side="right")       # 0, 1 or 2
            for q in range(3):
                m = third == q
                if m.any():
                    print(f"| v{i + 1} | {cuts[q]:.2f}-{cuts[q + 1]:.2f} | {m.sum()} | {one[m].mean():.0%} | "
                          f"{central[m].mean():.0%} | {kept[m].mean():.0%} |")


if __name__ == "__main__":
    main()
