"""Tiny, seeded, real-architecture video pipelines: Wan 2.1 (text-to-video) and CogVideoX (2B-style).

Both video VAEs keep the real compression, 8x in space and 4x in time (``F`` frames ->
``(F - 1) / 4 + 1`` latent frames, so ``F`` must be ``4k + 1``); the defaults are 9 frames of 32 x 32 px,
i.e. 3 latent frames of 4 x 4. Same arguments, same weights, bit for bit.

Pipeline call notes: Wan's pipeline defaults to 81 frames at 480 x 832 whatever the model, so pass
``height``, ``width`` and ``num_frames``; CogVideoX's come from the transformer config (32 px, 9 frames).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)

from diffusion_align.testing.tiny_text import (
    T5_D_MODEL,
    seeded,
    t5_tokenizer,
    tiny_t5_encoder,
    tiny_umt5_encoder,
)

VIDEO_SPATIAL_SCALE = 8  # both video VAEs downsample 8x in space ...
VIDEO_TEMPORAL_SCALE = 4  # ... and 4x in time, keeping the first frame on its own
COGVIDEOX_TEXT_LENGTH = (
    226  # CogVideoX's fixed text length (part of its positional table): keep the pipeline default
)


def _latent_size(sample_size: int, num_frames: int, patch_size: int) -> tuple[int, int]:
    """(latent frames, latent side) of ``num_frames`` frames of ``sample_size`` px, validated for the VAE."""
    if sample_size % (VIDEO_SPATIAL_SCALE * patch_size) != 0:
        raise ValueError(
            f"sample_size={sample_size} px: expected a multiple of {VIDEO_SPATIAL_SCALE * patch_size}"
        )
    if num_frames < 1 or (num_frames - 1) % VIDEO_TEMPORAL_SCALE != 0:
        raise ValueError(f"num_frames={num_frames}: expected 4k + 1 frames (5, 9, 13, ...)")
    return (num_frames - 1) // VIDEO_TEMPORAL_SCALE + 1, sample_size // VIDEO_SPATIAL_SCALE


def build_tiny_wan(path: str | Path, *, seed: int = 0, sample_size: int = 32, num_frames: int = 9) -> Path:
    """Wan 2.1 text-to-video in miniature: 2 DiT blocks (2 heads x 12, patch 1 x 2 x 2), causal 3D VAE, UMT5.

    The VAE has 16 latent channels and Wan's per-channel latent mean/std; the transformer's 3D rotary
    embedding splits each 12-wide head into (frame, row, column) parts. Flow-matching Euler, shift 3.0.

    Args:
        path: Directory to write the pipeline into.
        seed: Seed for all random weights.
        sample_size: Frame side in pixels, a multiple of 16 (VAE 8x times patch 2).
        num_frames: Frames the validation checks against, ``4k + 1``; Wan stores no default, so pass it.
    """
    _latent_size(sample_size, num_frames, patch_size=2)
    transformer = seeded(
        seed + 1,
        WanTransformer3DModel,
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=T5_D_MODEL,
        freq_dim=256,
        ffn_dim=48,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )
    vae = seeded(
        seed,
        AutoencoderKLWan,
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    pipeline = WanPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=tiny_umt5_encoder(seed + 2),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        transformer=transformer,
    )
    pipeline.save_pretrained(path)
    return Path(path)


def build_tiny_cogvideox(
    path: str | Path, *, seed: int = 0, sample_size: int = 32, num_frames: int = 9
) -> Path:
    """CogVideoX-2B in miniature: 2 expert-adaLN blocks (2 heads x 16, patch 2) over text + video tokens.

    3D sinusoidal positions as in the 2B model, 16-channel 3D VAE (scale 1.15258426), T5 text of 226 tokens,
    and the 2B's v-prediction DDIM scheduler (zero-terminal-SNR betas, SNR shift 3.0).

    Args:
        path: Directory to write the pipeline into.
        seed: Seed for all random weights.
        sample_size: Frame side in pixels, a multiple of 16; the pipeline's default height and width.
        num_frames: Default number of frames, ``4k + 1``.
    """
    _, latent_size = _latent_size(sample_size, num_frames, patch_size=2)
    transformer = seeded(
        seed + 1,
        CogVideoXTransformer3DModel,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        time_embed_dim=32,
        text_embed_dim=T5_D_MODEL,
        num_layers=2,
        sample_width=latent_size,
        sample_height=latent_size,
        sample_frames=num_frames,
        patch_size=2,
        temporal_compression_ratio=VIDEO_TEMPORAL_SCALE,
        max_text_seq_length=COGVIDEOX_TEXT_LENGTH,
    )
    vae = seeded(
        seed,
        AutoencoderKLCogVideoX,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=VIDEO_TEMPORAL_SCALE,
        sample_height=sample_size,
        sample_width=sample_size,
    )
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
    )
    pipeline = CogVideoXPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=tiny_t5_encoder(seed + 2),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipeline.save_pretrained(path)
    return Path(path)
