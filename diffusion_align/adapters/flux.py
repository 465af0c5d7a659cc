"""Flux.1 (dev / schnell): rectified flow on 2×2-packed latents, pooled CLIP + T5 text, guidance embedding.

Follows diffusers' ``train_dreambooth_lora_flux.py``: latents ``(z - shift_factor)·scaling_factor``, noise
``x_σ = (1-σ)·x0 + σ·ε``, target ``ε - x0``. The latents ``[N, 16, h, w]`` are packed into ``h/2 · w/2``
tokens of 64 channels with ``FluxPipeline._pack_latents``, positioned by ``_prepare_latent_image_ids``, and
the prediction is unpacked back to ``[N, 16, h, w]``. The transformer receives σ itself: it multiplies
timestep and guidance by 1000 internally (the script passes ``timestep=timesteps / 1000``).

Guidance: FLUX.1-dev is guidance-distilled, its transformer embeds a guidance scale. diffusers' script
defaults to ``--guidance_scale 3.5``, but every command in its README trains with ``--guidance_scale=1``:
fine-tunes of dev use 1.0 (the conf default). FLUX.1-schnell embeds no guidance: ``guidance_scale=None``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FluxPipeline
from torch import Tensor, nn

from diffusion_align.adapters.base import (
    FlowMatchingAdapter,
    check_sigmas,
    image_posterior,
)


class FluxAdapter(FlowMatchingAdapter):
    """Flux.1: ``FluxTransformer2DModel`` (double- and single-stream blocks) on CLIP pooled + T5 text.

    Args:
        pipeline: a loaded ``FluxPipeline``.
        resolution: training image size in pixels (square; the latent side must be even for packing).
        guidance_scale: the guidance value fed to a guidance-distilled transformer while training (dev: 1.0);
            None for a transformer without guidance embedding (schnell).
        max_sequence_length: T5 tokens per prompt: 512, the pipeline's inference default and the script's.
    """

    TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

    family = "flux"
    pipeline_class = FluxPipeline
    lora_layers_kwarg = "transformer_lora_layers"

    def __init__(
        self,
        pipeline: FluxPipeline,
        resolution: int,
        guidance_scale: float | None = 1.0,
        max_sequence_length: int = 512,
    ) -> None:
        self.pipeline = pipeline
        self.denoiser: nn.Module = pipeline.transformer
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.guidance_scale = self._checked_guidance(
            pipeline.transformer.config.guidance_embeds, guidance_scale
        )
        self._set_flow_schedule(pipeline.scheduler.config)

    @staticmethod
    def _checked_guidance(has_guidance: bool, guidance_scale: float | None) -> float | None:
        """A guidance scale exactly when the transformer embeds one."""
        if has_guidance and guidance_scale is None:
            raise ValueError("FluxAdapter: the transformer embeds guidance (FLUX.1-dev): set guidance_scale")
        if not has_guidance and guidance_scale is not None:
            raise ValueError(
                f"FluxAdapter: guidance_scale={guidance_scale} but the transformer has no guidance "
                f"embedding (FLUX.1-schnell): set guidance_scale to null"
            )
        return guidance_scale

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        resolution: int,
        revision: str | None = None,
        variant: str | None = None,
        guidance_scale: float | None = 1.0,
        max_sequence_length: int = 512,
    ) -> FluxAdapter:
        """Load the pipeline from a hub id or a local directory."""
        pipeline = cls.pipeline_class.from_pretrained(str(path), revision=revision, variant=variant)
        options = {"guidance_scale": guidance_scale, "max_sequence_length": max_sequence_length}
        return cls(pipeline, resolution, **options)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        """The pipeline's ``encode_prompt``: ``prompt_embeds [N, 512, 4096]`` (T5) and ``pooled_prompt_embeds
        [N, 768]`` (CLIP). Its text ids are all zeros ``[L, 3]``; :meth:`predict` rebuilds them from ``L``."""
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.pipeline.text_encoder.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    @torch.no_grad()
    def vae_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``pixels [N, 3, H, W]`` in [-1, 1] -> unscaled ``(mean, std)``, each ``[N, 16, H/8, W/8]``."""
        return image_posterior(self.pipeline.vae, pixels)

    def scale_latents(self, sample: Tensor) -> Tensor:
        config = self.pipeline.vae.config
        return (sample - config.shift_factor) * config.scaling_factor

    def predict(
        self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor], denoiser: nn.Module | None = None
    ) -> Tensor:
        """Velocity prediction ``[N, 16, h, w]``: pack, run the transformer on σ (and guidance), unpack."""
        check_sigmas("FluxAdapter.predict", timesteps)
        transformer = self.denoiser if denoiser is None else denoiser
        n, c, h, w = noisy.shape
        if h % 2 or w % 2:
            raise ValueError(f"FluxAdapter.predict: latent size {h}x{w} must be even for 2x2 packing")
        embeds = cond["prompt_embeds"]
        out = transformer(
            hidden_states=FluxPipeline._pack_latents(noisy, n, c, h, w),
            timestep=timesteps,
            guidance=self.guidance(n, noisy),
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, noisy.device, noisy.dtype),
            return_dict=False,
        )[0]
        scale = self.pipeline.vae_scale_factor
        return FluxPipeline._unpack_latents(out, h * scale, w * scale, scale)

    def guidance(self, n: int, like: Tensor) -> Tensor | None:
        """``[N]`` filled with the training guidance scale; None for a transformer without guidance."""
        if self.guidance_scale is None:
            return None
        return torch.full((n,), self.guidance_scale, device=like.device, dtype=like.dtype)
