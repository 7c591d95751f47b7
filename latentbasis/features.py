"""The feature map f_t(x_t) -> h: a network's forward stopped at a named layer ("hook and stop").

    f_t : X -> H,   h = the output of module `layer` in the network's own forward at (x_t, t, conditioning)

The forward is the library's own (diffusers' model code), stopped by a hook on the chosen module, so no model code
is forked and any module name works (a U-Net's `mid_block`, a transformer's `transformer_blocks.6`). Two traps
are handled so the map works under torch.func.jvp / vjp / vmap:
- the fused scaled_dot_product_attention kernels have no forward-mode AD (on the CPU, and no batching rules for
  their backward on a GPU): attention runs on the MATH backend (a composition of differentiable ops) while the
  feature map is evaluated;
- attention blocks on 4-D input hand on a channels-last-strided tensor, and forward AD through the next
  group_norm fails on it ("view size is not compatible"): a hook makes attention outputs contiguous.
Hooks live only for one forward: sampling elsewhere runs the model untouched (bit-for-bit replays).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import LatentBasisError

FeatureMap = Callable[[torch.Tensor], torch.Tensor]  # x_t [*x_shape] -> h [*h_shape], unbatched


class _Stop(Exception):
    """Raised by the layer hook to end the forward once h is computed."""

    def __init__(self, h):
        super().__init__()
        self.h = h


def _contiguous_output(module, args, output):
    return output.contiguous() if isinstance(output, torch.Tensor) else output


def _attention_modules(root: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.models.attention_processor import Attention

    return [m for m in root.modules() if isinstance(m, Attention)]


def _first_tensor(output: Any) -> torch.Tensor:
    """A block's output as one tensor: the tensor itself, or the first tensor of a tuple / output object (a
    transformer block that returns (encoder_hidden_states, hidden_states) is handled by its adapter)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise LatentBasisError(f"the layer's output is a {type(output).__name__}, not a tensor: pick another layer")


def get_layer(root: torch.nn.Module, layer: str, candidates: list[str] | None = None) -> torch.nn.Module:
    """root's submodule `layer`, or one clear error that lists the layers to choose from."""
    try:
        return root.get_submodule(layer)
    except AttributeError:
        listed = ", ".join(candidates) if candidates else "see `latentbasis layers`"
        raise LatentBasisError(f"the network has no layer {layer!r}; layers: {listed}") from None


OUTPUT = "output"   # the "layer" that is the network's whole output (for the x0_hat Jacobian)


@contextlib.contextmanager
def differentiable_attention(root: torch.nn.Module):
    """Attention on the MATH backend, with contiguous outputs, while a forward of root runs (module docstring)."""
    handles = [m.register_forward_hook(_contiguous_output) for m in _attention_modules(root)]
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def checkpointed(root: torch.nn.Module):
    """While a reverse-mode pass through root runs under plain autograd (not torch.func): diffusers' gradient
    checkpointing on (each block keeps its input only and recomputes the rest in the backward, where the model
    supports it), with differentiable attention, also during the backward's recomputation (which must see the same
    attention as the forward did)."""
    flags = {m: m.gradient_checkpointing for m in root.modules() if hasattr(m, "gradient_checkpointing")}
    if getattr(root, "_supports_gradient_checkpointing", False) and hasattr(root, "enable_gradient_checkpointing"):
        root.enable_gradient_checkpointing()
    try:
        with differentiable_attention(root):
            yield
    finally:
        for m, flag in flags.items():
            m.gradient_checkpointing = flag


def forward_to(root: torch.nn.Module, layer: str, run: Callable[[], Any], *,
               select: Callable[[Any], torch.Tensor] = _first_tensor,
               candidates: list[str] | None = None) -> torch.Tensor:
    """Run `run()` (a forward of `root`) and return select(output of root's submodule `layer`), the forward
    stopped there. Attention on the MATH backend with contiguous outputs (see the module docstring)."""
    module = get_layer(root, layer, candidates)

    def stop(mod, args, output):
        raise _Stop(select(output))

    handle = module.register_forward_hook(stop)
    try:
        with differentiable_attention(root):
            run()
    except _Stop as s:
        return s.h
    finally:
        handle.remove()
    raise LatentBasisError(f"layer {layer!r} was never reached in the network's forward")


def modules_run_before(root: torch.nn.Module, layer: str, run: Callable[[], Any]) -> set[str]:
    """Names of root's modules that run (or start) before `layer` finishes in one forward: the part of the network
    the feature map needs (so a half-precision model copies only those weights to float32)."""
    names = {id(m): n for n, m in root.named_modules()}
    seen: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.add(names[id(mod)])) for m in root.modules()]
    try:
        with torch.no_grad():
            forward_to(root, layer, run, select=lambda output: output)   # whatever the layer returns
    finally:
        for h in handles:
            h.remove()
    return seen


def output_shapes(root: torch.nn.Module, layers: list[str], run: Callable[[], Any],
                  select: Callable[[Any], torch.Tensor] = _first_tensor) -> dict[str, tuple[int, ...]]:
    """The shape (batch dropped) of select(output) of each named layer, from one forward run() of root."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in layers:
        def record(mod, args, output, name=name):
            try:
                shapes[name] = tuple(select(output).shape[1:])
            except LatentBasisError:
                shapes[name] = ()
        handles.append(get_layer(root, name, layers).register_forward_hook(record))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return shapes
