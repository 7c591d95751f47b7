"""Device, precision and memory budget: resolution of the user's words, half-precision sampling against float32,
the float32 Jacobian whatever the dtype, chunks that follow the budget, and out-of-memory as one message."""
import os

import pytest
import torch

from latentbasis import LatentBasisError, latent_basis, load_model
from latentbasis import devices
from latentbasis.jacobian import JacobianOperator, RECORDED, saved_activation_bytes, SLACK
from latentbasis.devices import parse_memory, resolve_device, resolve_dtype


def test_devices_are_resolved_and_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                           "mps" if torch.backends.mps.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", ""):
        if bad:
            with pytest.raises(LatentBasisError, match="not one of"):
                resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(LatentBasisError, match="no CUDA GPU"):
            resolve_device("cuda")
    else:
        with pytest.raises(LatentBasisError, match="numbered"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_dtypes_and_memory_sizes():
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("float16") == torch.float16
    assert resolve_dtype(None) == torch.float32
    with pytest.raises(LatentBasisError, match="not one of"):
        resolve_dtype("float8")
    assert parse_memory("8GB") == 8 * 10**9 and parse_memory("512MiB") == 512 * 2**20 and parse_memory("1e3") == 1000
    for bad in ("lots", "-1GB", "0", "nan"):
        with pytest.raises(LatentBasisError, match="memory size"):
            parse_memory(bad)


@pytest.fixture(scope="module")
def digits_pair():
    return load_model("digits", device="cpu"), load_model("digits", device="cpu", dtype="bfloat16")


def test_bfloat16_sampling_and_editing_stay_close_to_float32(digits_pair):
    """Stated tolerance (docs/benchmarks.md): on `digits`, bfloat16 images are within 40 dB PSNR and 0.1 (of the
    range [-1, 1]) of float32's; measured 49-51 dB and 0.02."""
    from latentbasis.editing import edit_images, sweep_directions
    from latentbasis.recipe import psnr
    from latentbasis.sampling import sample_trajectory

    f32, b16 = digits_pair
    assert next(b16.unet.parameters()).dtype == torch.bfloat16 and b16.model_hash == f32.model_hash
    a, b = (sample_trajectory(m, 1, num_steps=30, through=599) for m in (f32, b16))
    assert psnr(a.x0, b.x0) > 40 and float((a.x0 - b.x0).abs().max()) < 0.1
    basis = latent_basis(f32, a.at(599), timestep=599, k=2)
    d = sweep_directions(basis.latent, [0], [-3.0, 3.0])
    ea, eb = edit_images(f32, a, 599, d), edit_images(b16, a, 599, d)
    assert all(psnr(x, y) > 40 for x, y in zip(ea, eb))
    assert not torch.equal(a.x0, b.x0)          # it really ran in bfloat16


def test_the_jacobian_is_float32_whatever_the_dtype(digits_pair):
    f32, b16 = digits_pair
    x = torch.randn(f32.x_shape, generator=torch.Generator().manual_seed(0))
    f = b16.features(599)
    assert f(x).dtype == torch.float32
    op = JacobianOperator(f, x)
    assert op.dtype == torch.float32 and op.h.dtype == torch.float32 and op.x.dtype == torch.float32
    assert op.vjp(torch.randn(2, op.m, dtype=torch.float64)).dtype == torch.float64
    # through the bfloat16-rounded weights, computed in float32: close to the float32 model's basis
    from latentbasis import principal_angles

    for seed in range(3):   # measured: 0.32, 0.15, 0.18 degrees (shapes, whose top gaps are smaller: 0.6-2.8)
        x = torch.randn(f32.x_shape, generator=torch.Generator().manual_seed(seed))
        a, b = latent_basis(f32, x, timestep=599, k=3), latent_basis(b16, x, timestep=599, k=3)
        assert b.weights_dtype == "bfloat16" and a.weights_dtype == "float32"
        assert float(principal_angles(a.latent, b.latent).max().rad2deg()) < 0.5
        assert torch.allclose(a.singular_values, b.singular_values, rtol=0.03)


def test_chunks_follow_the_memory_budget(tiny_unet_dir, monkeypatch):
    m = load_model(str(tiny_unet_dir), device="cpu")
    x = torch.randn(m.x_shape)
    f = m.features(500)
    per = saved_activation_bytes(f, x)
    assert per > 0
    # the budget is the process's whole memory: what is in use now (fixed here: the resident set moves by more than
    # this tiny model's activations), the recorded passes, then the products
    monkeypatch.setattr(devices, "memory_in_use", lambda device: 10**9)
    used = lambda: 10**9  # noqa: E731
    op = JacobianOperator(f, x, chunk_size=None, max_memory=used() + SLACK + int((RECORDED["reverse"] + 3.5) * per))
    assert op.chunk_size == 3
    with pytest.raises(LatentBasisError, match="too small for one.*raise max_memory"):
        JacobianOperator(f, x, chunk_size=None, max_memory=used() + 2 * per)
    # the chunk changes the schedule of evaluations, not the numbers
    big = latent_basis(m, x, timestep=500, k=3, max_memory=10**10)
    small = latent_basis(m, x, timestep=500, k=3, max_memory=used() + SLACK + 5 * per)
    assert torch.allclose(big.latent, small.latent, atol=1e-5)


def test_out_of_memory_halves_the_chunk_then_says_which_setting(tiny_unet_dir):
    m = load_model(str(tiny_unet_dir), device="cpu")
    x = torch.randn(m.x_shape)
    op = JacobianOperator(m.features(500), x, chunk_size=8)
    U = torch.randn(6, op.m, dtype=torch.float64)
    want = op.vjp(U)
    real, calls = op._pull_one, []

    def flaky(u):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(u)

    op._pull_one = flaky
    assert torch.allclose(op.vjp(U), want) and op.chunk_size == 2
    op._pull_one = lambda u: (_ for _ in ()).throw(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    with pytest.raises(LatentBasisError, match="out of memory.*lower the memory budget max_memory"):
        op.vjp(U)
    op._pull_one = lambda u: (_ for _ in ()).throw(ValueError("something else"))
    with pytest.raises(ValueError):        # only memory errors are caught
        op.vjp(U)


MID_SIZE_RUN = r"""
import json, sys
import torch
from diffusers import UNet2DModel
from latentbasis import latent_basis
from latentbasis.jacobian import (forward_peak_bytes, JacobianOperator, PER_PRODUCT, RECOMPUTED_PEAKS, RECORDED, saved_activation_bytes, SLACK)
from latentbasis.devices import memory_in_use
from latentbasis.families import UNetModel

def peak():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:"))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")

torch.manual_seed(0)
unet = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
                   block_out_channels=(64, 128, 256, 256),
                   down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")).eval().requires_grad_(False)
m = UNetModel(unet, {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
              name="mid", model_hash="mid")
x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(0))
per = saved_activation_bytes(m.features(500), x)
warm = JacobianOperator(m.features(500), x, chunk_size=1, jvp_mode=sys.argv[1].replace("recompute", "reverse"))
warm.jvp(warm.vjp(torch.randn(1, warm.m, dtype=torch.float64)))   # what a first product allocates for good
del warm
rows = []
for mode in sys.argv[1:]:
    jvp_mode = "reverse" if mode == "recompute" else mode
    base = memory_in_use(torch.device("cpu"))
    if mode == "recompute":     # nothing recorded, and room for one recomputed product only
        budget = base + int(1.1 * (SLACK + RECOMPUTED_PEAKS * forward_peak_bytes(m.features(500), x)))
    else:                       # the recorded passes and one or two products at a time
        budget = base + SLACK + int((RECORDED[mode] + 2.5 * PER_PRODUCT[mode]) * per)
    seen = []
    reset_peak()
    b = latent_basis(m, x, timestep=500, k=1, tol=1e-2, max_memory=budget, jvp_mode=jvp_mode, callback=seen.append,
                     record=False if mode == "recompute" else None)
    budgeted = peak()
    free = JacobianOperator(m.features(500), x, chunk_size=None, jvp_mode=jvp_mode)
    rows.append({"mode": mode, "budget": budget, "budgeted": budgeted, "per": per, "recorded": seen[-1]["recorded"],
                 "chunk": seen[-1]["chunk_size"], "free_chunk": free.chunk_size, "free_recorded": free.recorded,
                 "residual": float(b.residuals.max())})
print(json.dumps(rows))
"""


@pytest.mark.parametrize("mode", ["reverse", "forward", "recompute"])
def test_the_memory_budget_bounds_the_whole_process(mode, tmp_path):
    """A 25M-parameter U-Net at 64x64 in its own process: with --max-memory set just above one or two products
    (reverse- and forward-mode JVPs), or just above one recomputed product (nothing recorded), the process's peak
    resident set stays within it, and the budget did bind (smaller chunks than without it, or recorded without it).
    At this size the recomputed product's fixed slack outweighs the recorded passes, so recomputing is asked for;
    at SDXL size the budget chooses it (benchmarks/bench_scale.py)."""
    import json
    import subprocess
    import sys

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc to read the process's peak memory")
    script = tmp_path / "mid.py"
    script.write_text(MID_SIZE_RUN)
    out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["mode"] for r in rows] == [mode]
    for r in rows:
        assert r["residual"] <= 1e-2, r
        assert r["budgeted"] <= r["budget"], r
        assert r["free_recorded"], r
        if r["mode"] == "recompute":
            assert not r["recorded"] and r["chunk"] >= 1, r
        else:
            assert r["recorded"] and r["chunk"] < r["free_chunk"], r


def test_the_default_device_can_be_set_for_a_whole_run(monkeypatch):
    """LATENTBASIS_DEVICE sets what "auto" means (the test suite on a GPU machine: LATENTBASIS_DEVICE=cuda)."""
    monkeypatch.setenv("LATENTBASIS_DEVICE", "cpu")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv("LATENTBASIS_DEVICE", "tpu")
    with pytest.raises(LatentBasisError, match="not one of"):
        resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")     # an explicit device is kept
