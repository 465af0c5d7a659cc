"""Diffusion-transformer image families: SD3 / SD3.5 (MMDiT, rectified flow) and PixArt-α (DiT, ε).

SD3 follows diffusers' ``train_dreambooth_lora_sd3.py``: latents ``(z - shift_factor)·scaling_factor``, noise
``x_σ = (1-σ)·x0 + σ·ε``, target the velocity ``ε - x0``, and the transformer reads ``σ·1000`` as its
timestep (the value ``FlowMatchEulerDiscreteScheduler`` gives it at inference).

PixArt follows the PixArt authors' diffusers LoRA script (``train_scripts/train_pixart_lora_hf.py``): DDPM
noise ``x_t = sqrt(ā_t)·x0 + sqrt(1-ā_t)·ε`` on the pipeline's betas, target ε, and the learned-variance
channels split off the transformer's output (``.chunk(2, dim=1)[0]``), as the pipeline does at inference.
diffusers gives ``PixArtTransformer2DModel`` no LoRA support (no ``PeftAdapterMixin``), so the transformer is
loaded as :class:`PixArtLoraTransformer2DModel`: the same model and weights with diffusers' own mixin added.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    DDPMScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.loaders import PeftAdapterMixin
from torch import Tensor, nn

from diffusion_align.adapters.base import (
    FlowMatchingAdapter,
    NoiseSchedule,
    PipelineAdapter,
    check_sigmas,
    image_posterior,
)


class SD3Adapter(FlowMatchingAdapter):
    """Stable Diffusion 3 / 3.5: ``SD3Transformer2DModel`` on CLIP-L + CLIP-G + T5 text, rectified flow.

    Args:
        pipeline: a loaded ``StableDiffusion3Pipeline`` (SD3 Medium, SD3.5 Medium or Large).
        resolution: training image size in pixels (square).
        max_sequence_length: T5 tokens per prompt. Default 256, the pipeline's inference default, so
            training sees the conditioning inference sees (diffusers' SD3 script trains with 77).
    """

    TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")

    family = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    lora_layers_kwarg = "transformer_lora_layers"

    def __init__(
        self, pipeline: StableDiffusion3Pipeline, resolution: int, max_sequence_length: int = 256
    ) -> None:
        self.pipeline = pipeline
        self.denoiser: nn.Module = pipeline.transformer
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self._set_flow_schedule(pipeline.scheduler.config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        resolution: int,
        revision: str | None = None,
        variant: str | None = None,
        max_sequence_length: int = 256,
    ) -> SD3Adapter:
        """Load the pipeline from a hub id or a local directory."""
        pipeline = cls.pipeline_class.from_pretrained(str(path), revision=revision, variant=variant)
        return cls(pipeline, resolution, max_sequence_length=max_sequence_length)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        """The pipeline's own ``encode_prompt``: ``prompt_embeds [N, 77 + T5 tokens, D]`` (CLIP states
        padded to T5's width, then T5) and ``pooled_prompt_embeds [N, 2048]`` (both CLIP projections)."""
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.pipeline.text_encoder.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
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
        """Velocity prediction ``[N, 16, h, w]``; the transformer reads ``σ·1000`` as its timestep."""
        check_sigmas("SD3Adapter.predict", timesteps)
        transformer = self.denoiser if denoiser is None else denoiser
        return transformer(
            hidden_states=noisy,
            timestep=timesteps * self.schedule.num_train_timesteps,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]


class PixArtLoraTransformer2DModel(PixArtTransformer2DModel, PeftAdapterMixin):
    """``PixArtTransformer2DModel`` with diffusers' ``PeftAdapterMixin``; same config, weights and forward.

    The mixin adds ``add_adapter``, ``disable_adapters``, ``save_lora_adapter`` and ``load_lora_adapter``: a
    fresh model reads the file :func:`~diffusion_align.adapters.lora.save_lora` writes with
    ``load_lora_adapter(directory, prefix=None, weight_name="pytorch_lora_weights.safetensors")``. A pipeline
    saved with this class records it in ``model_index.json``; without diffusion_align installed, reload a full
    fine-tune with ``transformer=PixArtTransformer2DModel.from_pretrained(path, subfolder="transformer")``.
    """


class PixArtAdapter(PipelineAdapter):
    """PixArt-α: ``PixArtTransformer2DModel`` (DiT, adaLN-single) on T5 text, DDPM ε with learned σ.

    The transformer outputs ε and a variance interpolation (``out_channels = 2 × latent channels``); training
    uses the ε half only, as the authors' LoRA script does. PixArt-α 1024 px (``sample_size`` 128) also reads
    resolution and aspect-ratio micro-conditions, filled from the latent size as the pipeline does.

    Args:
        pipeline: a ``PixArtAlphaPipeline`` whose transformer is a :class:`PixArtLoraTransformer2DModel`
            (as :meth:`from_pretrained` loads it).
        resolution: training image size in pixels (square).
        max_sequence_length: T5 tokens per prompt: 120, PixArt-α's (paper Section 3.1; pipeline default).
        clean_caption: run the pipeline's caption cleaning (its inference default; needs
            ``beautifulsoup4`` and ``ftfy``). Default False: the authors' LoRA script uses raw captions.
    """

    family = "pixart"
    pipeline_class = PixArtAlphaPipeline
    # no pipeline LoRA loader: saved and loaded at model level (transformer.load_lora_adapter)
    lora_layers_kwarg = None

    def __init__(
        self,
        pipeline: PixArtAlphaPipeline,
        resolution: int,
        max_sequence_length: int = 120,
        clean_caption: bool = False,
    ) -> None:
        if not isinstance(pipeline.transformer, PixArtLoraTransformer2DModel):
            raise TypeError(
                f"PixArtAdapter: pipeline.transformer is a {type(pipeline.transformer).__name__}; expected "
                f"a PixArtLoraTransformer2DModel (LoRA support): load with PixArtAdapter.from_pretrained"
            )
        self.pipeline = pipeline
        self.denoiser: nn.Module = pipeline.transformer
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.clean_caption = clean_caption
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"PixArtAdapter: scheduler prediction_type '{self.prediction_type}' is not supported: "
                f"expected epsilon or v_prediction"
            )
        self.learned_sigma = self._has_learned_sigma(pipeline.transformer.config)
        self.micro_conditions = pipeline.transformer.use_additional_conditions
        self.schedule = NoiseSchedule("discrete", self.noise_scheduler.config.num_train_timesteps)

    @staticmethod
    def _has_learned_sigma(config) -> bool:
        """True when the output stacks ε and variance channels (``out = 2·in``); False for ε alone."""
        if config.out_channels == 2 * config.in_channels:
            return True
        if config.out_channels == config.in_channels:
            return False
        raise ValueError(
            f"PixArt transformer config: out_channels={config.out_channels} with "
            f"in_channels={config.in_channels}; expected equal (ε only) or twice in_channels (ε and variance)"
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        resolution: int,
        revision: str | None = None,
        variant: str | None = None,
        max_sequence_length: int = 120,
        clean_caption: bool = False,
    ) -> PixArtAdapter:
        """Load the pipeline from a hub id or a local directory, its transformer as a LoRA-capable one."""
        options = {"revision": revision, "variant": variant}
        transformer = PixArtLoraTransformer2DModel.from_pretrained(
            str(path), subfolder="transformer", **options
        )
        pipeline = cls.pipeline_class.from_pretrained(str(path), transformer=transformer, **options)
        return cls(pipeline, resolution, max_sequence_length=max_sequence_length, clean_caption=clean_caption)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        """``prompt_embeds [N, 120, 4096]`` and T5's padding mask ``prompt_attention_mask [N, 120]`` (int)."""
        embeds, mask, _, _ = self.pipeline.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=self.pipeline.text_encoder.device,
            clean_caption=self.clean_caption,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    @torch.no_grad()
    def vae_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``pixels [N, 3, H, W]`` in [-1, 1] -> unscaled ``(mean, std)``, each ``[N, 4, H/8, W/8]``."""
        return image_posterior(self.pipeline.vae, pixels)

    def scale_latents(self, sample: Tensor) -> Tensor:
        return sample * self.pipeline.vae.config.scaling_factor

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        return self.noise_scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.noise_scheduler.get_velocity(latents, noise, timesteps)

    def added_cond_kwargs(self, noisy: Tensor, dtype: torch.dtype) -> dict[str, Tensor | None]:
        """Resolution ``[N, 2]`` (H, W in px) and aspect ratio ``[N, 1]`` for 1024 px PixArt-α, else None."""
        if not self.micro_conditions:
            return {"resolution": None, "aspect_ratio": None}
        n, _, h, w = noisy.shape
        scale = self.pipeline.vae_scale_factor
        resolution = torch.tensor([[h * scale, w * scale]], dtype=dtype, device=noisy.device).repeat(n, 1)
        aspect_ratio = torch.tensor([[h / w]], dtype=dtype, device=noisy.device).repeat(n, 1)
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}

    def predict(
        self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor], denoiser: nn.Module | None = None
    ) -> Tensor:
        """ε (or v) prediction ``[N, 4, h, w]``: the learned-variance channels are dropped."""
        transformer = self.denoiser if denoiser is None else denoiser
        embeds = cond["prompt_embeds"]
        out = transformer(
            noisy,
            encoder_hidden_states=embeds,
            encoder_attention_mask=cond["prompt_attention_mask"],
            timestep=timesteps,
            added_cond_kwargs=self.added_cond_kwargs(noisy, embeds.dtype),
            return_dict=False,
        )[0]
        return out.chunk(2, dim=1)[0] if self.learned_sigma else out
