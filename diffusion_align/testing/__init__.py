"""Test and benchmark helpers: seeded tiny real-architecture pipelines and offline tokenizers."""

from diffusion_align.testing.tiny import (
    TINY_BUILDERS,
    TINY_PIPELINE_CLASSES,
    VIDEO_FAMILIES,
    build_tiny_cogvideox,
    build_tiny_flux,
    build_tiny_pipeline,
    build_tiny_pixart,
    build_tiny_sd3,
    build_tiny_sd15,
    build_tiny_sdxl,
    build_tiny_wan,
    tiny_call_kwargs,
)
from diffusion_align.testing.tiny_rewards import build_tiny_reward
from diffusion_align.testing.tokenizers import build_clip_tokenizer, build_t5_tokenizer

__all__ = [
    "TINY_BUILDERS",
    "TINY_PIPELINE_CLASSES",
    "VIDEO_FAMILIES",
    "build_clip_tokenizer",
    "build_t5_tokenizer",
    "build_tiny_cogvideox",
    "build_tiny_flux",
    "build_tiny_pipeline",
    "build_tiny_pixart",
    "build_tiny_reward",
    "build_tiny_sd3",
    "build_tiny_sd15",
    "build_tiny_sdxl",
    "build_tiny_wan",
    "tiny_call_kwargs",
]
