"""Ground truth for edits: on the bundled `shapes` model, which factor does a latent-basis direction move?

    python benchmarks/edit_ground_truth.py [--samples 16] [--t 0.8] [--k 4] [--strength 4]

For each sample (seeds 0..N-1) and each of the top k directions at t (>= 0.7 T), the sample is edited at -s, 0, +s
(published x-space guidance) and the factor reader (latentbasis.evaluate.read_shapes, fitted on procedural
shapes) reads x, y, size and kind from the three images. Per direction it prints the mean |change| per unit
strength of each factor, and how often the change at +s and at -s have opposite signs for the factor that moves
most ("sign follows strength"). A coarse factor moves "by a clear margin" when its change over +-s exceeds 0.05
(x, y: fraction of the width; size: 0.05 / 4 of the width, about a quarter of the size range; kind: the
reader's kind changes). Only samples the reader recovers unedited (latentbasis.evaluate.recovery: the sample holds a
shape and its re-rendering explains >= 90 % of its pixel variance) are used, since the factors of an image that is
not a clean shape mean nothing; the table says how many that is, and how many edited images are still recovered.

Transport: direction v_i of sample A is moved to sample B (parallel transport, method.md) and applied there at
+s. It counts as the same edit when, on B, the factor that v_i moves most on A moves the same way (same sign).
Printed: the fraction over the ordered pairs (A, B), A != B, of the first --pairs-of samples (target >= 80 %).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from latentbasis import latent_basis, load_model
from latentbasis.editing import EditSettings, edit_images, sweep_directions, transport
from latentbasis.evaluate import read_shapes, recovery, shapes_reader
from latentbasis.models import resolve_timestep
from latentbasis.sampling import sample_trajectory

FACTORS = ("x", "y", "size")
MARGIN = {"x": 0.05, "y": 0.05, "size": 0.05 / 4}


def factors(reader, images: torch.Tensor) -> np.ndarray:
    """[N, 4]: x, y, size and kind read from images."""
    r = read_shapes(reader, images)
    return np.column_stack([r["x"], r["y"], r["size"], r["kind"]])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--t", type=float, default=0.8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--strength", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--pairs-of", type=int, default=8, help="transport between the first N samples (N (N - 1) pairs)")
    ap.add_argument("--transported", type=int, default=2, help="transport the top this many directions")
    a = ap.parse_args()
    model = load_model(a.model)
    reader = shapes_reader(resolution=model.x_shape[-1])
    ts, _ = resolve_timestep(model.num_train_timesteps, fraction=a.t)
    s = a.strength
    trajs, bases, moves, still = [], [], [], []   # moves[n][i]: factor changes [3 strengths, 4 factors] vs 0
    seeds, seed = [], 0
    while len(seeds) < a.samples and seed < 8 * a.samples:
        traj = sample_trajectory(model, seed, num_steps=a.steps, through=ts)
        seed += 1
        if not recovery(reader, traj.x0[None])[2][0]:
            continue
        seeds.append(seed - 1)
        b = latent_basis(model, traj.at(ts), timestep=ts, k=a.k)
        imgs = edit_images(model, traj, ts, sweep_directions(b.latent, list(range(a.k)), [-s, 0.0, s]),
                           EditSettings("guidance"))
        f = factors(reader, imgs).reshape(a.k, 3, 4)
        still.append(recovery(reader, imgs)[2].reshape(a.k, 3)[:, [0, 2]])
        moves.append(f - f[:, 1:2])
        trajs.append(traj)
        bases.append(b)
    moves, still = np.stack(moves), np.stack(still)                  # [N, k, 3, 4], [N, k, 2]
    n = len(seeds)
    print()
    print(f"model {a.model}, t = {a.t} (timestep {ts}), strength +-{s:g}, guidance edits; {len(seeds)} samples "
          f"recovered unedited among seeds 0..{seed - 1} (used: {seeds})")
    print("| direction | mean abs change per unit strength: x | y | size | kind changed (+-s) | dominant factor "
          "(most often) | clear margin | sign follows strength | edited images still recovered |")
    print("|---|---|---|---|---|---|---|---|---|")
    dominant = np.zeros((n, a.k), int)
    for i in range(a.k):
        m = moves[:, i]                                               # [N, 3, 4]
        per_unit = np.abs(m[:, 2, :3] - m[:, 0, :3]).mean(0) / (2 * s)
        kind_changed = ((m[:, 0, 3] != 0) | (m[:, 2, 3] != 0)).mean()
        span = np.abs(m[:, 2, :3] - m[:, 0, :3]) / np.array([MARGIN[f] for f in FACTORS])
        dom = span.argmax(1)
        dominant[:, i] = dom
        clear = (span.max(1) >= 1) | (m[:, 0, 3] != 0) | (m[:, 2, 3] != 0)
        d_plus, d_minus = m[np.arange(n), 2, dom], m[np.arange(n), 0, dom]
        sign_ok = (np.sign(d_plus) == -np.sign(d_minus)) & (d_plus != 0)
        top = FACTORS[np.bincount(dom, minlength=3).argmax()]
        print(f"| v{i + 1} | {per_unit[0]:.4f} | {per_unit[1]:.4f} | {per_unit[2]:.4f} | {kind_changed:.0%} | {top} | "
              f"{clear.mean():.0%} | {sign_ok.mean():.0%} | {still[:, i].mean():.0%} |")

    print()
    print("| direction | transported A -> B: same factor moves the same way on B | pairs |")
    print("|---|---|---|")
    n_pairs = min(a.pairs_of, n)
    for i in range(min(a.transported, a.k)):
        hits, pairs = 0, 0
        for A in range(n_pairs):
            dom = dominant[A, i]
            sign_a = np.sign(moves[A, i, 2, dom])
            if sign_a == 0:
                continue
            for B in range(n_pairs):
                if A == B:
                    continue
                v = transport(bases[A].tangent[i], bases[B].latent, bases[B].tangent)
                img = edit_images(model, trajs[B], ts, torch.stack([torch.zeros_like(v), s * v]),
                                  EditSettings("guidance"))
                f = factors(reader, img)
                hits += int(np.sign(f[1, dom] - f[0, dom]) == sign_a)
                pairs += 1
        print(f"| v{i + 1} | {hits / max(1, pairs):.0%} | {pairs} |")


if __name__ == "__main__":
    main()
