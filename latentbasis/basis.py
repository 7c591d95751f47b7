"""The local pullback basis: top-k singular triplets of J = df_t/dx_t from Jacobian-vector products alone.

    J = U S V^T (thin, top k).  latent basis: rows v_i of V^T (unit vectors in X, what an edit moves along);
    tangent basis: rows u_i = J v_i / s_i (unit vectors in H); singular values s_1 >= ... >= s_k.

J is never formed. J^T u (a VJP) replays a pullback recorded once per (x_t, t), and J v (a JVP) is that linear
pullback's own VJP, about as costly (forward-mode AD costs 2.4-3 VJPs; latentbasis/jacobian.py). The algorithms
count both.

Two algorithms behind `pullback_basis`:
- "krylov" (default): block Golub-Kahan-Lanczos with full reorthogonalisation and Rayleigh-Ritz. It keeps a
  right basis K (rows, in X), a left basis Q spanning J K (rows, in H) and Z = J^T Q, so every Ritz triplet's
  residual r_i = ||J^T u_i - s_i v_i|| is known without extra evaluations. It stops when r_i / s_i <= tol for
  the top k, expands only along the residuals of the unconverged Ritz vectors, and restarts thickly (keeping
  the best Ritz vectors) when the basis grows past `max_dim`. Started from J^T of a random block (cheap VJPs),
  or from a warm-start basis.
- "subspace": the published block subspace iteration (Park et al. 2023, method.md): V0 = QR(randn);
  repeat {Y = J V; Z = J^T Y; V = right singular vectors of Z^T} until allclose(V_prev, V, atol=1e-4) and at
  least 12 iterations (at most 50); then u = J v / ||J v||. Kept for reference and comparison.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from . import validate
from .errors import LatentBasisError
from .features import FeatureMap
from .jacobian import JacobianOperator
from .loading import resolve_timestep
from .masks import mask_in_x, mask_sha256

ALGORITHMS = ("krylov", "subspace")


def default_block(k: int, chunk_size: int = 16) -> int:
    """Block size of the krylov algorithm for k vectors, by how the products run.

    - One at a time (a chunk of 1: a big model on a CPU): a block costs its size in sequential products and buys no
      batching, and a block of 1 (plain Golub-Kahan-Lanczos) needs the fewest: on a random Stable-Diffusion-1.5
      U-Net at 4x32x32, k = 4 to residual 1e-2 took 65 evaluations with blocks of 1 and 92 with blocks of 2
      (docs/benchmarks.md, Scale).
    - Batched: max(2, k // 4) (benchmarks/bench_basis.py), on a GPU too: larger blocks need more evaluations and a
      batch of products costs about its size there at real scale (one H200, k = 8 to 1e-2: SD-1.5 4.9 / 4.6 / 5.7 /
      10.4 s with blocks of 2 / 4 / 8 / 16, SDXL 9.8 / 12.5 s with 2 / 4; docs/benchmarks.md, The GPU run)."""
    return 1 if chunk_size <= 1 else max(2, k // 4)


@dataclass
class Provenance:
    """Where a basis comes from and what it cost: the model (name, weights' hash), the layer h is taken at, the
    point's timestep and condition, where it was computed (always in float32, through weights as loaded), and the
    algorithm's run."""

    model: str = ""
    model_hash: str = ""
    layer: str = "mid_block"
    timestep: int | None = None
    t_fraction: float | None = None
    prompt: str | None = None
    device: str = "cpu"
    weights_dtype: str = "float32"
    algorithm: str = "krylov"
    seed: int = 0
    iterations: int = 0
    jvps: int = 0
    vjps: int = 0
    seconds: float = 0.0


@dataclass
class Region:
    """Which map a basis is of: space "h", the pullback of the feature map h (the paper), or "x0", the Jacobian of
    x0_hat, over a region `mask` (bool [S, S] on the image; None: the whole image; masks.mask_sha256 its hash),
    its directions kept orthogonal to the top `null_rank` directions of the region's complement."""

    space: str = "h"
    mask: torch.Tensor | None = None
    mask_sha256: str = ""
    null_rank: int = 0


PROVENANCE = tuple(f.name for f in fields(Provenance))
REGION = tuple(f.name for f in fields(Region))


@dataclass
class Basis:
    """A local basis at one point x_t: the maths (rows are unit vectors; see the module docstring), with its
    provenance and region as their own records. Their fields read and write through the basis too (b.timestep is
    b.provenance.timestep, b.mask is b.region.mask)."""

    latent: torch.Tensor            # [k, *x_shape]  right singular vectors v_i
    tangent: torch.Tensor           # [k, *h_shape]  left singular vectors u_i
    singular_values: torch.Tensor   # [k]            descending
    point: torch.Tensor             # [*x_shape]     the x_t the basis was computed at
    residuals: torch.Tensor         # [k]            ||J^T u_i - s_i v_i|| / s_i
    provenance: Provenance = field(default_factory=Provenance)
    region: Region = field(default_factory=Region)
    descriptions: list | None = None  # what each direction does (describe, registration; None: not described)
    extra: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.singular_values.shape[0])

    def __getattr__(self, name):
        record = "provenance" if name in PROVENANCE else "region" if name in REGION else None
        if record is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.__dict__[record], name)

    def __setattr__(self, name, value):
        if name in PROVENANCE:
            setattr(self.provenance, name, value)
        elif name in REGION:
            setattr(self.region, name, value)
        else:
            object.__setattr__(self, name, value)


@dataclass
class GlobalDirections(Basis):
    """Directions many samples' bases share at one timestep (transport.global_directions). Not a local basis:
    the latent and tangent rows come from two separate decompositions, so J v = s u does not hold for them, and
    `singular_values` are shares in [0, 1] (the mean share of the samples' spans each direction lies in), not
    singular values of a Jacobian; `point` is the samples' mean x_t. Applied at a point only by transport
    (transport.transported_basis)."""


def orth_rows(A: torch.Tensor, against: torch.Tensor | None = None, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal rows spanning rowspace(A) minus its projection on `against` (orthonormal rows).

    Two passes of classical Gram-Schmidt against `against`, then an SVD that drops directions whose weight is
    below rtol times A's largest row norm (what is left there is rounding, not signal). Returns [r, D], r <= len(A).
    """
    scale = A.norm(dim=1).max() if A.numel() else torch.tensor(0.0)
    if scale == 0:
        return A[:0]
    for _ in range(2):
        if against is not None and against.shape[0]:
            A = A - (A @ against.T) @ against
    _, s, Vh = torch.linalg.svd(A, full_matrices=False)
    Q = Vh[s > rtol * scale]
    if against is not None and against.shape[0] and Q.shape[0]:
        Q = Q - (Q @ against.T) @ against
        Q = torch.linalg.qr(Q.T)[0].T
    return Q


def _fix_signs(V: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular vectors are defined up to a joint sign: make each v_i's largest-magnitude entry positive."""
    idx = V.abs().argmax(dim=1)
    sign = torch.sign(V.gather(1, idx[:, None])).clamp(min=0) * 2 - 1
    return V * sign, U * sign


def _residuals(JtU: torch.Tensor, s: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """r_i = ||J^T u_i - s_i v_i|| / s_i (s_i floored at 1e-12 s_1 so a rank-deficient J does not divide by 0)."""
    floor = s.max().clamp(min=1e-30) * 1e-12
    return (JtU - s[:, None] * V).norm(dim=1) / s.clamp(min=floor)


def _nonzero(Y: torch.Tensor) -> torch.Tensor:
    """Y (the first products J v), unless J is zero: then h does not depend on x_t at all, one clear message."""
    if not bool((Y != 0).any()):
        raise LatentBasisError("the feature map does not change with x_t (its Jacobian is zero): choose a layer that "
                               "x_t flows through (e.g. mid_block), not one fed by the timestep or the prompt only")
    return Y


def _krylov(op: JacobianOperator, k: int, *, tol: float, gen: torch.Generator, init: torch.Tensor | None,
            block: int, max_dim: int, max_iters: int, callback) -> tuple:
    n, m = op.n, op.m
    # Start block in X: a warm start's vectors summed in `block` groups (rows i, i + block, ...), so each start
    # vector holds its share of the neighbour's directions equally: a Lanczos start rich in the top k that then
    # grows as a cold start does (the vectors themselves as the start block cost their products up front and
    # needed more evaluations than no warm start: benchmarks/bench_warm.py); filled up to `block` with J^T of
    # random vectors in H (row space of J).
    rows = {"device": op.device, "dtype": op.rows_dtype}
    starts = []
    if init is not None:
        V0 = init.reshape(init.shape[0], -1).to(**rows)
        groups = min(block, V0.shape[0])
        starts.append(torch.stack([V0[i::groups].sum(0) for i in range(groups)]))
    fill = block - sum(s.shape[0] for s in starts)
    if fill > 0:
        starts.append(op.vjp(torch.randn(fill, m, generator=gen, dtype=torch.float64).to(**rows)))
    K = orth_rows(torch.cat(starts))
    Y = _nonzero(op.jvp(K))            # rows J k_j
    Q = orth_rows(Y)                   # left basis, spans J K
    Z = op.vjp(Q)                      # rows J^T q_j
    it = 0
    while True:
        it += 1
        # Rayleigh-Ritz: J K^T = Q^T B with B = Q Y^T (Q spans J K); SVD B = P diag(s) W^T gives
        # Ritz triplets v = W K, u = P^T Q, s, with J v = s u exactly and J^T u = P^T Z known.
        P, s, W = torch.linalg.svd(Q @ Y.T, full_matrices=False)
        V, Uh, JtU = W @ K, P.T @ Q, P.T @ Z
        res = _residuals(JtU, s, V)
        top = min(k, len(s))
        if callback:
            callback({"iteration": it, "jvps": op.jvps, "vjps": op.vjps, "residual": float(res[:top].max()),
                      "residuals": res[:top].tolist(), "singular_values": s[:top].tolist(), "dim": K.shape[0],
                      "chunk_size": op.chunk_size, "recorded": op.recorded, "block": block})
        if (top == k and bool((res[:k] <= tol).all())) or K.shape[0] >= n or it >= max_iters:
            break
        # expand along the residuals of the first `block` unconverged Ritz vectors (converged ones are locked)
        wanted = [i for i in range(min(max(k, block), len(s))) if res[i] > tol][:block]
        new = orth_rows(JtU[wanted] - s[wanted, None] * V[wanted], against=K)
        if new.shape[0] == 0:
            break
        new = new[: n - K.shape[0]]
        if K.shape[0] + new.shape[0] > max_dim:  # thick restart: keep the best Ritz vectors (J v_i = s_i u_i)
            keep = max(max_dim - new.shape[0], k)
            K, Y, Q, Z = V[:keep], s[:keep, None] * Uh[:keep], Uh[:keep], JtU[:keep]
            new = orth_rows(new, against=K)
            if new.shape[0] == 0:
                break
        Ynew = op.jvp(new)
        Qnew = orth_rows(Ynew, against=Q)
        K, Y = torch.cat([K, new]), torch.cat([Y, Ynew])
        Q, Z = torch.cat([Q, Qnew]), torch.cat([Z, op.vjp(Qnew)])
    return V[:k], Uh[:k], s[:k], res[:k], it


def _subspace(op: JacobianOperator, k: int, *, gen: torch.Generator, init: torch.Tensor | None,
              atol: float = 1e-4, min_iters: int = 12, max_iters: int = 50, one_by_one: bool = True,
              tol: float | None = None, callback=None) -> tuple:
    """The published iteration. Each iteration also knows, without extra evaluations, the residuals of the Ritz
    pairs of its V: with G = Y Y^T = V J^T J V^T = W diag(s^2) W^T, the pairs v = W^T V have J^T J v = W^T Z and
    r = ||J^T J v - s^2 v|| / s^2 (= ||J^T u - s v|| / s for u = J v / s). They go to the callback; tol (not in
    the published code, which stops by allclose only) also stops once they are all <= tol, so that contenders can
    be compared at equal accuracy."""
    V = torch.randn(k, op.n, generator=gen, dtype=torch.float64)  # CPU draws: the same on every device
    if init is not None:  # warm start, padded with random vectors up to k
        V[: init.shape[0]] = init[:k].reshape(min(k, init.shape[0]), -1).to(torch.float64)
    V = V.to(op.device, op.rows_dtype)
    V = torch.linalg.qr(V.T)[0].T
    it = 0
    for it in range(1, max_iters + 1):
        Y = _nonzero(op.jvp(V)) if it == 1 else op.jvp(V)
        Zr = torch.cat([op.vjp(y[None]) for y in Y]) if one_by_one else op.vjp(Y)  # rows J^T J v_i
        lam, W = torch.linalg.eigh(Y @ Y.T)
        lam, W = lam.flip(0).clamp(min=0), W.flip(1)
        res = _residuals((W.T @ Zr) / lam.sqrt().clamp(min=1e-30)[:, None], lam.sqrt(), W.T @ V)
        Vnew = torch.linalg.svd(Zr, full_matrices=False)[2][:k]
        converged = torch.allclose(V, Vnew, atol=atol)
        if callback:
            callback({"iteration": it, "jvps": op.jvps, "vjps": op.vjps, "residual": float(res.max()),
                      "residuals": res.tolist(), "singular_values": lam.sqrt().tolist(), "dim": k,
                      "chunk_size": op.chunk_size, "recorded": op.recorded})
        if tol is not None and bool((res <= tol).all()):
            V = W.T @ V           # the Ritz vectors whose residuals were just measured
            break
        V = Vnew
        if converged and it >= min_iters:
            break
    Y = op.jvp(V)
    s = Y.norm(dim=1)
    order = torch.argsort(s, descending=True)
    V, Y, s = V[order], Y[order], s[order]
    Uh = Y / s.clamp(min=1e-30)[:, None]
    res = _residuals(op.vjp(Uh), s, V)
    return V, Uh, s, res, it


def pullback_basis(f: FeatureMap, x: torch.Tensor, k: int, *, algorithm: str = "krylov", seed: int = 0,
                   tol: float = 1e-3, init: torch.Tensor | None = None, block: int | None = None,
                   max_iters: int = 200, max_dim: int | None = None, chunk_size: int | None = None,
                   max_memory: int | None = None, one_by_one: bool = True, residual_stop: bool = False,
                   jvp_mode: str = "reverse", record: bool | None = None,
                   callback: Callable[[dict], None] | None = None) -> Basis:
    """Top-k singular triplets of J = df/dx at x, for any feature map f (U-Net or closed-form).

    x: [*x_shape]; f maps [*x_shape] -> [*h_shape] and must work under torch.func; both run on x's device, in
    float32. Random starts come from a CPU generator, so a seed gives the same basis on every device up to rounding.
    tol: ("krylov") stop when ||J^T u_i - s_i v_i|| / s_i <= tol for i < k.
    init: a warm start, [k0, *x_shape] (e.g. the basis at a neighbouring timestep); seed: the random start.
    block: ("krylov") new directions per iteration, default default_block(k, chunk): 1 where products run one at a
        time.
        Smaller blocks need fewer evaluations (each Ritz update uses the newest information), larger ones batch
        better; see benchmarks/bench_basis.py.
    max_iters: at most this many iterations ("subspace": the published 12 to 50, capped by max_iters).
    one_by_one: ("subspace") run the k VJPs of an iteration one by one, as the published code does; False
        batches them like every other evaluation here (same numbers, less wall time).
    residual_stop: ("subspace") also stop once every Ritz residual is <= tol (for comparisons at equal accuracy).
    jvp_mode: how J v is evaluated, "reverse" (default) or "forward" (see JacobianOperator).
    chunk_size / max_memory / record: products evaluated at once, the bytes the process may hold, whether the
        passes are recorded (None: as the budget allows; see JacobianOperator).
    Returns a Basis (float32, on the CPU) with its cost (jvps, vjps) and final residuals.
    """
    if algorithm not in ALGORITHMS:
        raise LatentBasisError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if not callable(f):
        raise LatentBasisError(f"f must be a feature map (a function of x), got {type(f).__name__}")
    x = validate.point(x, tuple(getattr(x, "shape", ())), "x")
    k = validate.integer(k, "k", lo=1)
    if algorithm == "krylov":
        tol = validate.tolerance(tol)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    op = JacobianOperator(f, x, chunk_size=chunk_size, jvp_mode=jvp_mode, max_memory=max_memory, record=record)
    if not 1 <= k <= min(op.n, op.m):
        raise LatentBasisError(f"k = {k} is out of range: J is {op.m} x {op.n}, so 1 <= k <= {min(op.n, op.m)}")
    if init is not None:
        init = validate.directions(init, op.x_shape, "the warm start")
    if algorithm == "krylov":
        block = max(1, min(block or default_block(k, op.chunk_size), op.n))
        max_dim = min(op.n, max_dim or max(3 * k, k + 48))
        V, Uh, s, res, it = _krylov(op, k, tol=tol, gen=gen, init=init, block=block, max_dim=max_dim,
                                    max_iters=max_iters, callback=callback)
    else:
        V, Uh, s, res, it = _subspace(op, k, gen=gen, init=init, one_by_one=one_by_one, callback=callback,
                                      min_iters=min(12, max_iters), max_iters=min(50, max_iters),
                                      tol=tol if residual_stop else None)
    V, Uh = _fix_signs(V, Uh)
    cpu = {"device": "cpu", "dtype": torch.float32}
    return Basis(latent=V.to(**cpu).reshape(k, *op.x_shape), tangent=Uh.to(**cpu).reshape(k, *op.h_shape),
                 singular_values=s.to(**cpu), point=op.x.to(**cpu).clone(), residuals=res.to(**cpu),
                 provenance=Provenance(jvps=op.jvps, vjps=op.vjps, algorithm=algorithm, seed=int(seed),
                                       iterations=it, seconds=time.perf_counter() - t0))


SPACES = ("h", "x0")


def region_maps(model, timestep: int, prompt: str | None, mask_x: torch.Tensor | None) -> tuple:
    """(f, f_c): x_t [*x_shape] -> the entries of x0_hat(x_t) inside the region mask_x (bool [*x_shape]; the
    whole x0_hat for None) and outside it (None without a mask). Indexed with fixed indices, so torch.func can
    batch them."""
    x0 = model.denoised_function(int(timestep), model.encode_prompt(prompt))

    def pick(idx):
        return lambda x: x0(x[None])[0].reshape(-1).index_select(0, idx)

    if mask_x is None:
        return (lambda x: x0(x[None])[0]), None
    flat = mask_x.reshape(-1).to(model.device)
    return pick(flat.nonzero()[:, 0]), pick((~flat).nonzero()[:, 0])


def project_out(f: FeatureMap, x: torch.Tensor, V: torch.Tensor) -> FeatureMap:
    """f composed with the projection onto the orthogonal complement of V's rows (orthonormal [r, D]) about x:
    g(y) = f(x + P (y - x)), P = I - V^T V, so J_g = J_f P (LOCO-Edit's null-space projection)."""
    def g(y):
        d = (y - x).reshape(-1)
        return f(x + (d - (d @ V.T) @ V).reshape(x.shape))

    return g


def latent_basis(model, x_t: torch.Tensor, *, t: float | None = None, timestep: int | None = None, k: int = 8,
                 prompt: str | None = None, layer: str | None = None, space: str = "h",
                 mask: torch.Tensor | None = None, null_rank: int = 0, **kwargs) -> Basis:
    """The pullback basis of a model (any family, latentbasis.families) at x_t and a timestep.

    t: fraction of T in [0, 1] (or timestep: integer step). x_t: [*model.x_shape] or [1, *model.x_shape], on any
    device (the basis is computed on the model's, in float32). layer: the module whose output is h (default: the
    family's, a U-Net's mid_block). Other keyword arguments go to pullback_basis (algorithm, seed, tol, init,
    chunk_size, callback, ...); max_memory defaults to the model's.
    """
    model = validate.model(model)
    ts, frac = resolve_timestep(model.num_train_timesteps, fraction=t, timestep=timestep)
    x = validate.point(x_t, model.x_shape, "x_t")
    D = int(torch.tensor(model.x_shape).prod())
    k = validate.integer(k, "k", lo=1)
    if not 1 <= k <= D:
        raise LatentBasisError(f"k = {k} is out of range: x_t has {D} dimensions, so 1 <= k <= {D}")
    kwargs.setdefault("max_memory", getattr(model, "max_memory", None))
    if kwargs.get("init") is not None:
        kwargs["init"] = validate.directions(kwargs["init"], tuple(model.x_shape), "the warm start").to(model.device)
    xd = x.to(model.device, torch.float32)
    if space not in SPACES:
        raise LatentBasisError(f"space {space!r} is not one of {', '.join(SPACES)}")
    V_null = None
    if space == "h":
        if mask is not None or null_rank:
            raise LatentBasisError("a mask and null_rank need space x0 (the Jacobian of x0_hat)")
        layer = model.layer_name(layer)
        f = model.features(ts, prompt=prompt, layer=layer)
    else:
        layer = "x0_hat"
        mask_x = mask_in_x(model, mask) if mask is not None else None
        f, f_c = region_maps(model, ts, prompt, mask_x)
        if null_rank:
            if f_c is None:
                raise LatentBasisError("null_rank needs a mask: it keeps the edit off the rest of the image")
            outside = int((~mask_x).sum())
            if not 1 <= null_rank <= min(outside, D - k):
                raise LatentBasisError(f"null_rank = {null_rank} is out of range: the rest of the image has {outside} "
                                       f"numbers and x leaves {D - k} beside k = {k}, so 1 <= r <= "
                                       f"{min(outside, D - k)}")
            rest = pullback_basis(f_c, xd, null_rank, **{**kwargs, "init": None, "callback": None})
            V_null = rest.latent.reshape(null_rank, -1).to(model.device)
            f = project_out(f, xd, V_null)
    b = pullback_basis(f, xd, k, **kwargs)
    if V_null is not None:   # exactly orthogonal to the complement's top directions (rounding only)
        L = b.latent.reshape(k, -1).double()
        Vn = V_null.cpu().double()
        L = L - (L @ Vn.T) @ Vn
        b.latent = (L / L.norm(dim=1, keepdim=True)).float().reshape(b.latent.shape)
    if space == "x0":
        b.space, b.null_rank = "x0", int(null_rank)
        b.mask_sha256 = mask_sha256(mask) if mask is not None else ""
        b.mask = mask.bool().cpu().clone() if mask is not None else None
    b.timestep, b.t_fraction, b.prompt, b.layer = ts, frac, prompt, layer
    b.model, b.model_hash, b.device = model.name, model.model_hash, str(model.device)
    b.weights_dtype = str(getattr(model, "dtype", torch.float32)).removeprefix("torch.")
    return b
