"""Benchmark: the cost of the example report from an empty cache, and of running it again over its cache.

    python benchmarks/bench_report.py [--model digits] [--samples 8] [--timesteps 10] [--k 8] [--out DIR]

Runs `latentbasis report --model digits --samples 8 --timesteps 10 --k 8` in-process (the same code path) into a
fresh folder, then once more into the same folder (bases and trajectories come from its cache; the geometry part is
recomputed from them). Target on a 2-core CPU: under 3 minutes. Prints the total time, the time per basis (wall
time / number of bases, and the mean time inside the basis algorithm), the time of the second run, what the
generation-geometry part cost against the basis grid (target: no more), and its teleportation table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from latentbasis.cli import main as cli


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--out", default=None, help="report folder (default: a temporary one, removed after)")
    a = ap.parse_args()
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp()) / "report"
    if out.exists():
        shutil.rmtree(out)
    argv = ["report", "--model", a.model, "--samples", str(a.samples), "--timesteps", str(a.timesteps),
            "--k", str(a.k), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    assert cli(argv) == 0
    first = time.perf_counter() - t0
    n = json.loads((out / "numbers.json").read_text())     # the first run's numbers (the second's grid is cached)
    t0 = time.perf_counter()
    assert cli(argv) == 0
    again = time.perf_counter() - t0
    n2 = json.loads((out / "numbers.json").read_text())
    bases = len(n["seeds"]) * len(n["timesteps"]) * len(n["prompts"])
    print()
    print(f"model {a.model}, {a.samples} samples x {a.timesteps} timesteps x {len(n['prompts'])} prompt(s), "
          f"k = {a.k}; {torch.get_num_threads()} threads")
    print("| run | wall time | bases | wall time per basis | basis algorithm per basis | target |")
    print("|---|---|---|---|---|---|")
    print(f"| from an empty cache | {first:.1f} s | {bases} | {first / bases:.2f} s | {n['seconds_per_basis']:.2f} s "
          f"| < 180 s: {'met' if first < 180 else 'NOT met'} |")
    redo = f"; the geometry part recomputed: {n2['seconds_geometry']:.1f} s" if "seconds_geometry" in n2 else ""
    print(f"| again (cache: bases and trajectories reused{redo}) | {again:.1f} s | 0 computed | | | |")
    if "seconds_geometry" in n:
        g, grid = n["seconds_geometry"], n["seconds_grid"]
        print(f"\nthe generation-geometry part (first run): {g:.1f} s, reusing the kept trajectories, against the "
              f"basis grid's {grid:.1f} s (target: no more than the grid): {'met' if g <= grid else 'NOT met'}")
        print("\n| first steps skipped by the Gaussian closed form | quality judge | seconds |\n|---|---|---|")
        for row in n["geometry"].get("teleport", []):
            print(f"| {row['fraction']:.0%} | {row['score']:.3f} | {row['seconds']:.1f} |")
    if not a.out:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
