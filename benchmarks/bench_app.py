"""Benchmark: how live the editor feels: the app's handlers timed on the bundled model (no browser in the loop).

    python benchmarks/bench_app.py [--model digits] [--t 0.6] [--k 6] [--repeats 9]

Rows: a new sample (the trajectory, 50-step grid), "Find directions" (the basis, the -/+ previews of every
direction and what each did between them, registered), and a released slider (one combined edit: its quick preview, then the full image), for both edit
methods. Targets on a 2-core CPU: the preview within 0.25 s of the release, the full image well under a second.
"""
from __future__ import annotations

import argparse

from bench_edit import median_seconds  # the same timing rule as the edit benchmark (run as a script)
from latentbasis.app import load_editor
from latentbasis.loading import load_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--t", type=float, default=0.6)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args()
    E = load_editor()
    model = load_model(a.model)
    s = E.Session()
    rows = [("new sample (seed, t)", median_seconds(lambda: E.new_sample(model, s, 0, a.t), 3))]
    rows.append((f"Find directions (k = {a.k}, with previews)",
                 median_seconds(lambda: E.find_directions(model, s, a.t, a.k, "guidance"), 3)))
    for method in ("guidance", "direct"):   # what a released slider shows first, then the full image
        rows.append((f"slider released: quick preview ({method}, 2 directions, {E.PREVIEW_STEPS} DDIM steps)",
                     median_seconds(lambda: E.preview_edit(model, s, method, [4.0, -2.0]), a.repeats)))
        rows.append((f"slider released: full image ({method}, 2 directions)",
                     median_seconds(lambda: E.apply_edit(model, s, method, [4.0, -2.0]), a.repeats)))
    print()
    import os

    print(f"model {a.model}, t = {a.t}, app grid {E.APP_STEPS} DDIM steps; load average {os.getloadavg()[0]:.2f}")
    print("| handler | median s |")
    print("|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} |")


if __name__ == "__main__":
    main()
