"""Model families: one adapter per family behind the interface of families/base.py.

Adding a family is one new module here (a DiffusionModel subclass declaring the diffusers denoiser classes it wraps,
`denoisers`, and the pipelines built around them, `pipelines`) plus its line in ADAPTERS. FAMILIES, the loader's
allow-list of denoiser classes (latentbasis.loading) and the pipelines from_pipeline names derive from it.
"""
from __future__ import annotations

from ..errors import LatentBasisError
from .base import Conditioning, DiffusionModel
from .flux import FluxModel
from .gaussian import GaussianModel
from .pixart import PixArtModel
from .transformer import DiTModel, SD3Model, TransformerModel
from .unet import UNetModel

ADAPTERS: tuple[type[DiffusionModel], ...] = (UNetModel, DiTModel, SD3Model, PixArtModel, FluxModel)

# the denoiser's class name (model_index.json or config.json) -> the adapter that wraps it
FAMILIES: dict[str, type[DiffusionModel]] = {name: adapter for adapter in ADAPTERS for name in adapter.denoisers}


def supported_pipelines() -> list[str]:
    """The diffusers pipeline classes whose denoiser has an adapter here (for messages)."""
    return sorted({p for adapter in FAMILIES.values() for p in adapter.pipelines})


def adapter_for(class_name: str) -> type[DiffusionModel]:
    if class_name not in FAMILIES:
        raise LatentBasisError(f"the denoiser class {class_name!r} is not supported; latentbasis reads "
                               f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[class_name]


__all__ = ["ADAPTERS", "Conditioning", "DiTModel", "DiffusionModel", "FAMILIES", "FluxModel", "GaussianModel",
           "PixArtModel", "SD3Model", "TransformerModel", "UNetModel", "adapter_for", "supported_pipelines"]
