"""Tiny, seeded, real-architecture image pipelines: SD1.5, SDXL, SD3, Flux, PixArt-α.

Each ``build_tiny_<family>(path, ...)`` builds the real diffusers/transformers classes with tiny configs and
seeded random weights, saves the whole pipeline with ``save_pretrained`` and returns ``path``, which then
loads with ``DiffusionPipeline.from_pretrained(path)``. ``sample_size`` is always the default image side in
pixels; every VAE downsamples 4x (a 32 px image is an 8 x 8 latent). Same arguments, same weights, bit for
bit.

Pipeline call notes: Flux's pipeline defaults to 512 px whatever the model, so pass ``height``/``width``;
PixArt's resolution binning only knows the real sample sizes, so pass ``use_resolution_binning=False``.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from diffusion_align.testing.tiny_text import (
    CLIP_HIDDEN_SIZE,
    T5_D_MODEL,
    clip_tokenizer,
    seeded,
    t5_tokenizer,
    tiny_clip_text_encoder,
    tiny_clip_text_encoder_with_projection,
    tiny_t5_encoder,
)

VAE_SCALE_FACTOR = 4  # three encoder blocks, two 2x downsamplings
SD_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def tiny_vae(
    seed: int,
    sample_size: int,
    latent_channels: int,
    scaling_factor: float,
    shift_factor: float | None = None,
) -> AutoencoderKL:
    """AutoencoderKL, 3 blocks (8, 16, 16 channels): ``[B, 3, H, W]`` in ``[-1, 1]`` -> ``[B, C, H/4, W/4]``.

    ``shift_factor`` set means an SD3/Flux-style VAE: no quant convs, latents ``(z - shift) * scale``.
    """
    has_quant_convs = shift_factor is None
    return seeded(
        seed,
        AutoencoderKL,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=latent_channels,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=has_quant_convs,
        use_post_quant_conv=has_quant_convs,
    )


def _latent_size(sample_size: int, multiple: int) -> int:
    """Latent side for an image side of ``sample_size`` px; the latent must be a multiple of ``multiple``."""
    if sample_size % (VAE_SCALE_FACTOR * multiple) != 0:
        raise ValueError(
            f"sample_size={sample_size} px: expected a multiple of {VAE_SCALE_FACTOR * multiple}"
        )
    return sample_size // VAE_SCALE_FACTOR


def _check_unet_args(prediction_type: str, block_out_channels: tuple[int, ...]) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r}: expected one of {PREDICTION_TYPES}")
    if len(block_out_channels) < 2 or any(c % 16 for c in block_out_channels):
        raise ValueError(
            f"block_out_channels={block_out_channels}: expected >= 2 blocks, each a multiple of 16"
        )


def _save(pipeline: DiffusionPipeline, path: str | Path) -> Path:
    pipeline.save_pretrained(path)
    return Path(path)


def build_tiny_sd15(
    path: str | Path,
    *,
    seed: int = 0,
    prediction_type: str = "epsilon",
    block_out_channels: tuple[int, ...] = (32, 64),
    sample_size: int = 32,
) -> Path:
    """Stable Diffusion 1.5 in miniature: cross-attention UNet, 4-channel VAE (scale 0.18215), CLIP text.

    UNet blocks follow SD1.5 (cross-attention in all down blocks but the last, 8 heads); DDIM scheduler with
    SD1.5's scaled-linear betas. No safety checker.

    Args:
        path: Directory to write the pipeline into.
        seed: Seed for all random weights.
        prediction_type: ``"epsilon"`` (SD1.5) or ``"v_prediction"`` (SD2-style), in the scheduler config.
        block_out_channels: UNet widths, at least two, each a multiple of 16; ``(64, 128)`` for benchmarks.
        sample_size: Image side in pixels; the latent is ``sample_size / 4``.
    """
    _check_unet_args(prediction_type, block_out_channels)
    n_blocks = len(block_out_channels)
    unet = seeded(
        seed + 1,
        UNet2DConditionModel,
        sample_size=_latent_size(sample_size, 2 ** (n_blocks - 1)),
        block_out_channels=block_out_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n_blocks - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_blocks - 1),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,  # diffusers' legacy name for the number of heads, as in SD1.5's config
        cross_attention_dim=CLIP_HIDDEN_SIZE,
    )
    scheduler = DDIMScheduler(
        **SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type
    )
    pipeline = StableDiffusionPipeline(
        vae=tiny_vae(seed, sample_size, latent_channels=4, scaling_factor=0.18215),
        text_encoder=tiny_clip_text_encoder(seed + 2),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipeline, path)


def build_tiny_sdxl(
    path: str | Path,
    *,
    seed: int = 0,
    prediction_type: str = "epsilon",
    block_out_channels: tuple[int, ...] = (32, 64),
    sample_size: int = 32,
) -> Path:
    """SDXL in miniature: two CLIP text encoders (the second projected), ``text_time`` added conditioning.

    The UNet's cross-attention width is 64 (both encoders' penultimate states concatenated); its added
    embedding takes the pooled text (32) and six size/crop ids of 8 sinusoidal features: 6 * 8 + 32 = 80.
    Euler scheduler with SDXL's betas; VAE scale 0.13025. Arguments as :func:`build_tiny_sd15`.
    """
    _check_unet_args(prediction_type, block_out_channels)
    n_blocks = len(block_out_channels)
    time_embed_dim = 8
    unet = seeded(
        seed + 1,
        UNet2DConditionModel,
        sample_size=_latent_size(sample_size, 2 ** (n_blocks - 1)),
        block_out_channels=block_out_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_blocks - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_blocks - 1) + ("UpBlock2D",),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=tuple(c // 16 for c in block_out_channels),  # heads, head width 16
        transformer_layers_per_block=(1,) + (2,) * (n_blocks - 1),
        use_linear_projection=True,
        cross_attention_dim=2 * CLIP_HIDDEN_SIZE,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + CLIP_HIDDEN_SIZE,
    )
    scheduler = EulerDiscreteScheduler(**SD_BETAS, steps_offset=1, prediction_type=prediction_type)
    pipeline = StableDiffusionXLPipeline(
        vae=tiny_vae(seed, sample_size, latent_channels=4, scaling_factor=0.13025),
        text_encoder=tiny_clip_text_encoder(seed + 2),
        text_encoder_2=tiny_clip_text_encoder_with_projection(seed + 3, projection_dim=CLIP_HIDDEN_SIZE),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    return _save(pipeline, path)


def build_tiny_sd3(path: str | Path, *, seed: int = 0, sample_size: int = 32) -> Path:
    """SD3 in miniature: MM-DiT (2 joint blocks, 2 heads x 16, patch 2), 16-channel VAE, CLIP + CLIP + T5.

    The T5 encoder is 64 wide so the two 32-wide CLIP states, concatenated, pad into it as in SD3; pooled
    text is both CLIP projections (2 x 32). Flow-matching Euler scheduler with SD3's shift 3.0.
    """
    latent_size = _latent_size(sample_size, 2)
    t5_width = 2 * CLIP_HIDDEN_SIZE
    transformer = seeded(
        seed + 1,
        SD3Transformer2DModel,
        sample_size=latent_size,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        caption_projection_dim=32,
        pooled_projection_dim=2 * CLIP_HIDDEN_SIZE,
        pos_embed_max_size=latent_size,  # SD3's positional grid is 1.5x its 128 latent; tiny keeps 1x
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=tiny_vae(seed, sample_size, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=tiny_clip_text_encoder_with_projection(seed + 2),
        tokenizer=clip_tokenizer(),
        text_encoder_2=tiny_clip_text_encoder_with_projection(seed + 3),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        text_encoder_3=tiny_t5_encoder(seed + 4, d_model=t5_width),
        tokenizer_3=t5_tokenizer(),
    )
    return _save(pipeline, path)


def build_tiny_flux(path: str | Path, *, seed: int = 0, sample_size: int = 32) -> Path:
    """Flux-dev in miniature: 1 double + 2 single-stream blocks (2 heads x 16), guidance embedding on.

    Latents are 16 channels, packed 2 x 2 into 64-channel tokens by the pipeline. Text: CLIP pooled (32), T5
    sequence (32 wide). Flow-matching Euler with Flux-dev's resolution-dependent shift.
    """
    _latent_size(sample_size, 2)  # validates only: the transformer has no sample size; the pipeline packs 2x2
    transformer = seeded(
        seed + 1,
        FluxTransformer2DModel,
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_D_MODEL,
        pooled_projection_dim=CLIP_HIDDEN_SIZE,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # (frame, row, column) rotary widths; sum = head width
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipeline = FluxPipeline(
        scheduler=scheduler,
        vae=tiny_vae(seed, sample_size, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=tiny_clip_text_encoder(seed + 2),
        tokenizer=clip_tokenizer(),
        text_encoder_2=tiny_t5_encoder(seed + 3),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    return _save(pipeline, path)


def build_tiny_pixart(path: str | Path, *, seed: int = 0, sample_size: int = 32) -> Path:
    """PixArt-α in miniature: DiT with adaLN-single and T5 cross-attention (2 blocks, 2 heads x 16, patch 2).

    Predicts noise and learned variance (8 output channels for 4 latent channels) as PixArt does; SD VAE
    (scale 0.18215); DPM-Solver++ with PixArt's linear betas. Call with ``use_resolution_binning=False``.
    """
    latent_size = _latent_size(sample_size, 2)
    transformer = seeded(
        seed + 1,
        PixArtTransformer2DModel,
        sample_size=latent_size,
        patch_size=2,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        cross_attention_dim=32,
        caption_channels=T5_D_MODEL,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000
    )
    pipeline = PixArtAlphaPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=tiny_t5_encoder(seed + 2),
        vae=tiny_vae(seed, sample_size, latent_channels=4, scaling_factor=0.18215),
        transformer=transformer,
        scheduler=scheduler,
    )
    return _save(pipeline, path)
