"""Video families: Wan 2.1 (flow matching) and CogVideoX (DDPM v-prediction).

Public layouts, the same for both: pixels ``[N, F, 3, H, W]`` in [-1, 1] (the data pipeline's frame
stacks) and latents ``[N, C, f, h, w]`` (channels before frames, as the video VAEs produce them). Each adapter
converts to its model's own layout inside :meth:`vae_posterior` and :meth:`predict`.

Wan follows its pipeline and the diffusers team's finetrainers: latents normalised per channel with the VAE's
``latents_mean`` / ``latents_std``, noise ``x_σ = (1-σ)·x0 + σ·ε``, target ``ε - x0``, timestep ``σ·1000``.

CogVideoX follows diffusers' ``examples/cogvideo/train_cogvideox_lora.py``: latents ``z·scaling_factor``,
noise from ``CogVideoXDPMScheduler.add_noise`` (zero-terminal-SNR betas with CogVideoX's SNR shift), the
transformer on ``[N, f, C, h, w]`` with 3D rotary embeddings where its config asks for them. The script's loss
(x0 recovered from the v output, weighted by ``1/(1-ā)``) equals the plain MSE between predicted and true v,
so the target here is ``v = sqrt(ā)·ε - sqrt(1-ā)·x0`` and the per-sample errors are the script's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline, WanPipeline
from torch import Tensor, nn

from diffusion_align.adapters.base import (
    FlowMatchingAdapter,
    NoiseSchedule,
    PipelineAdapter,
    check_sigmas,
    t5_prompt_embeds,
)


def _video_posterior(vae: nn.Module, pixels: Tensor, owner: str) -> tuple[Tensor, Tensor]:
    """``pixels [N, F, 3, H, W]`` -> the VAE posterior ``(mean, std)``, each ``[N, C, f, h, w]``."""
    if pixels.ndim != 5 or pixels.shape[2] != 3:
        raise ValueError(f"{owner}.vae_posterior: expected pixels [N, F, 3, H, W], got {list(pixels.shape)}")
    dist = vae.encode(pixels.transpose(1, 2).to(vae.device, vae.dtype)).latent_dist
    return dist.mean, dist.std


class WanAdapter(FlowMatchingAdapter):
    """Wan 2.1 text-to-video: ``WanTransformer3DModel`` on UMT5 text, rectified flow on ``[N, 16, f, h, w]``.

    Args:
        pipeline: a loaded ``WanPipeline`` with one transformer (Wan 2.1 T2V 1.3B / 14B).
        resolution: frame size in pixels (square crops).
        max_sequence_length: UMT5 tokens per prompt: 512, the pipeline's inference default.
    """

    family = "wan"
    pipeline_class = WanPipeline
    lora_layers_kwarg = "transformer_lora_layers"

    def __init__(self, pipeline: WanPipeline, resolution: int, max_sequence_length: int = 512) -> None:
        if pipeline.transformer_2 is not None:
            raise ValueError("WanAdapter: two-expert Wan 2.2 pipelines (transformer_2) are not supported")
        if pipeline.config.expand_timesteps:
            raise ValueError(
                "WanAdapter: Wan 2.2 TI2V per-token timesteps (expand_timesteps) are not supported"
            )
        self.pipeline = pipeline
        self.denoiser: nn.Module = pipeline.transformer
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self._set_flow_schedule(pipeline.scheduler.config)  # the hub's Wan pipelines sample with UniPC (flow)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        resolution: int,
        revision: str | None = None,
        variant: str | None = None,
        max_sequence_length: int = 512,
    ) -> WanAdapter:
        """Load the pipeline from a hub id or a local directory."""
        pipeline = cls.pipeline_class.from_pretrained(str(path), revision=revision, variant=variant)
        return cls(pipeline, resolution, max_sequence_length=max_sequence_length)

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        """``prompt_embeds [N, 512, 4096]``: the pipeline's UMT5 states, zero past each prompt's length."""
        return t5_prompt_embeds(self.pipeline, prompts, self.max_sequence_length)

    @torch.no_grad()
    def vae_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``pixels [N, F, 3, H, W]`` -> unscaled ``(mean, std)``, each ``[N, 16, (F-1)/4 + 1, H/8, W/8]``."""
        return _video_posterior(self.pipeline.vae, pixels, "WanAdapter")

    def scale_latents(self, sample: Tensor) -> Tensor:
        """Per-channel ``(z - latents_mean) / latents_std``: the inverse of the pipeline's decode step."""
        config = self.pipeline.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, device=sample.device, dtype=sample.dtype).view(shape)
        std = torch.tensor(config.latents_std, device=sample.device, dtype=sample.dtype).view(shape)
        return (sample - mean) / std

    def predict(
        self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor], denoiser: nn.Module | None = None
    ) -> Tensor:
        """Velocity prediction ``[N, 16, f, h, w]``; the transformer reads ``σ·1000`` as its timestep."""
        check_sigmas("WanAdapter.predict", timesteps)
        transformer = self.denoiser if denoiser is None else denoiser
        return transformer(
            hidden_states=noisy,
            timestep=timesteps * self.schedule.num_train_timesteps,
            encoder_hidden_states=cond["prompt_embeds"],
            return_dict=False,
        )[0]


class CogVideoXAdapter(PipelineAdapter):
    """CogVideoX 2B / 5B (and 1.5 where its temporal patch divides the latent frames): v-prediction, T5 text.

    Args:
        pipeline: a loaded ``CogVideoXPipeline``.
        resolution: frame size in pixels (square crops).
    """

    family = "cogvideox"
    pipeline_class = CogVideoXPipeline
    lora_layers_kwarg = "transformer_lora_layers"

    def __init__(self, pipeline: CogVideoXPipeline, resolution: int) -> None:
        self.pipeline = pipeline
        self.denoiser: nn.Module = pipeline.transformer
        self.resolution = resolution
        self.noise_scheduler = CogVideoXDPMScheduler.from_config(pipeline.scheduler.config)
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type != "v_prediction":
            raise ValueError(
                f"CogVideoXAdapter: scheduler prediction_type '{prediction_type}'; CogVideoX predicts v "
                f"(expected v_prediction)"
            )
        config = pipeline.transformer.config
        self.max_sequence_length = config.max_text_seq_length  # the joint sequence's text part is fixed
        self.rotary = config.use_rotary_positional_embeddings  # 5B: rotary; 2B: sinusoidal positions
        self.temporal_patch = config.patch_size_t  # None for CogVideoX 1.0, 2 for 1.5
        self.schedule = NoiseSchedule("discrete", self.noise_scheduler.config.num_train_timesteps)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, resolution: int, revision: str | None = None, variant: str | None = None
    ) -> CogVideoXAdapter:
        """Load the pipeline from a hub id or a local directory."""
        pipeline = cls.pipeline_class.from_pretrained(str(path), revision=revision, variant=variant)
        return cls(pipeline, resolution)

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        """``prompt_embeds [N, 226, 4096]``: T5 states padded to the transformer's fixed text length."""
        return t5_prompt_embeds(self.pipeline, prompts, self.max_sequence_length)

    @torch.no_grad()
    def vae_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``pixels [N, F, 3, H, W]`` -> unscaled ``(mean, std)``, each ``[N, 16, (F-1)/4 + 1, H/8, W/8]``."""
        return _video_posterior(self.pipeline.vae, pixels, "CogVideoXAdapter")

    def scale_latents(self, sample: Tensor) -> Tensor:
        return sample * self.pipeline.vae.config.scaling_factor

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = sqrt(ā_t)·x0 + sqrt(1-ā_t)·ε`` on CogVideoX's shifted zero-terminal-SNR schedule."""
        return self.noise_scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``v = sqrt(ā_t)·ε - sqrt(1-ā_t)·x0``."""
        return self.noise_scheduler.get_velocity(latents, noise, timesteps)

    def predict(
        self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor], denoiser: nn.Module | None = None
    ) -> Tensor:
        """v prediction ``[N, 16, f, h, w]``; the transformer runs on ``[N, f, 16, h, w]``."""
        transformer = self.denoiser if denoiser is None else denoiser
        _, _, frames, h, w = noisy.shape
        if self.temporal_patch is not None and frames % self.temporal_patch:
            raise ValueError(
                f"CogVideoXAdapter.predict: {frames} latent frames is not a multiple of the transformer's "
                f"patch_size_t={self.temporal_patch}: use F frames with (F - 1) / 4 + 1 divisible by it"
            )
        out = transformer(
            hidden_states=noisy.transpose(1, 2),
            encoder_hidden_states=cond["prompt_embeds"],
            timestep=timesteps,
            image_rotary_emb=self.rotary_embeddings(frames, h, w, noisy.device),
            return_dict=False,
        )[0]
        return out.transpose(1, 2)

    def rotary_embeddings(
        self, frames: int, h: int, w: int, device: torch.device
    ) -> tuple[Tensor, Tensor] | None:
        """The pipeline's 3D rotary ``(cos, sin)`` for a ``frames × h × w`` latent; None without rotary."""
        if not self.rotary:
            return None
        scale = self.pipeline.vae_scale_factor_spatial
        return self.pipeline._prepare_rotary_positional_embeddings(h * scale, w * scale, frames, device)
