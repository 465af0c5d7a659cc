"""Seeded tiny real-architecture pipelines for tests, benchmarks, notebooks and the trainer, built offline.

``build_tiny_<family>(path, *, seed=0, ...)`` writes a complete pipeline directory (random weights, offline
tokenizers) loadable with ``DiffusionPipeline.from_pretrained(path)`` and returns ``path``. The builders
live in :mod:`.tiny_image` and :mod:`.tiny_video`; this module names them by family.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffusers import (
    CogVideoXPipeline,
    DiffusionPipeline,
    FluxPipeline,
    PixArtAlphaPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    WanPipeline,
)

from diffusion_align.testing.tiny_image import (
    build_tiny_flux,
    build_tiny_pixart,
    build_tiny_sd3,
    build_tiny_sd15,
    build_tiny_sdxl,
)
from diffusion_align.testing.tiny_video import build_tiny_cogvideox, build_tiny_wan

TINY_BUILDERS: dict[str, Callable[..., Path]] = {
    "sd15": build_tiny_sd15,
    "sdxl": build_tiny_sdxl,
    "sd3": build_tiny_sd3,
    "flux": build_tiny_flux,
    "pixart": build_tiny_pixart,
    "wan": build_tiny_wan,
    "cogvideox": build_tiny_cogvideox,
}

TINY_PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "sd15": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
    "flux": FluxPipeline,
    "pixart": PixArtAlphaPipeline,
    "wan": WanPipeline,
    "cogvideox": CogVideoXPipeline,
}

VIDEO_FAMILIES = ("wan", "cogvideox")


def _check_family(family: str) -> None:
    if family not in TINY_BUILDERS:
        raise KeyError(f"unknown tiny pipeline family {family!r}: expected one of {sorted(TINY_BUILDERS)}")


def build_tiny_pipeline(family: str, path: str | Path, **kwargs: Any) -> Path:
    """Build the tiny pipeline of ``family`` (a :data:`TINY_BUILDERS` key) into ``path`` with ``kwargs``."""
    _check_family(family)
    return TINY_BUILDERS[family](path, **kwargs)


def tiny_call_kwargs(family: str, sample_size: int = 32, num_frames: int = 9) -> dict[str, Any]:
    """Pipeline ``__call__`` arguments a tiny ``family`` pipeline needs beyond the prompt, and only those.

    Flux and Wan ignore the model's size and default to 512 px and 81 x 480 x 832 respectively; PixArt's
    resolution binning (and caption cleaning, which needs BeautifulSoup) only fit the real models.
    SD1.5, SDXL, SD3 and CogVideoX take their defaults from the built configs and need nothing.

    Args:
        family: A key of :data:`TINY_BUILDERS`.
        sample_size: Image or frame side in pixels the pipeline was built with.
        num_frames: Frames to generate (video families).
    """
    _check_family(family)
    size = {"height": sample_size, "width": sample_size}
    needed: dict[str, dict[str, Any]] = {
        "flux": size,
        "pixart": {"use_resolution_binning": False, "clean_caption": False},
        "wan": {**size, "num_frames": num_frames},
    }
    return needed.get(family, {})
