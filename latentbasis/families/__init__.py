"""Model families: one adapter per family behind the interface of families/base.py.

Adding a family is one new module here plus one line in FAMILIES: the denoiser class name it wraps. The loader's
allow-list of denoiser classes (latentbasis.loading) and the pipelines from_pipeline names (each adapter's
`pipelines`) derive from it.
"""
from __future__ import annotations

from ..errors import LatentBasisError
from .base import Conditioning, DiffusionModel
from .flux import FluxModel
from .gaussian import GaussianModel
from .pixart import PixArtModel
from .transformer import TransformerModel
from .unet import UNetModel

# the denoiser's class name (model_index.json or config.json) -> the adapter that wraps it
FAMILIES: dict[str, type[DiffusionModel]] = {
    "UNet2DModel": UNetModel,
    "UNet2DConditionModel": UNetModel,
    "DiTTransformer2DModel": TransformerModel,
    "SD3Transformer2DModel": TransformerModel,
    "PixArtTransformer2DModel": PixArtModel,
    "FluxTransformer2DModel": FluxModel,
}


def supported_pipelines() -> list[str]:
    """The diffusers pipeline classes whose denoiser has an adapter here (for messages)."""
    return sorted({p for adapter in FAMILIES.values() for p in adapter.pipelines})


def adapter_for(class_name: str) -> type[DiffusionModel]:
    if class_name not in FAMILIES:
        raise LatentBasisError(f"the denoiser class {class_name!r} is not supported; latentbasis reads "
                               f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[class_name]


__all__ = ["Conditioning", "DiffusionModel", "FAMILIES", "FluxModel", "GaussianModel", "PixArtModel", "TransformerModel", "UNetModel",
           "adapter_for", "supported_pipelines"]
