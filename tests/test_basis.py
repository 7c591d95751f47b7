"""The heart: both algorithms against closed forms (theory.md) and against dense Jacobians (torch.func.jacfwd)."""
import math

import pytest
import torch
from torch.func import jacfwd

from latentbasis import GaussianModel, LatentBasisError, latent_basis, load_model, principal_angles, pullback_basis

ALGS = ["krylov", "subspace"]


def well_separated(s: torch.Tensor, k: int, rel_gap: float) -> list[int]:
    """Indices i < k whose singular value is separated from both neighbours by rel_gap * s_i."""
    out = []
    for i in range(k):
        lo = s[i] - s[i + 1] if i + 1 < len(s) else s[i]
        hi = s[i - 1] - s[i] if i > 0 else math.inf
        if min(lo, hi) > rel_gap * s[i]:
            out.append(i)
    return out


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(principal_angles(a[None], b[None]).max().rad2deg())


@pytest.fixture(scope="module", params=["vp", "flow"])
def gaussian(request):
    lam = torch.cat([10 * 0.5 ** torch.arange(6.0), torch.logspace(-1, -3, 58)])  # a clear gap among the top six
    return GaussianModel.random(x_shape=(1, 8, 8), h_dim=80, lam=lam, seed=3, flow=request.param == "flow")


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("which", range(4))
def test_gaussian_closed_form(gaussian, alg, which):
    """VP and flow matching alike: latent basis u_i, tangent basis P e_i, singular values w_i g_i(t). (The flow
    Gaussian's top singular values lie within 2 % of each other below s = 0.4, so its timesteps start higher.)"""
    timestep = ([500, 700, 850, 950] if gaussian.flow else [200, 500, 800, 950])[which]
    k = 4
    latent, tangent, s = gaussian.exact_basis(timestep, 64)
    b = latent_basis(gaussian, torch.randn(gaussian.x_shape), timestep=timestep, k=k, algorithm=alg, tol=1e-6, seed=1)
    sep = well_separated(s, k, 0.02)
    assert sep, "the test model must have a usable gap"
    for i in sep:
        assert angle_deg(b.latent[i], latent[i]) < 0.1
        assert angle_deg(b.tangent[i], tangent[i]) < 0.1
    assert torch.allclose(b.singular_values.double(), s[:k], rtol=1e-4)
    # the sign convention: J v_i = s_i u_i with the same sign
    J = gaussian.P * (gaussian.w * gaussian.gains(timestep)) @ gaussian.U.T
    Jv = (J @ b.latent.reshape(k, -1).double().T).T
    assert torch.allclose(Jv, b.singular_values[:, None].double() * b.tangent.double(), atol=1e-4)


@pytest.mark.parametrize("alg", ALGS)
def test_gaussian_crossing_order(alg):
    """lam = (4, 0.25), w = (1, 6): the singular values swap order at abar = 1/3 (theory.md)."""
    g = GaussianModel.random(x_shape=(2,), h_dim=2, lam=[4.0, 0.25], w=[1.0, 6.0], seed=0)
    ab = g.alphas_cumprod
    cross = int((ab - 1 / 3).abs().argmin())
    tops = []
    for ts in (cross - 150, cross + 150):
        b = latent_basis(g, torch.randn(2), timestep=ts, k=1, algorithm=alg, tol=1e-6)
        latent, _, s = g.exact_basis(ts, 1)
        assert angle_deg(b.latent[0], latent[0]) < 0.1
        assert float(b.singular_values[0]) == pytest.approx(float(s[0]), rel=1e-5)
        tops.append(b.latent[0])
    # large abar (small t): g_i ~ 1, so w = 6 (u_2) leads; small abar: g_i ~ sqrt(abar) lam_i, so lam = 4 (u_1) leads
    assert angle_deg(tops[0], g.U[:, 1]) < 0.1 and angle_deg(tops[1], g.U[:, 0]) < 0.1


def test_krylov_converges_where_subspace_does_not():
    """A flat spectrum (many near-equal singular values): the published iteration with exactly k vectors stalls."""
    g = GaussianModel.random(x_shape=(1, 8, 8), h_dim=64, lam=torch.logspace(1, -2, 64), seed=3)
    ts = 60  # small t: g_i ~ 1/sqrt(abar) for every large lam_i, a nearly flat top of the spectrum
    latent, _, s = g.exact_basis(ts, 64)
    kry = latent_basis(g, torch.randn(g.x_shape), timestep=ts, k=4, tol=1e-6)
    assert float(kry.residuals.max()) <= 1e-6 * 10
    sub = latent_basis(g, torch.randn(g.x_shape), timestep=ts, k=4, algorithm="subspace")
    assert float(sub.residuals.max()) > float(kry.residuals.max())


def dense_svd(f, x):
    J = jacfwd(f)(x)
    h = f(x)
    U, S, Vh = torch.linalg.svd(J.reshape(h.numel(), x.numel()).double(), full_matrices=False)
    return U, S, Vh


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("which", ["pixel", "sd"])
def test_matches_dense_jacobian(tiny_unet_dir, tiny_sd_dir, alg, which):
    model = load_model(str(tiny_unet_dir if which == "pixel" else tiny_sd_dir))
    prompt = "the digit seven" if which == "sd" else None
    ts, k = 600, 4
    x = torch.randn(model.x_shape, generator=torch.Generator().manual_seed(5))
    U, S, Vh = dense_svd(model.features(ts, prompt), x)
    b = latent_basis(model, x, timestep=ts, k=k, prompt=prompt, algorithm=alg, tol=1e-5)
    assert torch.allclose(b.singular_values.double(), S[:k], rtol=1e-3)
    sep = well_separated(S, k, 0.02)
    assert sep
    for i in sep:
        assert angle_deg(b.latent[i], Vh[i]) < 1.0
        assert angle_deg(b.tangent[i].reshape(-1), U[:, i]) < 1.0
    assert b.jvps > 0 and b.vjps > 0 and b.residuals.shape == (k,)
    assert b.model_hash == model.model_hash and b.timestep == ts and b.prompt == prompt


@pytest.mark.parametrize("which", ["pixel", "sd"])
def test_jvp_modes_agree(tiny_unet_dir, tiny_sd_dir, which):
    """J v by forward-mode AD and by the VJP of the pullback are the same numbers."""
    from latentbasis.jacobian import JacobianOperator

    model = load_model(str(tiny_unet_dir if which == "pixel" else tiny_sd_dir))
    f = model.features(300, prompt="a cat" if which == "sd" else None)
    x, V = torch.randn(model.x_shape), torch.randn(5, *model.x_shape).reshape(5, -1).double()
    fwd = JacobianOperator(f, x, jvp_mode="forward").jvp(V)
    rev = JacobianOperator(f, x, jvp_mode="reverse").jvp(V)
    assert torch.allclose(fwd, rev, rtol=1e-4, atol=1e-5 * fwd.abs().max())
    with pytest.raises(LatentBasisError, match="jvp_mode"):
        JacobianOperator(f, x, jvp_mode="sideways")


def _conv_net(d: int) -> torch.nn.Module:
    """Convolutions of d spatial dimensions with every geometry the input-only backward must invert: padding,
    stride 2 (an odd size, so the transpose needs output padding), a 1x1 kernel, dilation with groups, circular
    padding (done before the convolution); and one it leaves to autograd ("same" padding, a string)."""
    C = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[d - 1]
    torch.manual_seed(d)
    return torch.nn.Sequential(C(3, 8, 3, padding=1), torch.nn.SiLU(), C(8, 8, 3, stride=2, padding=1),
                               torch.nn.SiLU(), C(8, 16, 1), torch.nn.SiLU(),
                               C(16, 16, 3, padding=2, dilation=2, groups=4), torch.nn.SiLU(),
                               C(16, 16, 3, padding=1, padding_mode="circular"), torch.nn.SiLU(),
                               C(16, 16, 3, padding="same")).requires_grad_(False)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_recorded_products_through_convolutions_are_the_dense_jacobians(d):
    from latentbasis.jacobian import JacobianOperator

    net = _conv_net(d)
    x = torch.randn(3, *(9,) * d)
    f = lambda z: net(z[None])[0]      # noqa: E731
    op = JacobianOperator(f, x, chunk_size=2)
    dense = torch.autograd.functional.jacobian(f, x).reshape(op.m, op.n).double()
    V, U = torch.randn(3, op.n, dtype=torch.float64), torch.randn(3, op.m, dtype=torch.float64)
    assert torch.allclose(op.jvp(V), V @ dense.T, rtol=1e-4, atol=1e-5 * dense.abs().max())
    assert torch.allclose(op.vjp(U), U @ dense, rtol=1e-4, atol=1e-5 * dense.abs().max())


def test_a_jvp_through_the_recorded_pullback_costs_one_forward_of_flops():
    """J v as the VJP of the recorded pullback: each convolution's part is one convolution, the FLOPs of the
    forward (autograd's own double backward of a convolution also computes the weight's gradient: 2.3x)."""
    from torch.utils.flop_counter import FlopCounterMode

    from latentbasis.jacobian import JacobianOperator

    net = _conv_net(2)[:-2]                # without the "same" layer, which autograd differentiates
    x = torch.randn(3, 16, 16)
    f = lambda z: net(z[None])[0]      # noqa: E731
    op = JacobianOperator(f, x, chunk_size=1)

    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    forward = flops(lambda: f(x))
    assert forward > 0
    assert flops(lambda: op.jvp(torch.randn(1, op.n, dtype=torch.float64))) == forward
    assert flops(lambda: op.vjp(torch.randn(1, op.m, dtype=torch.float64))) == forward


def test_cost_is_reported_and_far_below_dense(tiny_unet_dir):
    model = load_model(str(tiny_unet_dir))
    x = torch.randn(model.x_shape)
    b = latent_basis(model, x, t=0.5, k=4)
    assert 0 < b.jvps < 64 and 0 < b.vjps  # D_x = 64: a dense Jacobian costs 64 JVPs
    assert float(b.residuals.max()) <= 1e-3


def test_seeded_and_chunk_independent(tiny_unet_dir):
    model = load_model(str(tiny_unet_dir))
    x = torch.randn(model.x_shape)
    a = latent_basis(model, x, t=0.5, k=3, seed=7)
    b = latent_basis(model, x, t=0.5, k=3, seed=7)
    c = latent_basis(model, x, t=0.5, k=3, seed=7, chunk_size=2)
    assert torch.equal(a.latent, b.latent)
    # other chunks batch other kernels: float32 rounding on a CPU; on a GPU cuDNN's TF32 convolutions (torch's default)
    assert torch.allclose(a.latent, c.latent, atol=1e-5 if model.device.type == "cpu" else 1e-3)


def test_warm_start_from_neighbouring_timestep_is_cheaper(gaussian):
    x = torch.randn(gaussian.x_shape)
    cold = latent_basis(gaussian, x, timestep=520, k=4, tol=1e-6)
    near = latent_basis(gaussian, x, timestep=500, k=4, tol=1e-6)
    warm = latent_basis(gaussian, x, timestep=520, k=4, tol=1e-6, init=near.latent)
    assert warm.jvps + warm.vjps < cold.jvps + cold.vjps
    assert torch.allclose(warm.singular_values, cold.singular_values, rtol=1e-5)


def test_warm_start_along_a_trajectory_saves_evaluations_on_a_trained_model():
    """The report's warm start (each timestep from the previous one's basis) on the bundled digits model, k = 8:
    fewer evaluations than cold starts (<= 0.9 of them; the neighbour's vectors summed into the start block: the
    vectors themselves as the block cost 1.09x the cold start's here), every basis within 0.5 degrees of its cold
    start."""
    from latentbasis.sampling import sample_trajectory

    model = load_model("digits", device="cpu")
    timesteps = [999, 899, 799, 699, 599]
    traj = sample_trajectory(model, 0, num_steps=20, through=timesteps)
    prev, cold_n, warm_n = None, 0, 0
    for ts in timesteps:
        cold = latent_basis(model, traj.at(ts), timestep=ts, k=8)
        if prev is not None:
            warm = latent_basis(model, traj.at(ts), timestep=ts, k=8, init=prev.latent)
            cold_n, warm_n = cold_n + cold.jvps + cold.vjps, warm_n + warm.jvps + warm.vjps
            assert float(principal_angles(warm.latent, cold.latent).max().rad2deg()) < 0.5
        prev = cold
    assert warm_n <= 0.9 * cold_n, (warm_n, cold_n)


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 0}, "out of range"), ({"k": 65}, "out of range"), ({"t": 1.5}, "outside the schedule"),
    ({"timestep": 1000}, "outside the schedule"), ({"algorithm": "magic"}, "unknown algorithm"),
])
def test_bad_arguments(gaussian, kwargs, match):
    kw = {"t": 0.5, "k": 4} | kwargs
    if "timestep" in kwargs:
        kw.pop("t")
    with pytest.raises(LatentBasisError, match=match):
        latent_basis(gaussian, torch.randn(gaussian.x_shape), **kw)


def test_wrong_x_shape(gaussian):
    with pytest.raises(LatentBasisError, match="shape"):
        latent_basis(gaussian, torch.randn(1, 7, 8), t=0.5, k=2)


def test_warm_start_of_wrong_shape(gaussian):
    with pytest.raises(LatentBasisError, match="warm start"):
        pullback_basis(gaussian.features(500), torch.randn(gaussian.x_shape), 2, init=torch.randn(2, 1, 4, 4))


def test_subspace_warm_start_with_fewer_vectors(gaussian):
    x = torch.randn(gaussian.x_shape)
    near = latent_basis(gaussian, x, timestep=500, k=2, tol=1e-6)
    b = latent_basis(gaussian, x, timestep=520, k=4, algorithm="subspace", init=near.latent)
    exact = gaussian.exact_basis(520, 4)[2]
    assert b.k == 4 and torch.allclose(b.singular_values.double(), exact, rtol=1e-4)


def test_the_published_iteration_knows_its_residuals_and_can_stop_at_a_tolerance(tiny_unet_dir):
    """The subspace iteration's Ritz residuals come free each iteration (the callback), agree with the residuals of
    the basis it returns, and residual_stop ends it at tol (for comparisons at equal accuracy)."""
    m = load_model(str(tiny_unet_dir), device="cpu")
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(0))
    seen = []
    b = latent_basis(m, x, timestep=500, k=3, algorithm="subspace", tol=1e-2, residual_stop=True,
                     callback=seen.append)
    assert seen and all(i["residual"] > 1e-2 for i in seen[:-1]) and seen[-1]["residual"] <= 1e-2
    assert b.iterations == len(seen) < 50
    assert float(b.residuals.max()) == pytest.approx(seen[-1]["residual"], rel=1e-3, abs=1e-6)
    full = latent_basis(m, x, timestep=500, k=3, algorithm="subspace")
    assert full.iterations > b.iterations
    assert angle_deg(b.latent[0], full.latent[0]) < 1.0


def test_one_product_at_a_time_means_blocks_of_one(tiny_unet_dir):
    """Where the chunk is 1 (a big model on a CPU) the Krylov method expands one vector per iteration (plain
    Golub-Kahan-Lanczos): no fewer evaluations are possible in blocks, and the basis is the same."""
    m = load_model(str(tiny_unet_dir), device="cpu")
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(1))
    one = latent_basis(m, x, timestep=500, k=4, chunk_size=1)
    many = latent_basis(m, x, timestep=500, k=4, chunk_size=16)
    assert one.iterations > many.iterations and one.jvps <= many.jvps
    assert float(principal_angles(one.latent, many.latent).max().rad2deg()) < 0.5


def test_default_block_by_how_products_run():
    """One at a time: blocks of 1 (plain Golub-Kahan-Lanczos); batched: k // 4, at least 2."""
    from latentbasis.basis import default_block

    assert default_block(8, 1) == default_block(16, 1) == 1
    assert default_block(8, 16) == 2 and default_block(16, 16) == 4 and default_block(2, 16) == 2


@pytest.mark.parametrize("which", ["pixel", "sdxl"])
def test_recomputed_products_equal_the_recorded_ones(tiny_unet_dir, tiny_sdxl_dir, which):
    """Where the budget cannot hold the recorded passes, each VJP recomputes (a forward and a backward, with the
    network's gradient checkpointing) and each JVP is forward-mode AD: the same products, nothing kept between."""
    from latentbasis.jacobian import JacobianOperator

    m = load_model(str(tiny_unet_dir if which == "pixel" else tiny_sdxl_dir), device="cpu")
    f = m.features(500, None if which == "pixel" else "a cat")
    x = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(2))
    rec, again = JacobianOperator(f, x), JacobianOperator(f, x, record=False, chunk_size=2)
    assert rec.recorded and not again.recorded and again.jvp_mode == "forward"
    g = torch.Generator().manual_seed(3)
    U, V = torch.randn(3, rec.m, generator=g, dtype=torch.float64), torch.randn(3, rec.n, generator=g, dtype=torch.float64)
    assert torch.allclose(again.vjp(U), rec.vjp(U), atol=1e-5) and torch.allclose(again.jvp(V), rec.jvp(V), atol=1e-5)
    assert again.vjps == 3 and again.jvps == 3
    assert not any(getattr(mod, "gradient_checkpointing", False) for mod in m.denoiser.modules())   # restored


def test_measuring_the_saved_activations_keeps_none_of_them():
    """saved_activation_bytes holds each saved tensor only while its pass runs: tanh saves its own output, which
    packed as itself would form a cycle through its node that no collector frees (it kept one whole pass of SDXL,
    8.9 GiB, per call, and the system killed the benchmark)."""
    from latentbasis.jacobian import saved_activation_bytes
    from latentbasis.devices import memory_in_use

    x = torch.randn(2**22)                                           # 16 MiB

    def f(x):
        return torch.tanh(2 * torch.tanh(x))

    cpu = torch.device("cpu")
    per = saved_activation_bytes(f, x)
    assert per >= 2 * x.numel() * 4                                 # both tanh outputs
    before = memory_in_use(cpu)
    for _ in range(5):
        assert saved_activation_bytes(f, x) == per
    if before:                                                        # Linux: the resident set is known
        assert memory_in_use(cpu) - before < per, "saved activations stayed in memory"


def test_measuring_the_saved_activations_holds_no_pass_while_it_runs():
    """Nor during the pass: of ten saved outputs, counted in full, only the last still lives when the pass ends, as
    in a plain forward. (At SDXL size holding them put the measuring pass itself, 8.9 GiB, past the budget that then
    chose to recompute.)"""
    from torch.multiprocessing.reductions import StorageWeakRef

    from latentbasis.jacobian import saved_activation_bytes

    x = torch.randn(2**16)
    outputs: list = []

    def f(x):
        for _ in range(10):
            x = torch.tanh(x * 1.0)                                  # tanh saves its own output
            outputs.append(StorageWeakRef(x.untyped_storage()))
        alive.append(sum(not r.expired() for r in outputs))          # inside the pass, at its end
        return x

    alive: list = []
    per = saved_activation_bytes(f, x)
    assert per >= 10 * x.numel() * 4                                 # every saved output counted
    assert alive == [1], alive                                        # none held: only the current one's memory lives


def test_forward_peak_counts_the_tensors_alive_at_once():
    """forward_peak_bytes: the live tensors of a plain forward at their peak, temporaries freed as they die (what
    the recompute mode's memory budget is sized from)."""
    from latentbasis.jacobian import forward_peak_bytes

    x = torch.randn(1000)
    n = x.numel() * 4
    # a chain of temporaries: at most two alive at once (an op's input and its output)
    assert forward_peak_bytes(lambda v: ((v + 1) * 2 - 3) / 4, x) == 2 * n
    # the same work keeping every intermediate alive until the end: four at once
    assert forward_peak_bytes(lambda v: torch.stack(_keep_all(v)), x) == 4 * n + 4 * n
    # views share their base's storage and are not counted again
    assert forward_peak_bytes(lambda v: (v + 1).reshape(10, 100).t(), x) == n


def _keep_all(v):
    a = v + 1
    b = a * 2
    c = b - 3
    d = c / 4
    return [a, b, c, d]
