"""Benchmark: do warm starts save network evaluations, at equal accuracy?

A basis computed near another can start from the other's latent vectors (pullback_basis(init=...)). This measures,
on the report's grid (a bundled model, --samples x --timesteps, k as the report uses it) and on two nearer
neighbours, the evaluations (JVPs + VJPs) of each basis started cold and warm, and the largest principal angle
between the two answers (equal accuracy: within 0.5 degrees), with the angle between the neighbours themselves
(how far the subspace moved, which bounds what a warm start can give):
    grid      each timestep from the previous (larger) one of the same trajectory, as the report does
    samples   each sample from the previous sample at the same timestep (the `global` command's bases)
    step      from the basis one DDIM step (of 100) earlier on the same trajectory
    slider    from the basis at x_t before v1 moved by +1 (the app's Find after a slider moved)

    python benchmarks/bench_warm.py                      # digits, 8 x 10, k = 8 (the report's seeds 0..7)
    python benchmarks/bench_warm.py --first-seed 900     # the same on seeds no other run used
    python benchmarks/bench_warm.py --samples 4 --angles 0,1,2,5,10,15,25,45,90
        # what a start of known quality saves: each cold basis restarted from a start at that angle to it

The krylov warm start sums the neighbour's vectors into `block` start vectors (basis._krylov), chosen 2026-12-05
on seeds 0..3 after the vectors themselves as the start block had cost more than a cold start (1.10x); seeds
900.. were kept for the check.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import latentbasis as lb
from latentbasis import principal_angles
from latentbasis.grid import report_timesteps
from latentbasis.sampling import sample_trajectory


def pair(model, x, ts, prev, k, prompt=None):
    """(cold evaluations, warm evaluations, angle warm-cold, angle prev-cold) at (x, ts) warm-started from prev."""
    cold = lb.latent_basis(model, x, timestep=ts, k=k, prompt=prompt)
    warm = lb.latent_basis(model, x, timestep=ts, k=k, prompt=prompt, init=prev.latent)
    return (cold, cold.jvps + cold.vjps, warm.jvps + warm.vjps,
            float(principal_angles(warm.latent, cold.latent).max().rad2deg()),
            float(principal_angles(prev.latent, cold.latent).max().rad2deg()))


def header(what: str, a, t0: float) -> str:
    """The run's first line: what ran, on which grid, the load and the time."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"# {what}: {a.model}, {a.samples} samples (seeds {a.first_seed}..) x {a.timesteps} timesteps, k = {a.k}, "
            f"tol 1e-3, 1 thread; load average {load:.2f}; {time.perf_counter() - t0:.0f} s\n")


def angle_sweep(model, tss, seeds, k, angles):
    """What a start of known quality saves: each cold basis V restarted from cos(a) V + sin(a) W, W orthonormal rows
    orthogonal to V (random, seeded), so every principal angle between the start and the answer is a. Rows
    (angle, bases, cold evaluations, warm evaluations, largest angle warm vs cold)."""
    gen = torch.Generator().manual_seed(0)
    rows = {a: [] for a in angles}
    for seed in seeds:
        traj = sample_trajectory(model, seed, num_steps=100, through=tss)
        for ts in tss:
            x = traj.at(ts)
            cold = lb.latent_basis(model, x, timestep=ts, k=k)
            V = cold.latent.reshape(k, -1).double()
            W = torch.randn(k, V.shape[1], generator=gen, dtype=torch.float64)
            W = torch.linalg.qr((W - (W @ V.T) @ V).T)[0].T
            for a in angles:
                r = torch.tensor(a, dtype=torch.float64).deg2rad()
                start = (torch.cos(r) * V + torch.sin(r) * W).float().reshape(cold.latent.shape)
                warm = lb.latent_basis(model, x, timestep=ts, k=k, init=start)
                rows[a].append((cold.jvps + cold.vjps, warm.jvps + warm.vjps,
                                float(principal_angles(warm.latent, cold.latent).max().rad2deg())))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed.. (the report's grid: 0..)")
    ap.add_argument("--angles", default="",
                    help="instead: restart each cold basis of the grid from starts at these angles (degrees, e.g. "
                         "0,1,5,25) and print what each saves")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = lb.load_model(a.model, device="cpu")
    tss = report_timesteps(model.num_train_timesteps, a.timesteps)
    if a.angles:
        t0 = time.perf_counter()
        rows = angle_sweep(model, tss, range(a.first_seed, a.first_seed + a.samples), a.k,
                           [float(v) for v in a.angles.split(",")])
        print(header("bench_warm --angles", a, t0))
        print("| start's angle to the answer | bases | evaluations per basis, cold | warm | warm / cold | largest angle "
              "warm vs cold (max) |\n|---|---|---|---|---|---|")
        for angle, r in rows.items():
            cold, warm = statistics.mean(x[0] for x in r), statistics.mean(x[1] for x in r)
            print(f"| {angle:g} deg | {len(r)} | {cold:.1f} | {warm:.1f} | {warm / cold:.2f} | "
                  f"{max(x[2] for x in r):.2f} deg |")
        return
    rows = {w: [] for w in ("grid", "samples", "step", "slider")}
    t0 = time.perf_counter()
    previous_sample = {}
    for seed in range(a.first_seed, a.first_seed + a.samples):
        steps = sorted({g for ts in tss for g in (ts, max(0, ts - 10))}, reverse=True)
        traj = sample_trajectory(model, seed, num_steps=100, through=steps)
        prev = None
        for ts in tss:
            x = traj.at(ts)
            cold = lb.latent_basis(model, x, timestep=ts, k=a.k)
            if prev is not None:
                rows["grid"].append(pair(model, x, ts, prev, a.k)[1:])
            if ts in previous_sample:
                rows["samples"].append(pair(model, x, ts, previous_sample[ts], a.k)[1:])
            if ts - 10 >= 0:
                rows["step"].append(pair(model, traj.at(ts - 10), ts - 10, cold, a.k)[1:])
            if seed < a.first_seed + 2:
                rows["slider"].append(pair(model, x + cold.latent[0], ts, cold, a.k)[1:])
            previous_sample[ts] = prev = cold
    print(header("bench_warm", a, t0))
    print("| warm start from | bases | evaluations per basis, cold | warm | warm / cold | largest angle warm vs "
          "cold (max) | the neighbour's own angle (median) |\n|---|---|---|---|---|---|---|")
    for what, r in rows.items():
        if not r:
            continue
        cold = statistics.mean(x[0] for x in r)
        warm = statistics.mean(x[1] for x in r)
        print(f"| {what} | {len(r)} | {cold:.1f} | {warm:.1f} | {warm / cold:.2f} | "
              f"{max(x[2] for x in r):.2f} deg | {statistics.median(x[3] for x in r):.1f} deg |")


if __name__ == "__main__":
    main()
