"""Seeded generation for evaluation: every model draws the same initial noise for the same (prompt, sample).

The seed of sample ``k`` of prompt ``i`` is ``seed + i * MAX_SAMPLES_PER_PROMPT + k`` whatever the model, batch
size or number of samples, and each image gets its own CPU ``torch.Generator``: images of two models at one seed
differ only because the models do. A model is a pipeline (a local directory or Hub id, e.g. a full fine-tune saved
by ``diffalign train`` in ``<run>/pipeline``), optionally with a LoRA directory written by ``diffalign train``
(``pytorch_lora_weights.safetensors``), loaded with ``pipe.load_lora_weights`` as diffusers users would.
"""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders.lora_base import LoraBaseMixin
from tqdm.auto import tqdm

from diffusion_align.adapters.lora import LORA_WEIGHT_NAME, check_lora_file
from reward_models.base import as_dtype

log = logging.getLogger(__name__)

MAX_SAMPLES_PER_PROMPT = 1000  # the seed stride between prompts: seeds never collide below this many samples
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # used as a folder name and in HTML
LORA_ADAPTER_NAME = "evaluated"


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate.

    Attributes:
        pipeline: a diffusers pipeline directory or Hub id (the base model, or a full fine-tune's ``pipeline/``).
        lora: a directory holding ``pytorch_lora_weights.safetensors`` (``diffalign train`` output), or ``None``.
        lora_scale: multiplier of the LoRA update (1 = as trained).
        load_kwargs: extra ``from_pretrained`` arguments, e.g. ``{"safety_checker": None}`` or ``{"variant": "fp16"}``.
        call_kwargs: extra pipeline-call arguments for this model only (merged over the sampling settings').
    """

    pipeline: str
    lora: str | None = None
    lora_scale: float = 1.0
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    call_kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The spec as a plain dict (what results files record)."""
        return asdict(self)


@dataclass(frozen=True)
class SamplingSettings:
    """How every model samples (identical for all models, so that images compare).

    Attributes:
        samples_per_prompt: images per prompt and model (each with its own seed), below ``MAX_SAMPLES_PER_PROMPT``.
        seed: the base seed; see the module docstring for the per-image seed.
        num_inference_steps: sampler steps.
        guidance_scale: classifier-free guidance scale.
        height: image height in pixels (``None``: the pipeline's default).
        width: image width in pixels (``None``: the pipeline's default).
        negative_prompt: one negative prompt for every image, or ``None``.
        batch_size: images per pipeline call.
        pipeline_kwargs: extra call arguments, e.g. ``{"num_frames": 9}`` for video pipelines.
    """

    samples_per_prompt: int = 1
    seed: int = 0
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    batch_size: int = 4
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.samples_per_prompt < MAX_SAMPLES_PER_PROMPT:
            raise ValueError(f"samples_per_prompt={self.samples_per_prompt}: expected 1 to {MAX_SAMPLES_PER_PROMPT - 1}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: expected a positive integer")


def as_model_spec(name: str, spec: ModelSpec | str | Mapping[str, Any]) -> ModelSpec:
    """A :class:`ModelSpec` from itself, a pipeline path / Hub id, or a mapping of its fields; checks ``name``."""
    if not MODEL_NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r}: expected letters, digits, '_', '.', '-' (it names a folder)")
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, str | Path):
        return ModelSpec(pipeline=str(spec))
    unknown = set(spec) - set(ModelSpec.__dataclass_fields__)
    if unknown:
        raise KeyError(f"models.{name}: unknown key(s) {sorted(unknown)}; expected {sorted(ModelSpec.__dataclass_fields__)}")
    if not spec.get("pipeline"):
        raise ValueError(f"models.{name}: no 'pipeline' (a diffusers pipeline directory or Hub id)")
    fields = dict(spec)
    fields["pipeline"] = str(fields["pipeline"])
    fields["lora"] = None if fields.get("lora") is None else str(fields["lora"])
    return ModelSpec(**fields)


def sample_seed(base_seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of sample ``sample_index`` of prompt ``prompt_index``: the same for every model."""
    return base_seed + prompt_index * MAX_SAMPLES_PER_PROMPT + sample_index


def load_model(spec: ModelSpec, device: str | torch.device, dtype: str | torch.dtype = "float32") -> DiffusionPipeline:
    """Load ``spec.pipeline`` (and its LoRA) onto ``device`` in ``dtype``, progress bars off."""
    pipeline = DiffusionPipeline.from_pretrained(spec.pipeline, torch_dtype=as_dtype(dtype), **spec.load_kwargs)
    if spec.lora is not None:
        load_lora(pipeline, Path(spec.lora), spec.lora_scale)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def load_lora(pipeline: DiffusionPipeline, directory: Path, scale: float) -> None:
    """Load a ``diffalign train`` LoRA: ``load_lora_weights`` or, for pipelines without a LoRA loader (PixArt), the
    denoiser's ``load_lora_adapter``; then set its scale. A LoRA of another architecture is refused first
    (:func:`~diffusion_align.adapters.lora.check_lora_file` names the file and the keys that do not fit)."""
    if not (directory / LORA_WEIGHT_NAME).is_file():
        raise FileNotFoundError(f"LoRA {directory}: no {LORA_WEIGHT_NAME} (expected a `diffalign train` output folder)")
    components = pipeline.components
    denoiser_name = "transformer" if "transformer" in components else "unet"
    denoiser = components[denoiser_name]
    pipeline_format = isinstance(pipeline, LoraBaseMixin)
    check_lora_file(directory / LORA_WEIGHT_NAME, denoiser, prefix=denoiser_name if pipeline_format else None)
    if pipeline_format:
        pipeline.load_lora_weights(str(directory), adapter_name=LORA_ADAPTER_NAME)
        pipeline.set_adapters([LORA_ADAPTER_NAME], adapter_weights=[scale])
        return
    denoiser.load_lora_adapter(str(directory), weight_name=LORA_WEIGHT_NAME, prefix=None, adapter_name=LORA_ADAPTER_NAME)
    denoiser.set_adapters([LORA_ADAPTER_NAME], weights=[scale])


def free_memory() -> None:
    """Return freed memory (a pipeline just deleted by the caller) before the next model loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def call_arguments(settings: SamplingSettings, spec: ModelSpec) -> dict[str, Any]:
    """Pipeline-call keyword arguments shared by every batch of one model (prompts and generators excluded)."""
    arguments: dict[str, Any] = {
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale,
    }
    optional = {"height": settings.height, "width": settings.width, "negative_prompt": settings.negative_prompt}
    arguments.update({key: value for key, value in optional.items() if value is not None})
    return {**arguments, **settings.pipeline_kwargs, **spec.call_kwargs}


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """Pipeline ``output_type="np"`` floats in [0, 1] -> uint8; ``[B, H, W, 3]`` or ``[B, F, H, W, 3]`` (video)."""
    if samples.ndim not in (4, 5) or samples.shape[-1] != 3:
        raise ValueError(f"pipeline output: expected [B, H, W, 3] images or [B, F, H, W, 3] videos, got {samples.shape}")
    return (np.clip(samples, 0.0, 1.0) * 255).round().astype(np.uint8)


def generate(
    pipeline: DiffusionPipeline,
    jobs: list[tuple[int, int, str]],
    settings: SamplingSettings,
    spec: ModelSpec,
    description: str = "generate",
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Generate one image (or clip) per job, in batches of ``settings.batch_size``.

    Args:
        jobs: ``(prompt_index, sample_index, prompt)`` triples.

    Yields:
        ``(prompt_index, sample_index, pixels)``: uint8 ``[H, W, 3]`` for images, ``[F, H, W, 3]`` for videos.
    """
    arguments = call_arguments(settings, spec)
    for start in tqdm(range(0, len(jobs), settings.batch_size), desc=description, unit="batch"):
        batch = jobs[start : start + settings.batch_size]
        generators = [
            torch.Generator("cpu").manual_seed(sample_seed(settings.seed, prompt_index, sample_index))
            for prompt_index, sample_index, _ in batch
        ]
        with torch.no_grad():
            output = pipeline(
                prompt=[prompt for _, _, prompt in batch], generator=generators, output_type="np", return_dict=False,
                **arguments,
            )[0]
        pixels = to_uint8(np.asarray(output))
        if len(pixels) != len(batch):
            raise ValueError(f"{type(pipeline).__name__} returned {len(pixels)} samples for {len(batch)} prompts")
        for (prompt_index, sample_index, _), sample in zip(batch, pixels):
            yield prompt_index, sample_index, sample
