"""Benchmark: latentbasis at the scale of real checkpoints, on whatever device is here.

Randomly initialised U-Nets of the real configurations (no download: the configurations are written out below):
    sd15      Stable Diffusion 1.5's UNet2DConditionModel (860M parameters), 4x64x64 latent, random 77x768 prompt
    sdxl      SDXL's UNet2DConditionModel (2.6B), 4x128x128 latent, random prompt, pooled embedding and time ids
    celebahq  google/ddpm-ema-celebahq-256's UNet2DModel (114M), 3x256x256 pixels

For each: the cost of one network evaluation (forward at batch 1 in --dtype; through the float32 feature map
h = mid_block output: building the operator, one VJP, one JVP, a batch of 4 VJPs) with peak memory, then one
basis by latentbasis' default algorithm (k = 8 on a GPU, 4 on the CPU) and by the published subspace iteration
(forward-mode JVPs, its k VJPs one by one, at least 12 iterations) on the same model, x_t and k; the published
run is capped at the iterations that fit the time limit, and the table says so. x_t is N(0, I) noise taken as
the point at t = 0.6 T (sampling a trajectory first would cost more than the basis on the CPU). Then one guidance
edit (16 iterations, DDIM from t on the app's 50-step grid).

    python benchmarks/bench_scale.py                     # all three, device auto (a GPU when there is one)
    python benchmarks/bench_scale.py --models sd15 --device cpu --time-limit 900

Whatever does not fit the time limit (per model) or the memory budget is reported as not run, with the estimate;
each model runs in its own process, so one the system kills for memory (a CPU with too little of it) is reported
as killed after the rows it printed, and the next model still runs.
Peak memory: torch's allocator peak on a GPU; the process's resident-set peak on the CPU (Linux).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from latentbasis import principal_angles
from latentbasis.basis import JacobianOperator, pullback_basis, saved_activation_bytes
from latentbasis.devices import default_memory_budget, dtype_name, format_bytes, resolve_device, resolve_dtype
from latentbasis.families import Conditioning, UNetModel
from latentbasis.loading import cast_weights, weights_hash

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SDXL = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
CELEBAHQ = dict(sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
                block_out_channels=(128, 128, 256, 256, 512, 512),
                down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                                  "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
               "beta_end": 0.012, "clip_sample": False, "prediction_type": "epsilon"}
DDPM_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                 "clip_sample": True, "prediction_type": "epsilon"}


class FixedPromptUNet(UNetModel):
    """A text U-Net whose every prompt is one fixed random conditioning (no text encoder is needed to time it)."""

    def _check_conditioning(self):
        pass

    @property
    def conditional(self):
        return True

    def encode_prompt(self, prompt):
        return self.fixed


def build(name: str, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "celebahq":
        unet = UNet2DModel(**CELEBAHQ)
        h = weights_hash(unet)
        return UNetModel(cast_weights(unet, dtype).to(device).eval().requires_grad_(False), DDPM_SCHEDULE, name=name,
                         model_hash=h, device=device, dtype=dtype)
    cfg = SD15 if name == "sd15" else SDXL
    unet = UNet2DConditionModel(**cfg)
    h = weights_hash(unet)
    m = FixedPromptUNet(cast_weights(unet, dtype).to(device).eval().requires_grad_(False), SD_SCHEDULE, name=name,
                        model_hash=h,
                        device=device, dtype=dtype)
    inputs = {"encoder_hidden_states": torch.randn(1, 77, cfg["cross_attention_dim"], generator=g)}
    if name == "sdxl":
        inputs["text_embeds"] = torch.randn(1, 1280, generator=g)
        inputs["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]])
    m.fixed = Conditioning({k: v.to(device) for k, v in inputs.items()})
    return m


class Peak:
    """Peak memory of a block: the allocator's on a GPU, the resident set's on Linux CPUs (VmHWM, reset first)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                pass
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = _vm_hwm()
        self.seconds = time.perf_counter() - self.t0


def _vm_hwm() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def timed(device, fn, repeats=1):
    times, peak = [], 0
    for _ in range(repeats):
        with Peak(device) as p:
            out = fn()
        times.append(p.seconds)
        peak = max(peak, p.bytes)
    return statistics.median(times), peak, out


def emit(row: str):
    """One table row, printed as soon as it is measured (a model killed for memory keeps what it measured)."""
    print(row, flush=True)


def run_model(name: str, device, dtype, k: int, limit: float, seed: int = 0):
    t_start = time.perf_counter()
    t_build = time.perf_counter()
    model = build(name, device, dtype)
    params = sum(p.numel() for p in model.unet.parameters())
    emit(f"| {name} | build (random init) | {time.perf_counter() - t_build:.1f} s | "
                f"{params / 1e6:.0f}M parameters, x {model.x_shape} |")
    ts = 599
    x = torch.randn(model.x_shape, generator=torch.Generator().manual_seed(seed)).to(device)
    t = torch.full((1,), ts, dtype=torch.long, device=device)
    cond = model.encode_prompt("p") if model.conditional else None
    fwd, peak, _ = timed(device, lambda: model.network(x[None], t, cond), repeats=3)
    emit(f"| {name} | forward, batch 1 ({dtype_name(dtype)}) | {fwd:.3f} s | peak {format_bytes(peak)} |")
    f = model.features(ts, "p" if model.conditional else None)
    per = saved_activation_bytes(f, x)
    budget = model.max_memory or default_memory_budget(device)
    if budget < 3 * per:
        emit(f"| {name} | Jacobian products | not run | one needs about {format_bytes(3 * per)}, the budget "
                    f"is {format_bytes(budget)} |")
        return
    build_s, peak, op = timed(device, lambda: JacobianOperator(f, x, chunk_size=None))
    emit(f"| {name} | operator build (records the pullback) | {build_s:.2f} s | peak {format_bytes(peak)}; "
                f"{format_bytes(per)} saved per pass; chunk {op.chunk_size} |")
    g = torch.Generator().manual_seed(1)
    U1 = torch.randn(1, op.m, generator=g, dtype=torch.float64)
    V1 = torch.randn(1, op.n, generator=g, dtype=torch.float64)
    vjp_s, peak, _ = timed(device, lambda: op.vjp(U1))
    emit(f"| {name} | one VJP | {vjp_s:.2f} s | peak {format_bytes(peak)} |")
    jvp_s, peak, _ = timed(device, lambda: op.jvp(V1))
    emit(f"| {name} | one JVP (VJP of the pullback) | {jvp_s:.2f} s | peak {format_bytes(peak)} |")
    if time.perf_counter() - t_start + 4 * vjp_s < limit:
        b4 = min(4, op.chunk_size)
        U4 = torch.randn(b4, op.m, generator=g, dtype=torch.float64)
        bv_s, peak, _ = timed(device, lambda: op.vjp(U4))
        emit(f"| {name} | {b4} VJPs in one batch | {bv_s:.2f} s | peak {format_bytes(peak)} |")
    op = None  # free the recorded passes before the bases run

    # one basis by the default algorithm, then the published one, each stopped where the time limit is reached
    left = limit - (time.perf_counter() - t_start)
    row, ours = _basis_row(name, device, f, x, k, seed, left / 2, "latentbasis (krylov, tol 1e-3)", {})
    emit(row)
    left = limit - (time.perf_counter() - t_start)
    row, pub = _basis_row(name, device, f, x, k, seed, left, "published subspace iteration (12-50 iterations)",
                          dict(algorithm="subspace", jvp_mode="forward", one_by_one=True, chunk_size=1))
    if ours is not None and pub is not None:
        ang = float(principal_angles(ours.latent, pub.latent).max().rad2deg())
        row = row[:-2] + f"; largest principal angle to latentbasis' subspace {ang:.2f} deg |"
    emit(row)
    if limit - (time.perf_counter() - t_start) > 70 * fwd:
        v = ours.latent[0] if ours is not None else torch.nn.functional.normalize(x.cpu().flatten(), dim=0).reshape(x.shape)
        emit(_edit_row(name, model, x, ts, v))
    else:
        emit(f"| {name} | one guidance edit | not run | about {66 * fwd:.0f} s (66 forward passes) |")


class _OutOfTime(Exception):
    pass


def _basis_row(name, device, f, x, k, seed, seconds, label, kw):
    """One basis within `seconds` (stopped at the first iteration past it): (table row, Basis or None)."""
    t0, seen = time.perf_counter(), {}

    def deadline(info):
        seen.update(info)
        if time.perf_counter() - t0 > seconds:
            raise _OutOfTime

    try:
        s, peak, b = timed(device, lambda: pullback_basis(f, x, k, seed=seed, callback=deadline, **kw))
    except _OutOfTime:
        res = seen.get("residual", float("nan"))
        return (f"| {name} | basis k = {k}, {label} | not finished in {time.perf_counter() - t0:.0f} s | stopped "
                f"after {seen.get('iteration', 0)} iterations, {seen.get('jvps', 0)} JVPs + {seen.get('vjps', 0)} "
                f"VJPs{'' if res != res else f', residual {res:.1e}'} |"), None
    return (f"| {name} | basis k = {k}, {label} | {s:.1f} s | {b.jvps} JVPs + {b.vjps} VJPs, {b.iterations} "
            f"iterations, max residual {float(b.residuals.max()):.1e}; peak {format_bytes(peak)} |"), b


def _edit_row(name, model, x, ts, v) -> str:
    from latentbasis.editing import EditSettings, edit_images
    from latentbasis.sampling import Trajectory, trajectory_grid

    grid = [g for g in trajectory_grid(model.num_train_timesteps, 50, ts) if g <= ts]
    traj = Trajectory(grid, x.cpu()[None].expand(len(grid), *x.shape), None, "p" if model.conditional else None)
    s, peak, _ = timed(model.device, lambda: edit_images(model, traj, ts, v[None] * 3, EditSettings(n_iter=16)))
    return (f"| {name} | one guidance edit (16 iterations + {len(grid) - 1} DDIM steps, batch 1) | {s:.2f} s | "
            f"peak {format_bytes(peak)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="sd15,sdxl,celebahq")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="of the sampling forward (features are float32)")
    ap.add_argument("--k", type=int, default=None, help="default 8 on a GPU, 4 on the CPU")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds per model (default 80 on a GPU, so all three fit in five minutes; 600 on the CPU)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    device, dtype = resolve_device(a.device), resolve_dtype(a.dtype)
    gpu = device.type != "cpu"
    k = a.k or (8 if gpu else 4)
    limit = a.time_limit or (80.0 if gpu else 600.0)
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    if not a.one:
        print(f"# bench_scale: {what}; torch {torch.__version__}; load average {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f}; k = {k}; {limit:.0f} s per model\n", flush=True)
        print("| model | what | time | notes |\n|---|---|---|---|", flush=True)
    for name in a.models.split(","):
        name = name.strip()
        if a.one:        # the child: one model, its rows printed as they come
            try:
                run_model(name, device, dtype, k, limit)
            except Exception as e:  # out of memory on a small machine: say so
                print(f"| {name} | - | failed | {type(e).__name__}: {str(e).splitlines()[0][:200]} |", flush=True)
            continue
        # each model in its own process: one the system kills for memory (the CPU's OOM killer) costs its own rows
        # only, and the table says so
        cmd = [sys.executable, __file__, "--one", "--models", name, "--device", a.device, "--dtype", a.dtype,
               "--k", str(k), "--time-limit", str(limit)]
        proc = subprocess.run(cmd)               # its rows go straight to this one's output
        if proc.returncode < 0:
            print(f"| {name} | - | killed by signal {-proc.returncode} | "
                  f"{'out of memory (the system killed it)' if proc.returncode == -9 else 'stopped'} after the rows "
                  f"above; the machine has {format_bytes(_total_memory())} |", flush=True)
        elif proc.returncode != 0:
            print(f"| {name} | - | failed | exit {proc.returncode} |", flush=True)


if __name__ == "__main__":
    main()
