"""The Jacobian J = df/dx of a feature map at a point, as counted batched products, within a memory budget.

    jvp: V [b, D_x] -> J V^T as rows [b, D_h]        vjp: U [b, D_h] -> J^T U^T as rows [b, D_x]

The pullback u -> J^T u is recorded once per point and replayed; J v is its own VJP (J v = d/du <J^T u, v>) or
forward-mode AD. How many products run at once follows from the activations one pass saves and the memory budget
(saved_activation_bytes, forward_peak_bytes, chunk_for_budget); the basis algorithms (latentbasis.basis) only see
the two maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import jvp, vjp, vmap
from torch.overrides import TorchFunctionMode

from . import devices
from .devices import default_memory_budget, format_bytes, is_out_of_memory, out_of_memory_error
from .errors import LatentBasisError
from .features import FeatureMap

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


class _InputOnlyConvolution(torch.autograd.Function):
    """y = conv_d(x, W) + b (d = 1, 2, 3 spatial dimensions) whose backward is the input's gradient alone, written
    in differentiable operations: x_bar = conv_transpose_d(y_bar, W), with the output padding that gives x's shape
    back (stride > 1 drops rows the transpose must restore). Its double backward, what a JVP through the recorded
    pullback runs, is then one convolution, conv_d(x_bar_bar, W). Autograd's own convolution backward is as exact,
    but its double backward (aten::_convolution_double_backward, torch 2.13) also computes the weight's gradient,
    a second convolution costlier than the first, though no weight requires one: 70 ms against 25 ms for a
    320-channel 3x3 convolution at 64x64 on this project's CPU. Only W, not x, is saved."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        conv = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 3]
        return conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(weight)
        ctx.geometry = (tuple(x.shape[2:]), stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, y_bar):
        (weight,) = ctx.saved_tensors
        size, stride, padding, dilation, groups = ctx.geometry
        kernel = weight.shape[2:]
        extra = [size[i] - ((y_bar.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
                 for i in range(len(size))]
        transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[weight.dim() - 3]
        return transpose(y_bar, weight, None, stride, padding, extra, groups, dilation), None, None, None, None, None, \
            None


_CONVOLUTIONS = {torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}


class double_backward_friendly(TorchFunctionMode):
    """Inside: convolutions whose weight and bias need no gradient (a feature map's, as loaded) and whose padding
    is numbers run as _InputOnlyConvolution: the same values (up to rounding) with a backward whose own backward,
    the JVP through the recorded pullback, is one convolution. The recorded pullback of JacobianOperator is built
    inside it. (Attention was tried too, at Stable Diffusion 1.5 size: a math attention with K^T contiguous, and
    one with its backward written out to keep the double backward's L x L adds contiguous; neither made a JVP
    and a VJP cheaper together, the second slowed the VJP by about a second.)"""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        d = _CONVOLUTIONS.get(func)
        if d is not None:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            a = dict(zip(names, (None, None, None, 1, 0, 1, 1)))
            a.update(zip(names, args))
            a.update(kwargs)
            w, b = a["weight"], a["bias"]
            if (not isinstance(a["padding"], str) and not w.requires_grad
                    and (b is None or not b.requires_grad) and w.dim() == d + 2):
                def dims(v):
                    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * d
                return _InputOnlyConvolution.apply(a["input"], w, b, dims(a["stride"]), dims(a["padding"]),
                                                   dims(a["dilation"]), int(a["groups"]))
        return func(*args, **kwargs)


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
    if budget < fixed + per_item:
        raise LatentBasisError(f"the memory budget {format_bytes(budget)} (max_memory) is too small for one "
                               f"Jacobian-vector product of this model, which needs about "
                               f"{format_bytes(fixed + per_item)} (the model and what is in memory now included): "
                               f"raise max_memory")
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
            in_use = devices.memory_in_use(self.device)   # through the module: tests set it
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
                with double_backward_friendly():   # the same pullback, whose own pullback (the JVP) is cheaper
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
