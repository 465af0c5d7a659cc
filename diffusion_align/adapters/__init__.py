"""Model families behind one interface (:class:`~diffusion_align.adapters.base.DiffusionAdapter`)."""

from diffusion_align.adapters.base import DiffusionAdapter, NoiseSchedule, adapters_disabled
from diffusion_align.adapters.dit import PixArtAdapter, SD3Adapter
from diffusion_align.adapters.flux import FluxAdapter
from diffusion_align.adapters.unet import SDAdapter, SDXLAdapter
from diffusion_align.adapters.video import CogVideoXAdapter, WanAdapter

__all__ = [
    "CogVideoXAdapter",
    "DiffusionAdapter",
    "FluxAdapter",
    "NoiseSchedule",
    "PixArtAdapter",
    "SD3Adapter",
    "SDAdapter",
    "SDXLAdapter",
    "WanAdapter",
    "adapters_disabled",
]
