"""Benchmark: latentbasis at the scale of real checkpoints, converged, on whatever device is here.

Randomly initialised denoisers of the real configurations (no download: the configurations are written out below):
    sd15      Stable Diffusion 1.5's UNet2DConditionModel (860M parameters), 4x64x64 latent, random 77x768 prompt
    sd21v     Stable Diffusion 2.1-768's U-Net (866M), 4x96x96 latent, v-prediction, random 77x1024 prompt
    sdxl      SDXL's UNet2DConditionModel (2.6B), 4x128x128 latent, random prompt, pooled embedding and time ids
    celebahq  google/ddpm-ema-celebahq-256's UNet2DModel (114M), 3x256x256 pixels
    dit       DiT-XL/2-256's DiTTransformer2DModel (675M), 4x32x32 latent, class-conditional (null label)
    sd3m      Stable Diffusion 3 medium's SD3Transformer2DModel (2.0B), 16x128x128 latent, random prompt
A random network's spectrum is flatter than a trained one's, so this is the hard case for the basis.

Per model, in its own process (one the system kills for memory costs its own rows only):
1. build; on the CPU (or with --feature-weights-only) the weights the feature map never uses are freed
   (DiffusionModel.keep_feature_weights), so SDXL fits 24 GB; elsewhere the whole network's forward at batch 1 in
   each --dtypes (sampling precision; the basis is float32 whatever it is).
2. the cost of one evaluation through the float32 feature map (h = mid_block, or the middle transformer block):
   the truncated forward, the floor (one forward and backward of the truncated network), building the operator,
   one VJP, one JVP as latentbasis runs it (the VJP of the recorded pullback), one JVP by forward-mode AD, and with
   --linearize one by torch.func.linearize (its trace and first call listed apart); each with peak memory.
3. the same k-basis by three contenders on the same operator and x_t, each to the same accuracy, the largest
   relative residual ||J^T u_i - s_i v_i|| / s_i <= --tol over the top k, or stopped at --time-limit (the row says
   so): latentbasis (block Krylov, Golub-Kahan-Lanczos with thick restarts), the published subspace iteration
   (counted up to the first iteration whose Ritz residuals all reach --tol, which it knows without extra
   evaluations; the published code itself would go on to at least 12 iterations) and scipy's ARPACK (svds, whose
   tol is this same relative residual; the k VJPs that verify its answer are listed apart). A line per iteration
   gives the time, evaluations and residual so far.
4. where the whole network is here and the time allows: one guidance edit (16 iterations, DDIM from t on a 50-step
   grid) in each --dtypes.

    python benchmarks/bench_scale.py --models sd15 --time-limit 900      # the CPU: one model per process
    python benchmarks/bench_scale.py --device cuda                      # the GPU run: all models, k = 8, ~5 min

x_t is N(0, I) noise taken as the point at t = 0.6 T. Peak memory: torch's allocator peak on a GPU; the process's
resident-set peak on the CPU (Linux), which includes the weights.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from latentbasis import principal_angles
from latentbasis.basis import pullback_basis
from latentbasis.jacobian import JacobianOperator, saved_activation_bytes
from latentbasis.devices import dtype_name, format_bytes, parse_memory, resolve_device, resolve_dtype, total_memory
from latentbasis.families import Conditioning, DiTModel, SD3Model, UNetModel
from latentbasis.loading import cast_weights

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD21V = dict(SD15, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
             use_linear_projection=True)
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
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
               "beta_end": 0.012, "clip_sample": False, "prediction_type": "epsilon"}
DDPM_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                 "clip_sample": True, "prediction_type": "epsilon"}
FLOW_SCHEDULE = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
MODELS = ("sd15", "sd21v", "sdxl", "celebahq", "dit", "sd3m")
# not a real size: SD-1.5's layout at 1/10 the width and a 16x16 latent, so the whole script can be tried in seconds
TINY = dict(SD15, sample_size=16, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=4,
            norm_num_groups=16)


class FixedPromptUNet(UNetModel):
    """A text U-Net whose every prompt is one fixed random conditioning (no text encoder is needed to time it)."""

    def _check_conditioning(self):
        pass

    @property
    def conditional(self):
        return True

    def encode_prompt(self, prompt):
        return self.fixed


class FixedPromptSD3(SD3Model):
    """An SD3 transformer whose every prompt is one fixed random conditioning."""

    def encode_prompt(self, prompt):
        return self.fixed


def build(name: str, device: torch.device, dtype: torch.dtype):
    """(model, parameters): the randomly initialised model (seeded), wrapped by its family's adapter."""
    from diffusers import DiTTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel, UNet2DModel

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cls, cfg = {"sd15": (UNet2DConditionModel, SD15), "sd21v": (UNet2DConditionModel, SD21V),
                "sdxl": (UNet2DConditionModel, SDXL), "tiny": (UNet2DConditionModel, TINY),
                "celebahq": (UNet2DModel, CELEBAHQ),
                "dit": (DiTTransformer2DModel, DIT_XL_2), "sd3m": (SD3Transformer2DModel, SD3_MEDIUM)}[name]
    # on a GPU the random initialisation runs there (seconds, not a minute per model on the host's CPU)
    with torch.device(device if device.type == "cuda" else "cpu"):
        net = cls(**cfg).eval().requires_grad_(False)
    params = sum(p.numel() for p in net.parameters())
    # the weights are seeded random ones: their name says so (hashing 10 GB of them would cost a minute)
    common = dict(name=name, model_hash=f"random-{name}-seed0", device=device, dtype=dtype)
    net = cast_weights(net, dtype).to(device)
    if name == "celebahq":
        return UNetModel(net, DDPM_SCHEDULE, **common), params
    if name == "dit":
        return DiTModel(net, DDPM_SCHEDULE, **common), params
    if name == "sd3m":
        m = FixedPromptSD3(net, FLOW_SCHEDULE, text_encoders=(None, None), **common)
        m.fixed = Conditioning({"encoder_hidden_states": torch.randn(1, 333, 4096, generator=g).to(device),
                                "pooled_projections": torch.randn(1, 2048, generator=g).to(device)})
        return m, params
    schedule = dict(SD_SCHEDULE, prediction_type="v_prediction") if name == "sd21v" else SD_SCHEDULE
    m = FixedPromptUNet(net, schedule, **common)
    inputs = {"encoder_hidden_states": torch.randn(1, 77, cfg["cross_attention_dim"], generator=g)}
    if name == "sdxl":
        inputs["text_embeds"] = torch.randn(1, 1280, generator=g)
        inputs["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]])
    m.fixed = Conditioning({k: v.to(device) for k, v in inputs.items()})
    return m, params


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


def timed(device, fn, repeats=1):
    times, peak, out = [], 0, None
    for _ in range(repeats):
        with Peak(device) as p:
            out = fn()
        times.append(p.seconds)
        peak = max(peak, p.bytes)
    return statistics.median(times), peak, out


def emit(row: str):
    """One table row (or trace line), printed as soon as it is measured: a model killed for memory keeps them."""
    print(row, flush=True)


class _OutOfTime(Exception):
    pass


class Contender:
    """One way of computing the k-basis on a shared operator, to --tol or until `seconds` have passed."""

    def __init__(self, name, model, label, seconds):
        self.name, self.model, self.label, self.seconds = name, model, label, seconds
        self.t0 = time.perf_counter()
        self.seen: dict = {}

    def trace(self, info):
        self.seen.update(info)
        emit(f"    {self.name} {self.label}: iteration {info['iteration']}, {time.perf_counter() - self.t0:.1f} s, "
             f"{info['jvps']} JVPs + {info['vjps']} VJPs, residual {info['residual']:.2e}")
        if time.perf_counter() - self.t0 > self.seconds:
            raise _OutOfTime

    def stopped_row(self, k):
        res = self.seen.get("residual", float("nan"))
        return (f"| {self.name} | basis k = {k}, {self.label} | not converged: stopped at {time.perf_counter() - self.t0:.0f}"
                f" s (--time-limit) | after {self.seen.get('iteration', 0)} iterations, {self.seen.get('jvps', 0)} "
                f"JVPs + {self.seen.get('vjps', 0)} VJPs, residual {res:.1e} |")


def basis_rows(name, device, f, x, k, tol, seed, seconds, which, budget=None, record=None, blocks=()):
    """Each contender's k-basis on the same f, x_t, to residual tol: {label: Basis or None}, rows emitted.
    blocks: also latentbasis with these block sizes, a row each (the default block is the plain "latentbasis")."""
    found = {}
    runs = {"latentbasis": dict(algorithm="krylov"),
            "published": dict(algorithm="subspace", one_by_one=True, residual_stop=True)}
    for b in blocks:
        runs[f"latentbasis, blocks of {b}"] = dict(algorithm="krylov", block=b)
    if "latentbasis" in which:
        i = which.index("latentbasis") + 1
        which = which[:i] + [f"latentbasis, blocks of {b}" for b in blocks] + which[i:]
    for label in which:
        c = Contender(name, None, label, seconds)
        try:
            if label == "arpack":
                s, peak, b = timed(device, lambda: arpack_basis(f, x, k, tol, seed, c, budget, record))
                extra = f"; then {b.extra['verify_vjps']} VJPs to verify"
            else:
                s, peak, b = timed(device, lambda: pullback_basis(f, x, k, seed=seed, tol=tol, max_memory=budget, record=record,
                                                                  callback=c.trace, **runs[label]))
                extra = ""
        except _OutOfTime:
            emit(c.stopped_row(k))
            found[label] = None
            continue
        except Exception as e:   # one contender's failure (memory, say) costs its own row only
            emit(f"| {name} | basis k = {k}, {label} | failed | {type(e).__name__}: {str(e).splitlines()[0][:200]} |")
            found[label] = None
            continue
        r = float(b.residuals.max())
        word = "converged" if r <= tol else "not converged (its own stopping rule)"
        emit(f"| {name} | basis k = {k}, {label} | {word} in {s:.1f} s | {b.jvps} JVPs + {b.vjps} VJPs = "
             f"{b.jvps + b.vjps} evaluations, {b.iterations} iterations, max residual {r:.1e}{extra}; "
             f"peak {format_bytes(peak)}{how_run(c.seen)} |")
        found[label] = b
    ours = found.get("latentbasis")
    for label, b in found.items():
        if b is not None and ours is not None and not label.startswith("latentbasis"):
            ang = float(principal_angles(ours.latent, b.latent).max().rad2deg())
            ratio = (ours.jvps + ours.vjps) / max(1, b.jvps + b.vjps)
            emit(f"| {name} | latentbasis against {label} | {ratio:.2f} x its evaluations | largest principal angle "
                 f"between the two subspaces {ang:.2f} deg; singular values {_values(ours)} against "
                 f"{_values(b)} (where the k-th and the next are close, the k-th vector is ill-determined) |")
    return found


def how_run(seen: dict) -> str:
    """How the operator ran the products, from the basis's last progress report."""
    if "recorded" not in seen:
        return ""
    if not seen["recorded"]:
        return "; nothing recorded (the budget): each product recomputed, one at a time"
    blocks = f", blocks of {seen['block']}" if "block" in seen else ""
    return f"; passes recorded, {seen.get('chunk_size')} products at a time{blocks}"


def _values(b) -> str:
    return ", ".join(f"{float(v):.4g}" for v in b.singular_values)


def arpack_basis(f, x, k, tol, seed, contender, budget=None, record=None):
    """scipy's ARPACK (svds) on J as a LinearOperator over the same JacobianOperator: Lanczos on J^T J with implicit
    restarts, each step one JVP and one VJP; its tol is the relative residual used here. Returns a Basis-like
    record (latent, residuals, jvps, vjps, iterations, extra['verify_vjps'])."""
    from scipy.sparse.linalg import LinearOperator, svds
    from types import SimpleNamespace

    op = JacobianOperator(f, x, chunk_size=None, max_memory=budget, record=record)
    steps = [0]

    def mv(v):
        if op.jvps % 10 == 0:
            contender.trace({"iteration": steps[0], "jvps": op.jvps, "vjps": op.vjps, "residual": float("nan")})
        return op.jvp(torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(1, -1)))[0].cpu().numpy()

    def rmv(u):
        steps[0] += 1
        return op.vjp(torch.from_numpy(np.asarray(u, dtype=np.float64).reshape(1, -1)))[0].cpu().numpy()

    A = LinearOperator((op.m, op.n), matvec=mv, rmatvec=rmv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(min(op.m, op.n))
    U, s, Vt = svds(A, k=k, tol=tol, v0=v0, solver="arpack")
    order = np.argsort(-s)
    V = torch.from_numpy(Vt[order].copy())
    s_t = torch.from_numpy(s[order].copy())
    Uh = torch.from_numpy(U[:, order].T.copy())
    jvps, vjps = op.jvps, op.vjps
    JtU = op.vjp(Uh).cpu()
    res = (JtU - s_t[:, None] * V).norm(dim=1) / s_t
    return SimpleNamespace(latent=V.float().reshape(k, *x.shape), residuals=res, jvps=jvps, vjps=vjps,
                           singular_values=s_t,
                           iterations=steps[0], extra={"verify_vjps": op.vjps - vjps})


def product_profile(name, op, U1, V1, top=12):
    """Where one JVP's time goes beside one VJP's, by operator (torch.profiler's self CPU time, each product once
    after the timed runs): the operators that take the most time in the JVP, with their time in the VJP."""
    from torch.profiler import ProfilerActivity, profile

    def self_seconds(fn):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}

    vjp_t, jvp_t = self_seconds(lambda: op.vjp(U1)), self_seconds(lambda: op.jvp(V1))
    print(f"\n    {name}: one JVP (latentbasis) against one VJP by operator, self CPU seconds, top {top} in the JVP:\n"
          f"    | operator | VJP | JVP | JVP - VJP |\n    |---|---|---|---|", flush=True)
    for key in sorted(jvp_t, key=jvp_t.get, reverse=True)[:top]:
        print(f"    | {key} | {vjp_t.get(key, 0.0):.2f} | {jvp_t[key]:.2f} | {jvp_t[key] - vjp_t.get(key, 0.0):+.2f} |",
              flush=True)
    rest_v = sum(vjp_t.values()) - sum(vjp_t.get(k, 0.0) for k in sorted(jvp_t, key=jvp_t.get, reverse=True)[:top])
    rest_j = sum(jvp_t.values()) - sum(sorted(jvp_t.values(), reverse=True)[:top])
    print(f"    | the rest | {rest_v:.2f} | {rest_j:.2f} | {rest_j - rest_v:+.2f} |\n"
          f"    | all | {sum(vjp_t.values()):.2f} | {sum(jvp_t.values()):.2f} | "
          f"{sum(jvp_t.values()) - sum(vjp_t.values()):+.2f} |\n", flush=True)


def convolution_rows(name, device, f, x, op, U1, V1, repeats=3):
    """The recorded products with autograd's own convolution backward (the pullback built without
    jacobian.double_backward_friendly) beside latentbasis', timed interleaved (medians of `repeats`), same x."""
    import contextlib

    import latentbasis.jacobian as jacobian

    friendly = jacobian.double_backward_friendly
    jacobian.double_backward_friendly = contextlib.nullcontext
    try:
        plain = JacobianOperator(f, x, chunk_size=op.chunk_size)
    finally:
        jacobian.double_backward_friendly = friendly
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for label, o in (("autograd's", plain), ("latentbasis'", op)):
            for way, fn in (("VJP", lambda o=o: o.vjp(U1)), ("JVP", lambda o=o: o.jvp(V1))):
                s, _, _ = timed(device, fn)
                times.setdefault(f"{way}, {label}", []).append(s)
    med = {k: statistics.median(v) for k, v in times.items()}
    for label in ("autograd's", "latentbasis'"):
        emit(f"| {name} | interleaved: one VJP / one JVP, {label} convolution backward | "
             f"{med['VJP, ' + label]:.2f} / {med['JVP, ' + label]:.2f} s | JVP = "
             f"{med['JVP, ' + label] / med['VJP, ' + label]:.2f} VJPs; medians of {repeats} |")


def evaluation_rows(name, device, f, x, budget=None, record=None, profile_products=False,
                    compare_convolutions=False):
    """The cost of one evaluation through the feature map, each way, with the floor beside them."""
    from torch.func import jvp

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        s, peak, h = timed(device, lambda: f(x), repeats=2)
    emit(f"| {name} | truncated forward (to the feature map) | {s:.2f} s | peak {format_bytes(peak)}; h {tuple(h.shape)} |")
    u = torch.randn(h.shape, generator=g).to(device)
    v = torch.randn(x.shape, generator=g).to(device)

    def forward_backward():
        xx = x.clone().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(f(xx), xx, u)[0]

    floor, peak, _ = timed(device, forward_backward, repeats=2)
    emit(f"| {name} | floor: one forward and backward of the truncated network | {floor:.2f} s | "
         f"peak {format_bytes(peak)} |")
    s, peak, op = timed(device, lambda: JacobianOperator(f, x, chunk_size=None, max_memory=budget, record=record))
    how = ("records the pullback and its pullback" if op.recorded else
           f"records nothing: the budget is short of the recorded passes, so each product recomputes, a plain "
           f"forward's live tensors {format_bytes(op.forward_peak or 0)}")
    emit(f"| {name} | operator build ({how}) | {s:.2f} s | peak {format_bytes(peak)}; "
         f"{format_bytes(op.saved_bytes or saved_activation_bytes(f, x))} saved per pass; chunk {op.chunk_size} |")
    U1, V1 = u.reshape(1, -1).double(), v.reshape(1, -1).double()
    vjp_s, peak, _ = timed(device, lambda: op.vjp(U1), repeats=3)
    emit(f"| {name} | one VJP ({'replays the recorded pullback' if op.recorded else 'a forward and a backward'}) | "
         f"{vjp_s:.2f} s | peak {format_bytes(peak)} |")
    s, peak, _ = timed(device, lambda: op.jvp(V1), repeats=3)
    emit(f"| {name} | one JVP, latentbasis ({'VJP of the recorded pullback' if op.recorded else 'forward-mode AD'}) | "
         f"{s:.2f} s = {s / vjp_s:.2f} VJPs | peak {format_bytes(peak)} |")
    if profile_products and device.type == "cpu":
        product_profile(name, op, U1, V1)
    if compare_convolutions:
        convolution_rows(name, device, f, x, op, U1, V1)
    op = None
    s, peak, _ = timed(device, lambda: jvp(f, (x,), (v,))[1], repeats=2)
    emit(f"| {name} | one JVP, forward-mode AD (torch.func.jvp, the published way) | {s:.2f} s = {s / vjp_s:.2f} "
         f"VJPs | peak {format_bytes(peak)} |")
    return vjp_s


def linearize_row(name, device, f, x, vjp_s):
    """A JVP by torch.func.linearize: traced once, then replayed (run last: its peak memory is the largest)."""
    from torch.func import linearize

    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(device)
    s0, peak0, (_, jfn) = timed(device, lambda: linearize(f, x))
    s1, peak1, _ = timed(device, lambda: jfn(v))
    s, peak, _ = timed(device, lambda: jfn(v), repeats=2)
    emit(f"| {name} | one JVP, torch.func.linearize (replay) | {s:.2f} s = {s / vjp_s:.2f} VJPs | trace "
         f"{s0:.1f} s and first call {s1:.1f} s beside it; peak {format_bytes(max(peak0, peak1, peak))} |")


def edit_row(name, model, x, ts, v) -> str:
    from latentbasis.editing import EditSettings, edit_images
    from latentbasis.sampling import Trajectory, trajectory_grid

    grid = [g for g in trajectory_grid(model.num_train_timesteps, 50, ts) if g <= ts]
    traj = Trajectory(grid, x.cpu()[None].expand(len(grid), *x.shape), None, "p" if model.conditional else None)
    s, peak, _ = timed(model.device, lambda: edit_images(model, traj, ts, v[None] * 3, EditSettings(n_iter=16)))
    return (f"| {name} | one guidance edit in {dtype_name(model.dtype)} (16 iterations + {len(grid) - 1} DDIM steps, "
            f"batch 1) | {s:.2f} s | peak {format_bytes(peak)} |")


def edit_profile(name, model, x, ts, v, top=12):
    """Where one guidance edit's time goes: torch.profiler's top operators by device time (CPU time on a CPU),
    printed as a block of lines after the edit rows (the edit once first, so nothing is first-call cost)."""
    from torch.profiler import ProfilerActivity, profile

    from latentbasis.editing import EditSettings, edit_images
    from latentbasis.sampling import Trajectory, trajectory_grid

    grid = [g for g in trajectory_grid(model.num_train_timesteps, 50, ts) if g <= ts]
    traj = Trajectory(grid, x.cpu()[None].expand(len(grid), *x.shape), None, "p" if model.conditional else None)
    run = lambda: edit_images(model, traj, ts, v[None] * 3, EditSettings(n_iter=16))   # noqa: E731
    run()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run()
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
    key = "self_cuda_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
    print(f"    {name} edit profile ({dtype_name(model.dtype)}), top {top} by {key}:", flush=True)
    for line in prof.key_averages().table(sort_by=key, row_limit=top).splitlines():
        print("    " + line, flush=True)


def run_model(name, device, dtypes, k, tol, limit, which, feature_only, linearize, max_memory=None, record=None,
              seed=0, costs=True, blocks=(), profile_edit=False, profile_products=False, compare_convolutions=False):
    t_build = time.perf_counter()
    model, params = build(name, device, dtypes[0])
    model.max_memory = max_memory
    emit(f"| {name} | build (random init) | {time.perf_counter() - t_build:.1f} s | {params / 1e6:.0f}M parameters, "
         f"x {model.x_shape}, h at {model.default_layer} |")
    ts = 599
    x = torch.randn(model.x_shape, generator=torch.Generator().manual_seed(seed)).to(device)
    prompt = "p" if model.conditioning == "text" or isinstance(model, FixedPromptUNet) else None
    fwd = None
    if feature_only:
        total = sum(p.numel() * p.element_size() for p in model.denoiser.parameters())
        freed = model.keep_feature_weights()
        emit(f"| {name} | weights kept for the feature map | {format_bytes(total - freed)} of {format_bytes(total)} | "
             f"the rest freed (keep_feature_weights): no sampling or edit rows |")
    else:
        t = torch.full((1,), ts, dtype=torch.long, device=device)
        fwd, peak, _ = timed(device, lambda: model.network(x[None], t, model.encode_prompt(prompt)), repeats=3)
        emit(f"| {name} | whole forward, batch 1 ({dtype_name(model.dtype)}) | {fwd:.3f} s | peak {format_bytes(peak)} |")
    f = model.features(ts, prompt)
    vjp_s = (evaluation_rows(name, device, f, x, max_memory, record, profile_products, compare_convolutions)
             if costs else None)
    found = basis_rows(name, device, f, x, k, tol, seed, limit, which, max_memory, record, blocks)
    if linearize and vjp_s:
        linearize_row(name, device, f, x, vjp_s)
    if feature_only:
        return
    ours = found.get("latentbasis")
    v = ours.latent[0] if ours is not None else torch.nn.functional.normalize(x.cpu().flatten(), dim=0).reshape(x.shape)
    for i, dt in enumerate(dtypes):
        if i:
            cast_weights(model.denoiser, dt)
            model.dtype = dt
            if "_traced" in model.__dict__:
                model._traced = {}
        if device.type == "cpu" and fwd is not None and 66 * fwd > limit:
            emit(f"| {name} | one guidance edit in {dtype_name(dt)} | not run | about {66 * fwd:.0f} s (66 forward "
                 f"passes) |")
            continue
        emit(edit_row(name, model, x, ts, v))
        if profile_edit:
            edit_profile(name, model, x, ts, v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtypes", default=None, help="sampling precisions (default float32,bfloat16 on a GPU, "
                                                   "float32 on the CPU); bases are float32 whatever they are")
    ap.add_argument("--k", type=int, default=None, help="default 8 on a GPU, 4 on the CPU")
    ap.add_argument("--tol", type=float, default=1e-2, help="the residual every contender is run to")
    ap.add_argument("--contenders", default="latentbasis,published,arpack")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds per contender (default 15 on a GPU, so all models fit five minutes; 900 on the CPU)")
    ap.add_argument("--feature-weights-only", choices=("auto", "yes", "no"), default="auto",
                    help="free the weights the feature map never uses (auto: on the CPU)")
    ap.add_argument("--linearize", action="store_true", help="also time a JVP by torch.func.linearize")
    ap.add_argument("--max-memory", default=None, help="the process's memory budget for the Jacobian products "
                                                       "(default: the device's, latentbasis.devices)")
    ap.add_argument("--record", choices=("auto", "yes", "no"), default="auto",
                    help="record the passes (yes), recompute each product (no), or as the budget allows (auto)")
    ap.add_argument("--no-costs", action="store_true", help="skip the rows that time one evaluation each way "
                                                                "(at SDXL size on a CPU they take a quarter of an hour)")
    ap.add_argument("--blocks", default="", help="also run latentbasis with these block sizes (e.g. 2,4,8,16), a row "
                                                 "each, beside its default block")
    ap.add_argument("--profile-edit", action="store_true", help="print where one guidance edit's time goes "
                                                                    "(torch.profiler's top operators)")
    ap.add_argument("--profile-products", action="store_true", help="on the CPU, print where one JVP's time goes "
                                                                        "beside one VJP's, by operator")
    ap.add_argument("--compare-convolutions", action="store_true", help="also time the recorded products with "
                    "autograd's own convolution backward, interleaved with latentbasis'")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    device = resolve_device(a.device)
    gpu = device.type != "cpu"
    dtypes = [resolve_dtype(d) for d in (a.dtypes or ("float32,bfloat16" if gpu else "float32")).split(",")]
    k = a.k or (8 if gpu else 4)
    limit = a.time_limit or (15.0 if gpu else 900.0)
    feature_only = a.feature_weights_only == "yes" or (a.feature_weights_only == "auto" and not gpu)
    which = [c.strip() for c in a.contenders.split(",") if c.strip()]
    blocks = [int(b) for b in a.blocks.split(",") if b.strip()]
    if a.one:        # the child: one model, its rows printed as they come
        name = a.models
        try:
            run_model(name, device, dtypes, k, a.tol, limit, which, feature_only, a.linearize,
                      parse_memory(a.max_memory) if a.max_memory else None,
                      {"auto": None, "yes": True, "no": False}[a.record], costs=not a.no_costs, blocks=blocks,
                      profile_edit=a.profile_edit, profile_products=a.profile_products,
                      compare_convolutions=a.compare_convolutions)
        except Exception as e:  # out of memory on a small machine: say so
            print(f"| {name} | - | failed | {type(e).__name__}: {str(e).splitlines()[0][:200]} |", flush=True)
        return
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"# bench_scale: {what}; torch {torch.__version__}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"k = {k}; residual {a.tol:g}; {limit:.0f} s per contender; sampling in "
          f"{', '.join(dtype_name(d) for d in dtypes)}\n", flush=True)
    print("| model | what | time | notes |\n|---|---|---|---|", flush=True)
    for name in a.models.split(","):
        name = name.strip()
        cmd = [sys.executable, __file__, "--one", "--models", name, "--device", a.device, "--k", str(k),
               "--tol", str(a.tol), "--contenders", ",".join(which), "--time-limit", str(limit),
               "--dtypes", ",".join(dtype_name(d) for d in dtypes),
               "--feature-weights-only", "yes" if feature_only else "no"] + (["--linearize"] if a.linearize else [])
        cmd += (["--max-memory", a.max_memory] if a.max_memory else []) + ["--record", a.record]
        cmd += ["--no-costs"] if a.no_costs else []
        cmd += (["--blocks", a.blocks] if blocks else []) + (["--profile-edit"] if a.profile_edit else [])
        cmd += ["--profile-products"] if a.profile_products else []
        cmd += ["--compare-convolutions"] if a.compare_convolutions else []
        proc = subprocess.run(cmd)               # its rows go straight to this one's output
        if proc.returncode < 0:
            print(f"| {name} | - | killed by signal {-proc.returncode} | "
                  f"{'out of memory (the system killed it)' if proc.returncode == -9 else 'stopped'} after the rows "
                  f"above; the machine has {format_bytes(total_memory(torch.device('cpu')))} |", flush=True)
        elif proc.returncode != 0:
            print(f"| {name} | - | failed | exit {proc.returncode} |", flush=True)


if __name__ == "__main__":
    main()
