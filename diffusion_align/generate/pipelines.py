"""Candidate generation with diffusers pipelines: one spec per generator, seeds per candidate, batched calls.

A generator is any diffusers text-to-image (or text-to-video) pipeline that ``DiffusionPipeline.from_pretrained``
loads from a Hub id or a local directory, called with its own keyword arguments (``num_inference_steps``,
``guidance_scale``, ``height``/``width``, ``num_frames`` ...). Every candidate gets its own CPU
``torch.Generator``: its image depends on its seed and prompt only, not on the batch it ran in or the device
(diffusers draws the initial noise on the generator's device, then moves it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

MEDIA = ("image", "video")
# Keys the generator sets itself on every call; a spec setting them would be silently overridden.
RESERVED_CALL_KEYS = (
    "prompt",
    "generator",
    "output_type",
    "return_dict",
    "num_images_per_prompt",
    "num_videos_per_prompt",
    "latents",
    "video",
)
MAX_SEED = 2**63 - 1  # seeds are stored as int64


def candidate_seed(base_seed: int, prompt_index: int, generator: str, k: int | str) -> int:
    """The seed of one candidate: a hash of (base seed, prompt index, generator name, candidate slot ``k``).

    Independent of the shard size, the worker and the other generators: a candidate keeps its seed when the run
    is split differently or another generator is added.

    Returns:
        an integer in ``[0, 2**63 - 1]``.
    """
    key = f"{base_seed}/{prompt_index}/{generator}/{k}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & MAX_SEED


@dataclass(frozen=True)
class PipelineSpec:
    """One generator.

    Attributes:
        name: the generator's name in the data (``generator`` / ``model_0`` columns) and in its seeds.
        path: Hub id or local directory of the diffusers pipeline.
        call: keyword arguments of every pipeline call (sampler settings), e.g. ``{"num_inference_steps": 30}``.
        media: ``image`` (output ``[N, H, W, 3]``) or ``video`` (output ``[N, F, H, W, 3]``).
        batch_size: candidates per pipeline call (prompts and seeds mixed).
        dtype: the pipeline's weight dtype (``float32``, ``float16``, ``bfloat16``).
    """

    name: str
    path: str
    call: Mapping[str, Any] = field(default_factory=dict)
    media: str = "image"
    batch_size: int = 4
    dtype: str = "float32"

    def __post_init__(self) -> None:
        where = f"pipeline '{self.name}'"
        if not self.name or "/" in self.name:
            raise ValueError(f"{where}: expected a non-empty name without '/'")
        if self.media not in MEDIA:
            raise ValueError(f"{where}: media '{self.media}', expected one of {MEDIA}")
        if self.batch_size < 1:
            raise ValueError(f"{where}: batch_size {self.batch_size}, expected a positive integer")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"{where}: dtype '{self.dtype}' is not a torch dtype name")
        if reserved := sorted(set(self.call) & set(RESERVED_CALL_KEYS)):
            raise ValueError(f"{where}: call sets {reserved}, which the generator sets itself")
        object.__setattr__(self, "call", dict(self.call))

    def describe(self) -> dict[str, Any]:
        """What decides the candidates (recorded in the manifest; the batch size is left out)."""
        return {"name": self.name, "path": str(self.path), "call": dict(self.call), "media": self.media,
                "dtype": self.dtype}


def load_pipeline(spec: PipelineSpec, device: str | torch.device) -> DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained(spec.path)`` in ``spec.dtype`` on ``device``, progress bars off."""
    pipeline = DiffusionPipeline.from_pretrained(spec.path, dtype=getattr(torch, spec.dtype))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8, rounded as diffusers' ``numpy_to_pil`` does."""
    return (np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def generate_media(
    pipeline: DiffusionPipeline,
    spec: PipelineSpec,
    prompts: Sequence[str],
    seeds: Sequence[int],
    **extra: Any,
) -> list[np.ndarray]:
    """One pipeline call: candidate ``i`` is ``prompts[i]`` with ``seeds[i]``.

    Args:
        extra: more call arguments for this call only (the refiner's ``video``, ``strength``).

    Returns:
        one uint8 array per candidate: ``[H, W, 3]`` (image) or ``[F, H, W, 3]`` (video).

    Raises:
        ValueError: the pipeline returned another number of candidates or another layout than ``spec.media``.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"pipeline '{spec.name}': {len(prompts)} prompts but {len(seeds)} seeds")
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    output = pipeline(
        prompt=list(prompts), generator=generators, output_type="np", return_dict=False, **spec.call, **extra
    )[0]
    output = np.asarray(output)
    ndim = 4 if spec.media == "image" else 5
    if output.ndim != ndim or output.shape[0] != len(prompts) or output.shape[-1] != 3:
        layout = "[N, H, W, 3]" if spec.media == "image" else "[N, F, H, W, 3]"
        raise ValueError(
            f"pipeline '{spec.name}' ({type(pipeline).__name__}) returned {list(output.shape)} for "
            f"{len(prompts)} prompts; media '{spec.media}' expects {layout}"
        )
    return list(to_uint8(output))
