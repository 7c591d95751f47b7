"""Benchmark: edit latency from a cached trajectory, and DDIM inversion quality, on the bundled digits model.

    python benchmarks/bench_edit.py [--model digits] [--repeats 9] [--images 64] [--skip-latency] [--skip-inversion]

Latency: median wall time of one guidance edit (one direction, one strength: 16 guidance iterations, then DDIM
from t = 0.6 T to 0 with 100-step density) and of a 5-strength sweep of one direction in one batch, both from a
cached trajectory and basis (what the app does when a slider moves). Targets on a 2-core CPU: <= 0.5 s, <= 1 s.
Inversion: real load_digits images, DDIM inversion to x_T then sampling back; mean PSNR against the number of
steps. Target: >= 30 dB at 100 steps.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from latentbasis import latent_basis, load_model
from latentbasis.data import digits_images
from latentbasis.editing import EditSettings, edit_images, sweep_directions
from latentbasis.recipe import psnr
from latentbasis.sampling import denoise, invert, sample_trajectory


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--images", type=int, default=64, help="real digits for the inversion table")
    ap.add_argument("--skip-latency", action="store_true", help="only the inversion table (e.g. on a busy machine)")
    ap.add_argument("--skip-inversion", action="store_true", help="only the latency table")
    a = ap.parse_args()
    model = load_model(a.model)
    if not a.skip_latency:
        latency_table(model, a.repeats)
    if not a.skip_inversion:
        inversion_table(model, a.images)


def latency_table(model, repeats: int) -> None:
    ts = 599
    traj = sample_trajectory(model, 0, num_steps=100, through=ts)
    basis = latent_basis(model, traj.at(ts), timestep=ts, k=4)
    settings = EditSettings("guidance")
    one = sweep_directions(basis.latent, [0], [3.0])
    sweep = sweep_directions(basis.latent, [0], [-6.0, -3.0, 3.0, 6.0, 1.5])
    t_one = median_seconds(lambda: edit_images(model, traj, ts, one, settings), repeats)
    t_sweep = median_seconds(lambda: edit_images(model, traj, ts, sweep, settings), repeats)
    print(f"model {model.name}, x {model.x_shape}, edit at t = {ts}, threads {torch.get_num_threads()}\n")
    print("| what (from a cached trajectory and basis) | median s | target |")
    print("|---|---|---|")
    print(f"| one edit (guidance, 1 direction) | {t_one:.3f} | <= 0.5 {'MET' if t_one <= 0.5 else 'NOT MET'} |")
    print(f"| 5-strength sweep (one batch) | {t_sweep:.3f} | <= 1.0 {'MET' if t_sweep <= 1.0 else 'NOT MET'} |")


def inversion_table(model, n_images: int) -> None:
    images = digits_images(model.x_shape[-1])[0][:n_images]
    print(f"\nDDIM inversion then sampling, {len(images)} real load_digits images (first {len(images)}):\n")
    print("| steps | mean PSNR (dB) | min PSNR (dB) |")
    print("|---|---|---|")
    for steps in (10, 25, 50, 100):
        scores = []
        for img in images:
            inv = invert(model, img, num_steps=steps)
            rec = denoise(model, inv.xs[:1], inv.timesteps)[0]
            scores.append(psnr(rec, img))
        mark = "" if steps != 100 else (" (target >= 30: MET)" if statistics.mean(scores) >= 30 else
                                        " (target >= 30: NOT MET)")
        print(f"| {steps} | {statistics.mean(scores):.2f}{mark} | {min(scores):.2f} |")


if __name__ == "__main__":
    main()
