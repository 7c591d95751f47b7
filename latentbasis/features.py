"""The feature map f_t(x_t) -> h: the U-Net up to and including its mid block ("h-space").

    f_t : X -> H,   h = mid_block(down_blocks(conv_in(x_t), temb(t)), temb(t)[, encoder_hidden_states])

The forward is diffusers' own, stopped by a hook on the chosen layer, so no model code is forked. Two CPU traps
are handled so the map works under torch.func.jvp / vjp / vmap:
- the fused scaled_dot_product_attention kernels have no forward-mode AD on CPU: attention runs on the
  MATH backend (a composition of differentiable ops) while the feature map is evaluated;
- attention blocks on 4-D input hand on a channels-last-strided tensor, and forward AD through the next
  group_norm fails on it ("view size is not compatible"): a hook makes attention outputs contiguous.
"""
from __future__ import annotations

from typing import Callable

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


def _attention_modules(unet: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention)]


def unet_forward_to(unet: torch.nn.Module, layer: str, x: torch.Tensor, timestep: int,
                    encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
    """Batched partial forward: x [B, *x_shape] -> output of `layer` [B, *h_shape]."""
    try:
        module = unet.get_submodule(layer)
    except AttributeError:
        raise LatentBasisError(f"the U-Net has no layer {layer!r} (try 'mid_block')") from None

    def stop(mod, args, output):
        raise _Stop(output[0] if isinstance(output, tuple) else output)

    # hooks live only for this forward: sampling elsewhere runs the model untouched (bit-for-bit replays)
    handles = [module.register_forward_hook(stop)]
    handles += [m.register_forward_hook(_contiguous_output) for m in _attention_modules(unet)]
    t = torch.full((x.shape[0],), int(timestep), dtype=torch.long)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            if encoder_hidden_states is None:
                unet(x, t)
            else:
                unet(x, t, encoder_hidden_states=encoder_hidden_states.expand(x.shape[0], -1, -1))
    except _Stop as s:
        return s.h
    finally:
        for h in handles:
            h.remove()
    raise LatentBasisError(f"layer {layer!r} was never reached in the U-Net forward")


def unet_feature_map(model, timestep: int, prompt: str | None = None, layer: str = "mid_block") -> FeatureMap:
    """f_t for a loaded DiffusionModel at an integer timestep (and prompt, for text models; no CFG inside J)."""
    cond = model.encode_prompt(prompt)
    unet = model.unet

    def f(x: torch.Tensor) -> torch.Tensor:
        return unet_forward_to(unet, layer, x[None], timestep, cond)[0]

    return f
