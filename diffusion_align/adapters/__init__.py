"""Model families behind one interface (:class:`~diffusion_align.adapters.base.DiffusionAdapter`)."""

from diffusion_align.adapters.base import DiffusionAdapter, NoiseSchedule, adapters_disabled
from diffusion_align.adapters.unet import SDAdapter, SDXLAdapter

__all__ = ["DiffusionAdapter", "NoiseSchedule", "SDAdapter", "SDXLAdapter", "adapters_disabled"]
