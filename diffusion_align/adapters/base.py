"""The model-adapter interface: what the trainer needs from any diffusers model family.

An adapter hides the family: ε / v / flow-velocity targets, SDXL time ids, Flux packing and guidance, video frame
layouts. The trainer calls the same methods for every family, so adding a family never touches ``train/``.

Shapes: ``N`` samples (the trainer flattens ``B`` prompts × ``K`` candidates), latents ``[N, C, h, w]`` for images and
``[N, C, f, h, w]`` for video (the adapter converts to its model's own layout inside :meth:`predict`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor, nn

TimestepKind = Literal["discrete", "flow"]


@dataclass(frozen=True)
class NoiseSchedule:
    """How an adapter's timesteps are drawn and read.

    Attributes:
        kind: ``discrete`` — integer DDPM timesteps in ``[0, num_train_timesteps)`` (ε or v prediction);
            ``flow`` — continuous noise level σ in ``(0, 1)``, ``x_σ = (1-σ)·x0 + σ·ε`` (rectified flow).
        num_train_timesteps: 1000 for every family we wrap; flow models receive ``σ·num_train_timesteps``.
    """

    kind: TimestepKind
    num_train_timesteps: int = 1000


@runtime_checkable
class DiffusionAdapter(Protocol):
    """One model family behind the trainer's interface (see module docstring for shapes)."""

    family: str
    pipeline: object
    denoiser: nn.Module
    schedule: NoiseSchedule
    noise_scheduler: object  # the diffusers training scheduler (DDPMScheduler, FlowMatchEulerDiscreteScheduler, ...)
    kohya_lora: bool  # its LoRA can also be written under kohya's key names (UNets: what UI tools load)

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        """Text conditioning for ``prompts``: name -> ``[N, ...]`` tensors (cacheable, no grad)."""

    def vae_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Unscaled VAE posterior ``(mean, std)`` of ``pixels`` in [-1, 1] (cacheable, no grad)."""

    def scale_latents(self, sample: Tensor) -> Tensor:
        """Apply the VAE's shift and scaling factor to a posterior sample: the latents the denoiser is trained on."""

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward-noise ``latents`` to ``timesteps`` (``[N]``: ints for discrete, σ for flow)."""

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the denoiser must predict: ε, v, or the flow velocity ε - x0."""

    def predict(self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor], denoiser: nn.Module | None = None) -> Tensor:
        """Run ``denoiser`` (the policy by default) on a batch; returns the prediction in the target's layout."""


class PipelineAdapter:
    """What every family shares: the device follows the trained network, and the frozen modules are the pipeline's
    VAE and those of its text encoders (``TEXT_ENCODERS``) that are loaded (SD3 may come without T5).

    The loop moves the frozen modules to the device in the weight dtype; they are never trained here.
    """

    TEXT_ENCODERS: tuple[str, ...] = ("text_encoder",)
    kohya_lora: bool = False
    pipeline: object
    denoiser: nn.Module

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def frozen_modules(self) -> dict[str, nn.Module]:
        modules = {"vae": self.pipeline.vae}
        for name in self.TEXT_ENCODERS:
            encoder = getattr(self.pipeline, name)
            if encoder is not None:
                modules[name] = encoder
        return modules


class FlowMatchingAdapter(PipelineAdapter):
    """What the rectified-flow families (SD3, Flux, Wan) share: ``x_σ = (1-σ)·x0 + σ·ε``, target ``ε - x0``, and
    timesteps that are float σ in [0, 1] (their transformers read ``σ·1000``).

    ``noise_scheduler`` is a ``FlowMatchEulerDiscreteScheduler`` from the pipeline's scheduler config (the authors'
    scripts' ``noise_scheduler_copy``); its σ grid is unused here: σ comes from the trainer's sampler.
    """

    def _set_flow_schedule(self, scheduler_config) -> None:
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.schedule = NoiseSchedule("flow", self.noise_scheduler.config.num_train_timesteps)

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_σ = (1-σ)·x0 + σ·ε`` with ``timesteps`` the per-sample σ ``[N]``."""
        check_sigmas(f"{type(self).__name__}.add_noise", timesteps)
        return flow_noisy(latents, noise, timesteps)

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The flow velocity ``ε - x0``."""
        return flow_velocity(latents, noise)


@torch.no_grad()
def t5_prompt_embeds(pipeline, prompts: list[str], max_sequence_length: int) -> dict[str, Tensor]:
    """``{"prompt_embeds": [N, L, D]}`` from a video pipeline's own ``encode_prompt`` (Wan's UMT5, CogVideoX's T5)."""
    embeds, _ = pipeline.encode_prompt(prompts, do_classifier_free_guidance=False,
                                       max_sequence_length=max_sequence_length, device=pipeline.text_encoder.device)
    return {"prompt_embeds": embeds}


@contextlib.contextmanager
def adapters_disabled(denoiser: nn.Module) -> Iterator[None]:
    """Run ``denoiser`` without its LoRA adapters (diffusers' PeftAdapterMixin), restoring them afterwards."""
    denoiser.disable_adapters()
    try:
        yield
    finally:
        denoiser.enable_adapters()



def cast_frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast a frozen module's weights to ``dtype``, except those its class keeps in float32.

    diffusers and transformers models list such submodules in ``_keep_in_fp32_modules`` (Wan's rotary embedding,
    time embedder and norms, for instance); their ``from_pretrained(torch_dtype=...)`` honours it, a plain ``.to``
    does not. Trainable parameters (``requires_grad``) are left untouched.
    """
    keep = module._keep_in_fp32_modules or []
    for name, param in module.named_parameters():
        if param.requires_grad:
            continue
        fp32 = any(part in name.split(".") for part in keep)
        param.data = param.data.to(torch.float32 if fp32 else dtype)
    return module


def check_sigmas(owner: str, timesteps: Tensor) -> None:
    """Flow timesteps are float σ; an int tensor means a discrete sampler was paired with a flow model."""
    if not timesteps.is_floating_point():
        raise ValueError(
            f"{owner}: timesteps must be float noise levels σ in [0, 1] (schedule kind 'flow'), got {timesteps.dtype}"
        )


def flow_noisy(latents: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """Rectified-flow forward process ``x_σ = (1-σ)·x0 + σ·ε``, σ per sample ``[N]``."""
    sigma = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return (1.0 - sigma) * latents + sigma * noise


def flow_velocity(latents: Tensor, noise: Tensor) -> Tensor:
    """The rectified-flow target ``ε - x0``."""
    return noise - latents


@torch.no_grad()
def image_posterior(vae: nn.Module, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """``pixels [N, 3, H, W]`` in [-1, 1] -> the unscaled VAE posterior ``(mean, std)``."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean, dist.std
