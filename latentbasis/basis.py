"""The local pullback basis: top-k singular triplets of J = df_t/dx_t from Jacobian-vector products alone.

    J = U S V^T (thin, top k).  latent basis: rows v_i of V^T (unit vectors in X, what an edit moves along);
    tangent basis: rows u_i = J v_i / s_i (unit vectors in H); singular values s_1 >= ... >= s_k.

J is never formed. A JVP (J v, forward mode) costs about three VJPs (J^T u, reverse mode) through a pullback that
is built once per (x_t, t) and reused, so the algorithms count both and prefer VJPs.

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
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.func import jvp, vjp, vmap

from .errors import LatentBasisError
from .features import FeatureMap

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
class Basis:
    """A local basis at one point x_t. Rows are unit vectors; see the module docstring for the math."""

    latent: torch.Tensor            # [k, *x_shape]  right singular vectors v_i
    tangent: torch.Tensor           # [k, *h_shape]  left singular vectors u_i
    singular_values: torch.Tensor   # [k]            descending
    point: torch.Tensor             # [*x_shape]     the x_t the basis was computed at
    residuals: torch.Tensor         # [k]            ||J^T u_i - s_i v_i|| / s_i
    jvps: int = 0
    vjps: int = 0
    algorithm: str = "krylov"
    seed: int = 0
    iterations: int = 0
    seconds: float = 0.0
    timestep: int | None = None
    t_fraction: float | None = None
    prompt: str | None = None
    layer: str = "mid_block"
    model: str = ""
    device: str = "cpu"             # where it was computed (always in float32) ...
    weights_dtype: str = "float32"  # ... through the network's weights as loaded (--dtype)
    space: str = "h"                # "h": the pullback of the feature map h; "x0": the Jacobian of x0_hat ...
    mask_sha256: str = ""           # ... restricted to a region (masks.mask_sha256; "" for the whole image)
    null_rank: int = 0              # directions kept orthogonal to the top null_rank of the region's complement
    mask: torch.Tensor | None = None  # the region itself (bool [S, S] on the image; None for the whole image)
    model_hash: str = ""
    descriptions: list | None = None  # what each direction does to x0_hat (latentbasis.describe; None: not described)
    extra: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.singular_values.shape[0])


JVP_MODES = ("reverse", "forward")
CPU_CHUNK_BYTES = 512 * 2**20


def saved_activation_bytes(f: FeatureMap, x: torch.Tensor) -> int:
    """Bytes of the tensors one reverse-mode pass through f at x saves for its backward (weights excluded): the
    memory one VJP or JVP through f holds, measured with autograd's saved-tensor hooks on one plain forward."""
    from torch.multiprocessing.reductions import StorageWeakRef

    alive: dict[int, StorageWeakRef] = {}
    total = [0]

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if not isinstance(base, torch.nn.Parameter):
            ref = StorageWeakRef(t.untyped_storage())
            seen = alive.get(ref.cdata)
            if seen is None or seen.expired():      # a storage counted once while it lives
                alive[ref.cdata] = ref
                total[0] += t.untyped_storage().nbytes()
        return None   # nothing is held: this pass is never run backward, so measuring costs a plain forward's memory
                      # (holding t made a whole pass resident, 8.9 GiB at SDXL size, past a budget that then recomputed)

    def unpack(_):
        raise RuntimeError("saved_activation_bytes' pass has no backward")

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        f(x.detach().clone().requires_grad_(True))
    return total[0]


def forward_peak_bytes(f: FeatureMap, x: torch.Tensor) -> int:
    """Bytes of the tensors alive at once, at the peak, during one forward of f at x without gradients (weights
    and x excluded): what a forward-mode JVP holds, about twice over (a tangent beside each primal; FORWARD_MODE
    below). Measured on one plain forward with a dispatch mode that counts each new storage until it is freed."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    state = {"live": 0, "peak": 0}
    counted: set[int] = set()

    def free(key: int, n: int):
        counted.discard(key)
        state["live"] -= n

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    key = t.untyped_storage().data_ptr()
                    if key and key not in counted:
                        n = t.untyped_storage().nbytes()
                        counted.add(key)
                        state["live"] += n
                        state["peak"] = max(state["peak"], state["live"])
                        weakref.finalize(t, free, key, n)
            return out

    x = x.detach()    # outside the mode: x's own storage is not counted
    with torch.no_grad(), Count():
        h = f(x)
    del h
    return state["peak"]


# Memory of the Jacobian products, in units of one pass's saved activations (saved_activation_bytes), measured
# with the resident set of a 25M-parameter U-Net at 64x64 and of Stable Diffusion 1.5's (tests/test_basis.py checks
# a budget is kept): recording the pullback (and, for reverse-mode JVPs, its own pullback) holds RECORDED[mode];
# each product of a chunk PER_PRODUCT[mode] more at its peak. Rounded up from 2.7 / 1.2 and 0.9 / 1.4.
RECORDED = {"reverse": 3.0, "forward": 1.5}
PER_PRODUCT = {"reverse": 1.0, "forward": 1.5}
# Where the budget cannot hold the recorded passes, nothing is recorded: each VJP runs the forward and backward
# again (with the network's gradient checkpointing) and each JVP is forward-mode AD (slower: about 1.5 and 3.5
# recorded VJPs at Stable Diffusion 1.5 size), one product at a time. Neither keeps a whole pass: each holds a few
# times the live tensors of a plain forward (forward_peak_bytes), measured on the resident set, one product at a
# time: 3.9-4.6 (VJP) and 6.1-6.3 (JVP) at the 25M U-Net of tests/test_devices.py, 3.4 and 5.1 at Stable
# Diffusion 1.5 size; beside them, in either mode, SLACK of kernels' scratch and bookkeeping that does not scale
# with the model (40 MiB over 7 peaks seen at the 25M U-Net over a whole basis; 1 MiB over the recorded estimate
# once, in the full test suite). Rounded up:
RECOMPUTED_PEAKS = 7.0
SLACK = 64 * 2**20


def chunk_for_budget(per_item: int, fixed: int, budget: int) -> int:
    """How many Jacobian products fit in `budget` bytes at once, when one costs `per_item` beyond a `fixed` part;
    one clear error when not even one does."""
    from .devices import format_bytes

    if budget < fixed + per_item:
        raise LatentBasisError(f"the memory budget {format_bytes(budget)} (--max-memory) is too small for one "
                               f"Jacobian-vector product of this model, which needs about "
                               f"{format_bytes(fixed + per_item)} (the model and what is in memory now included): "
                               f"raise --max-memory")
    return max(1, int((budget - fixed) // max(per_item, 1)))


class JacobianOperator:
    """J of f at x as two batched maps on row blocks, counted:
    jvp: V [b, D_x] -> J V^T as rows [b, D_h];  vjp: U [b, D_h] -> J^T U^T as rows [b, D_x].
    f and x are float32 on x's device (`dtype` says so); rows go in and out in float64 (float32 on MPS), on the
    same device.

    VJPs go through the pullback u -> J^T u, recorded once per point and replayed. JVPs:
    - jvp_mode "reverse" (default): J v is the VJP of that linear pullback (J v = d/du <J^T u, v>), recorded once
      too, so no JVP re-runs the network's Python forward; measured 2-3x faster than forward mode on CPU;
    - jvp_mode "forward": torch.func.jvp through f for every block (forward-mode AD).
    Both are exact; tests check they agree.

    Memory: products run in chunks of `chunk_size` under vmap. chunk_size None: as many as `max_memory` bytes
    allow (the process's whole memory, the weights included: latentbasis.devices; default: the device's), from
    what is in use now and the activations one pass saves (saved_activation_bytes), times RECORDED and
    PER_PRODUCT. A budget too small for the recorded passes recomputes instead (`recorded` False: checkpointed
    VJPs and forward-mode JVPs, one at a time, each about RECOMPUTED_PEAKS times a plain forward's live tensors,
    so SDXL fits 24 GB); a budget too small for that is refused before anything runs.
    Running out of memory halves the chunk and retries; at one product it is one clear error. On a CPU a chunk
    also stays under CPU_CHUNK_BYTES of saved activations: batching big passes there is slower per product
    (benchmarks/bench_scale.py, Stable Diffusion 1.5 size: 4 VJPs in one batch 28 s against 3 s for one).
    """

    dtype = torch.float32

    def __init__(self, f: FeatureMap, x: torch.Tensor, chunk_size: int | None = 16, jvp_mode: str = "reverse",
                 max_memory: int | None = None, record: bool | None = None):
        from .devices import default_memory_budget, is_out_of_memory, memory_in_use, out_of_memory_error

        if jvp_mode not in JVP_MODES:
            raise LatentBasisError(f"unknown jvp_mode {jvp_mode!r}; choose one of {', '.join(JVP_MODES)}")
        self.x = x.detach().to(self.dtype)
        self.device = self.x.device
        self.rows_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.max_memory = max_memory
        self.recorded = record is not False
        self.saved_bytes = None      # one pass's saved activations, where the budget needed them ...
        self.forward_peak = None     # ... and a plain forward's live tensors, where it weighed recomputing
        if record is False and max_memory is None and chunk_size is not None:
            jvp_mode = "forward"
        elif chunk_size is None or max_memory is not None:
            in_use = memory_in_use(self.device)
            budget = max_memory if max_memory is not None else default_memory_budget(self.device)
            self.max_memory = budget
            if record is not False:
                saved = self.saved_bytes = saved_activation_bytes(f, self.x)
                recorded = in_use + int(RECORDED[jvp_mode] * saved)
            if record is False or (record is None and recorded + PER_PRODUCT[jvp_mode] * saved > budget):
                # recompute: nothing recorded, forward-mode JVPs, one product at a time
                self.forward_peak = forward_peak_bytes(f, self.x)
                chunk_for_budget(int(RECOMPUTED_PEAKS * self.forward_peak), in_use + SLACK, budget)
                self.recorded, jvp_mode, fit = False, "forward", 1
            else:
                fit = chunk_for_budget(int(PER_PRODUCT[jvp_mode] * saved), recorded + SLACK, budget)
                if self.device.type == "cpu":   # large batches of big passes run slower per item on a CPU
                    fit = min(fit, max(1, CPU_CHUNK_BYTES // max(saved, 1)))
            chunk_size = fit if chunk_size is None else min(chunk_size, fit)
        self.chunk_size = int(chunk_size)
        self.jvp_mode = jvp_mode
        self._oom, self._oom_error = is_out_of_memory, out_of_memory_error
        x0 = self.x
        try:
            if not self.recorded:
                with torch.no_grad():
                    self.h = f(x0)
                self._pull_rows = self._recomputed_pullback(f, x0)
            else:
                self.h, pullback = vjp(f, x0)  # built once, reused by every VJP
                self._pull_one = lambda u: pullback(u)[0]
            if jvp_mode == "reverse":
                _, pushforward = vjp(self._pull_one, torch.zeros_like(self.h))
                self._push_one = lambda v: pushforward(v)[0]
            else:
                self._push_one = lambda v: jvp(f, (x0,), (v,))[1]
        except Exception as e:
            if is_out_of_memory(e):
                raise out_of_memory_error(self.max_memory, "the forward pass of the feature map") from None
            raise
        self.x_shape, self.h_shape = tuple(self.x.shape), tuple(self.h.shape)
        self.n, self.m = self.x.numel(), self.h.numel()
        self.jvps = self.vjps = 0

    @staticmethod
    def _recomputed_pullback(f: FeatureMap, x0: torch.Tensor):
        """U [b, *h_shape] -> J^T U rows, each by a forward and a backward of plain autograd, in the feature map's
        checkpointed context where it has one (f.checkpointed: each block keeps only its input)."""
        import contextlib

        context = getattr(f, "checkpointed", contextlib.nullcontext)

        def pull(U):
            out = []
            for u in U:
                x = x0.clone().requires_grad_(True)
                with torch.enable_grad(), context():
                    out.append(torch.autograd.grad(f(x), x, u)[0])
            return torch.stack(out)

        return pull

    def _batched(self, fn, rows: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
        """fn over the rows (reshaped to `shape`) in chunks; on out-of-memory the chunk halves and it retries."""
        inp = rows.to(self.device, self.dtype).reshape(-1, *shape)
        while True:
            try:
                if fn is None:     # nothing recorded: the VJPs recompute, one at a time
                    out = torch.cat([self._pull_rows(c) for c in inp.split(self.chunk_size)])
                else:
                    out = vmap(fn, chunk_size=self.chunk_size)(inp)
                return out.reshape(rows.shape[0], -1).to(self.rows_dtype)
            except Exception as e:
                if not self._oom(e):
                    raise
                if self.chunk_size <= 1:
                    raise self._oom_error(self.max_memory, what) from None
                self.chunk_size = max(1, self.chunk_size // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def jvp(self, V: torch.Tensor) -> torch.Tensor:
        if V.shape[0] == 0:
            return torch.zeros(0, self.m, device=self.device, dtype=self.rows_dtype)
        self.jvps += V.shape[0]
        return self._batched(self._push_one, V, self.x_shape, "Jacobian-vector products")

    def vjp(self, U: torch.Tensor) -> torch.Tensor:
        if U.shape[0] == 0:
            return torch.zeros(0, self.n, device=self.device, dtype=self.rows_dtype)
        self.vjps += U.shape[0]
        pull = self._pull_one if self.recorded else None
        return self._batched(pull, U, self.h_shape, "vector-Jacobian products")


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
    # Start block in X: the warm start, filled up with J^T of random vectors in H (row space of J).
    rows = {"device": op.device, "dtype": op.rows_dtype}
    starts = [] if init is None else [init.reshape(init.shape[0], -1).to(**rows)]
    fill = block - (0 if init is None else init.shape[0])
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
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    op = JacobianOperator(f, x, chunk_size=chunk_size, jvp_mode=jvp_mode, max_memory=max_memory, record=record)
    if not 1 <= k <= min(op.n, op.m):
        raise LatentBasisError(f"k = {k} is out of range: J is {op.m} x {op.n}, so 1 <= k <= {min(op.n, op.m)}")
    if init is not None:
        if tuple(init.shape[1:]) != op.x_shape:
            raise LatentBasisError(f"warm start has vectors of shape {tuple(init.shape[1:])}, x_t has {op.x_shape}")
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
                 jvps=op.jvps, vjps=op.vjps, algorithm=algorithm, seed=int(seed), iterations=it,
                 seconds=time.perf_counter() - t0)


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
    from .loading import resolve_timestep

    ts, frac = resolve_timestep(model.num_train_timesteps, fraction=t, timestep=timestep)
    x = x_t[0] if x_t.dim() == len(model.x_shape) + 1 and x_t.shape[0] == 1 else x_t
    if tuple(x.shape) != tuple(model.x_shape):
        raise LatentBasisError(f"x_t has shape {tuple(x_t.shape)}, the model expects {tuple(model.x_shape)}")
    D = int(torch.tensor(model.x_shape).prod())
    if not 1 <= k <= D:
        raise LatentBasisError(f"k = {k} is out of range: x_t has {D} dimensions, so 1 <= k <= {D}")
    kwargs.setdefault("max_memory", getattr(model, "max_memory", None))
    if kwargs.get("init") is not None:
        kwargs["init"] = kwargs["init"].to(model.device)
    xd = x.to(model.device, torch.float32)
    if space not in SPACES:
        raise LatentBasisError(f"space {space!r} is not one of {', '.join(SPACES)}")
    V_null = None
    if space == "h":
        if mask is not None or null_rank:
            raise LatentBasisError("a mask and --null-rank need --space x0 (the Jacobian of x0_hat)")
        layer = layer or model.default_layer
        f = model.features(ts, prompt=prompt, layer=layer)
    else:
        from .masks import mask_in_x

        layer = "x0_hat"
        mask_x = mask_in_x(model, mask) if mask is not None else None
        f, f_c = region_maps(model, ts, prompt, mask_x)
        if null_rank:
            if f_c is None:
                raise LatentBasisError("--null-rank needs a mask: it keeps the edit off the rest of the image")
            outside = int((~mask_x).sum())
            if not 1 <= null_rank <= min(outside, D - k):
                raise LatentBasisError(f"--null-rank {null_rank} is out of range: the rest of the image has {outside} "
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
        from .masks import mask_sha256

        b.space, b.null_rank = "x0", int(null_rank)
        b.mask_sha256 = mask_sha256(mask) if mask is not None else ""
        b.mask = mask.bool().cpu().clone() if mask is not None else None
    b.timestep, b.t_fraction, b.prompt, b.layer = ts, frac, prompt, layer
    b.model, b.model_hash, b.device = model.name, model.model_hash, str(model.device)
    b.weights_dtype = str(getattr(model, "dtype", torch.float32)).removeprefix("torch.")
    return b
