"""UNet families: Stable Diffusion 1.x/2.x (ε or v prediction) and SDXL (two text encoders, pooled embeds, time ids).

Noise follows the authors' scripts: ``x_t = sqrt(ā_t)·x0 + sqrt(1-ā_t)·ε`` through ``DDPMScheduler.add_noise``; the
target is ε, or v = ``scheduler.get_velocity`` for v-prediction checkpoints (SD2-768).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from torch import Tensor, nn

from diffusion_align.adapters.base import NoiseSchedule, PipelineAdapter, image_posterior


class SDAdapter(PipelineAdapter):
    """Stable Diffusion 1.x / 2.x: ``UNet2DConditionModel`` conditioned on CLIP hidden states.

    Args:
        pipeline: a loaded ``StableDiffusionPipeline``.
        resolution: training image size in pixels (square).
    """

    family = "sd"
    pipeline_class = StableDiffusionPipeline
    lora_layers_kwarg = "unet_lora_layers"
    kohya_lora = True  # kohya's lora_unet_* names are defined for the UNet (SD1.5, SDXL)

    def __init__(self, pipeline: StableDiffusionPipeline, resolution: int) -> None:
        self.pipeline = pipeline
        self.denoiser: nn.Module = pipeline.unet
        self.resolution = resolution
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"scheduler prediction_type '{self.prediction_type}' is not supported: expected epsilon or v_prediction"
            )
        self.schedule = NoiseSchedule("discrete", self.noise_scheduler.config.num_train_timesteps)

    @classmethod
    def from_pretrained(cls, path: str | Path, resolution: int, revision: str | None = None, variant: str | None = None):
        """Load the pipeline from a hub id or a local directory (no safety checker: training needs none)."""
        kwargs = {"revision": revision, "variant": variant}
        if cls.pipeline_class is StableDiffusionPipeline:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        return cls(cls.pipeline_class.from_pretrained(str(path), **kwargs), resolution)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipeline.encode_prompt(prompts, self.pipeline.text_encoder.device, 1, False)
        return {"prompt_embeds": embeds}

    @torch.no_grad()
    def vae_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        return image_posterior(self.pipeline.vae, pixels)

    def scale_latents(self, sample: Tensor) -> Tensor:
        return sample * self.pipeline.vae.config.scaling_factor

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        return self.noise_scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.noise_scheduler.get_velocity(latents, noise, timesteps)

    def unet_kwargs(self, cond: dict[str, Tensor], n: int) -> dict:
        return {"encoder_hidden_states": cond["prompt_embeds"]}

    def predict(
        self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor], denoiser: nn.Module | None = None
    ) -> Tensor:
        unet = self.denoiser if denoiser is None else denoiser
        return unet(noisy, timesteps, **self.unet_kwargs(cond, noisy.shape[0]), return_dict=False)[0]


class SDXLAdapter(SDAdapter):
    """SDXL: two text encoders (penultimate hidden states concatenated), pooled embeds and micro-conditioning.

    Time ids are ``(res, res, 0, 0, res, res)``: original size = target size = the training resolution, no crop offset
    (images are resized and center-cropped to it). The diffusers SDXL DPO script passes each image's true original size
    instead; datasets here are resized before training, so both describe the same pixels.
    """

    family = "sdxl"
    pipeline_class = StableDiffusionXLPipeline
    TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompts, device=self.pipeline.text_encoder_2.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def time_ids(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        res = self.resolution
        return torch.tensor([[res, res, 0, 0, res, res]], dtype=dtype, device=device).repeat(n, 1)

    def unet_kwargs(self, cond: dict[str, Tensor], n: int) -> dict:
        pooled = cond["pooled_prompt_embeds"]
        return {
            "encoder_hidden_states": cond["prompt_embeds"],
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": self.time_ids(n, pooled.dtype, pooled.device)},
        }
