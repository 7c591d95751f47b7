"""Device, precision and memory budget: resolution of the user's words, half-precision sampling against float32,
the float32 Jacobian whatever the dtype, chunks that follow the budget, and out-of-memory as one message."""
import pytest
import torch

from latentbasis import LatentBasisError, latent_basis, load_model
from latentbasis.basis import JacobianOperator, saved_activation_bytes
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

    a, b = latent_basis(f32, x, timestep=599, k=3), latent_basis(b16, x, timestep=599, k=3)
    assert b.weights_dtype == "bfloat16" and a.weights_dtype == "float32"
    assert float(principal_angles(a.latent, b.latent).max().rad2deg()) < 3.0
    assert torch.allclose(a.singular_values, b.singular_values, rtol=0.03)


def test_chunks_follow_the_memory_budget(tiny_unet_dir):
    m = load_model(str(tiny_unet_dir), device="cpu")
    x = torch.randn(m.x_shape)
    f = m.features(500)
    per = saved_activation_bytes(f, x)
    assert per > 0
    op = JacobianOperator(f, x, chunk_size=None, max_memory=2 * per + 3 * per + per // 2)
    assert op.chunk_size == 3
    with pytest.raises(LatentBasisError, match="too small for one.*raise --max-memory"):
        JacobianOperator(f, x, chunk_size=None, max_memory=2 * per)
    # the chunk changes the schedule of evaluations, not the numbers
    big = latent_basis(m, x, timestep=500, k=3, max_memory=10**10)
    small = latent_basis(m, x, timestep=500, k=3, max_memory=3 * per + 100)
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
    with pytest.raises(LatentBasisError, match="out of memory.*lower --max-memory"):
        op.vjp(U)
    op._pull_one = lambda u: (_ for _ in ()).throw(ValueError("something else"))
    with pytest.raises(ValueError):        # only memory errors are caught
        op.vjp(U)
