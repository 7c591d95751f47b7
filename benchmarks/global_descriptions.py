"""Do global directions do on new samples what their description says?

    python benchmarks/global_descriptions.py [--model shapes] [--ts 0.2,0.5,0.8] [--first-seed 10000]
                                             [--samples 16] [--held-out 16]

Declared 2026-12-07, before its first run, on fresh seeds (no earlier run used 10000 on; describe_shapes.py used
up to 9048, pick_direction.py 8000..8015):
- global directions: `latentbasis global`'s defaults (transport.global_basis: k = 4, 100-step DDIM grid) over the
  --samples seeds from --first-seed, described as `global` stores them (on the first 4 samples, each direction
  carried onto the sample's basis, edited by the published guidance at -6 and +6 and registered; the description
  most of them give, describe.shared_descriptions);
- held out: the --held-out seeds from --first-seed + 100, none of them among the directions' samples. On each, the
  local basis (k = 4) at x_t, each global direction carried onto it as `edit --basis` does (transport) and
  described the same way (registration.describe_by_edits at +-6);
- primary: the share of (held-out sample, direction) pairs whose description has the stored description's gist
  (describe.gist: the main part and its sign, "shifts right", "darkens", "more red"), with a 95 % interval
  resampling the held-out samples; per t and over all;
- beside it, chance: the same held-out descriptions against the stored gists of the file's other directions (how
  often a carried direction would "match" a description that is not its own), and the in-sample agreement the
  file records (agreeing / samples).
No target is set by an issue for this; it measures whether the descriptions `global` stores hold on images the
directions were not found on (issue 31: directions that explain themselves and carry beyond one image).

Second reading, declared 2026-12-07 after the first run (shapes 0.2 / 0.5 / 0.8 T and digits 0.4 / 0.6 / 0.8 T
from seed 10000) and before this one: an observation of that run, that the agreement `global` stores predicts the
held-out one (directions the same on >= 3 of 4 samples: 60 / 96 held-out pairs the same; on <= 2 of 4: 53 / 288),
tested on fresh seeds from 11000 (`--first-seed 11000`, the same models and ts). Printed: the held-out share per
stored agreement, >= 3 of 4 against <= 2 of 4, with 95 % intervals resampling the held-out samples; the claim holds
where the first is the larger and the intervals do not overlap.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from edit_ground_truth import rate   # counts with a 95 % interval resampling the samples

from latentbasis import latent_basis, load_model
from latentbasis.describe import gist
from latentbasis.loading import resolve_timestep
from latentbasis.registration import describe_by_edits
from latentbasis.sampling import sample_trajectory
from latentbasis.transport import global_basis, transport


def held_out_gists(model, g, seeds, ts: int) -> list[list[str]]:
    """Per held-out seed, the gist of each global direction's registered edit there (carried onto its basis)."""
    out = []
    for seed in seeds:
        traj = sample_trajectory(model, seed, num_steps=100, through=ts)
        b = latent_basis(model, traj.at(ts), timestep=ts, k=g.k, seed=seed)
        b.latent = torch.stack([transport(u, b.latent, b.tangent) for u in g.tangent])
        out.append([gist(d["name"]) for d in describe_by_edits(model, b, traj, 6.0, conditions=False)])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--ts", default="0.2,0.5,0.8")
    ap.add_argument("--first-seed", type=int, default=10000)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--held-out", type=int, default=16)
    a = ap.parse_args()
    t0 = time.time()
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    model = load_model(a.model)
    rows, all_hits, all_chance, all_groups, all_agree = [], [], [], [], []
    for t in [float(x) for x in a.ts.split(",")]:
        ts, _ = resolve_timestep(model.num_train_timesteps, fraction=t)
        g = global_basis(model, range(a.first_seed, a.first_seed + a.samples), timestep=ts, k=4, num_steps=100)
        stored = [gist(d["name"]) for d in g.descriptions]
        held = range(a.first_seed + 100, a.first_seed + 100 + a.held_out)
        gists = held_out_gists(model, g, held, ts)
        hits, chance, groups = [], [], []
        for j, row in enumerate(gists):
            for i, got in enumerate(row):
                hits.append(got == stored[i])
                chance.append(np.mean([got == stored[o] for o in range(g.k) if o != i]))
                groups.append(j)
                all_agree.append(g.descriptions[i]["agreeing"])
        for i, d in enumerate(g.descriptions):
            same = sum(row[i] == stored[i] for row in gists)
            print(f"{a.model} {t:.1f} T g{i + 1}: stored {d['name']!r} (the same on {d['agreeing']} of "
                  f"{d['samples']}); held out: {same} / {len(gists)} the same; they show "
                  f"{sorted(set(row[i] for row in gists))}", flush=True)
        hits, chance, groups = np.array(hits), np.array(chance), np.array(groups)
        in_sample = sum(d["agreeing"] for d in g.descriptions) / sum(d["samples"] for d in g.descriptions)
        rows.append((f"{t:.1f} T", rate(hits, groups), f"{chance.mean():.1%}", f"{in_sample:.0%}"))
        all_hits.append(hits), all_chance.append(chance), all_groups.append(groups)
    hits, chance, groups = np.concatenate(all_hits), np.concatenate(all_chance), np.concatenate(all_groups)
    rows.append(("all", rate(hits, groups), f"{chance.mean():.1%}", "-"))
    print(f"\n{a.model}, global directions from seeds {a.first_seed}..{a.first_seed + a.samples - 1}, held out "
          f"{a.first_seed + 100}..{a.first_seed + 100 + a.held_out - 1}; {time.time() - t0:.0f} s, load average at "
          f"the end {os.getloadavg()[0]:.2f}\n")
    print("| t | held out: the stored description's gist (primary) | chance: another direction's | in-sample |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    agree = np.array(all_agree)
    print("\nheld out, by the agreement the file stores (second reading):")
    for name, keep in (("the same on >= 3 of 4", agree >= 3), ("the same on <= 2 of 4", agree <= 2)):
        print(f"  {name}: {rate(hits[keep], groups[keep]) if keep.any() else 'no directions'}")


if __name__ == "__main__":
    main()
