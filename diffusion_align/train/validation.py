"""Validation samples during training: the same prompts and seed at every interval, saved as PNG grids and sent to the
trackers that take images (tensorboard, wandb). At the end of a LoRA run the base model (adapters disabled) is
sampled with the same seed, so the two grids compare side by side."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image

from diffusion_align.adapters.base import adapters_disabled


def sample_grid(adapter, validation, resolution: int, device: torch.device) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 samples for ``validation.prompts`` (video: the frames of each clip side by side)."""
    generator = torch.Generator(device).manual_seed(validation.seed)
    out = adapter.pipeline(
        prompt=list(validation.prompts),
        num_inference_steps=validation.num_inference_steps,
        guidance_scale=validation.guidance_scale,
        height=resolution,
        width=resolution,
        generator=generator,
        output_type="np",
        return_dict=False,
        **dict(validation.pipeline_kwargs),
    )[0]
    samples = np.asarray(out)
    if samples.ndim == 5:  # video [N, F, H, W, 3]: one strip of frames per prompt
        samples = np.concatenate(list(samples.transpose(1, 0, 2, 3, 4)), axis=2)
    return (samples.clip(0, 1) * 255).round().astype(np.uint8)


def save_grid(samples: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid([Image.fromarray(s) for s in samples], rows=1, cols=len(samples)).save(path)
    return path


def log_to_trackers(accelerator, samples: np.ndarray, tag: str, step: int) -> None:
    """Send images to the trackers that take them; the PNG grid on disk is written whatever the trackers."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({tag: samples}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({tag: list(samples)}, step=step)


@torch.no_grad()
def run_validation(cfg, accelerator, adapter, out_dir: Path, step: int, base: bool = False,
                   write: bool = True) -> Path | None:
    """Sample the validation prompts with the policy (or, ``base=True``, with the LoRA adapters disabled).

    ``write=False``: sample only (a sharded run's other processes take part in the forwards), log and save nothing.
    """
    validation = cfg.trainer.validation
    denoiser = adapter.denoiser
    was_training = denoiser.training
    denoiser.eval()
    context = adapters_disabled(denoiser) if base else contextlib.nullcontext()
    with context:
        samples = sample_grid(adapter, validation, cfg.model.resolution, accelerator.device)
    denoiser.train(was_training)
    if not write:
        return None
    tag = "validation/base" if base else "validation/policy"
    log_to_trackers(accelerator, samples, tag, step)
    name = "base.png" if base else f"step-{step:06d}.png"
    return save_grid(samples, out_dir / "validation" / name)
