"""The Shapes pipeline's training schedule: the reason it is DDPM's linear one, and what the saved sampler uses."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_align.shapes.train_pipeline import (
    SCHEDULES,
    TrainConfig,
    assemble,
    parse_training_args,
    train_pipeline,
)
from diffusion_align.shapes.world import IMAGE_SIZE


def test_linear_schedule_leaves_less_signal_than_the_noise_channel_mean():
    """At the first sampling step the signal left, sqrt(ā), must be far below the std of a latent channel's mean
    noise (1 / side): otherwise the model reads a flat background's colour from the noisy input instead of the prompt."""
    side = IMAGE_SIZE // 4
    linear = DDPMScheduler(**SCHEDULES["linear"]).alphas_cumprod
    scaled = DDPMScheduler(**SCHEDULES["scaled_linear"]).alphas_cumprod
    assert float(linear[999].sqrt()) < 0.15 / side
    assert float(scaled[999].sqrt()) > 1.0 / side  # SD's schedule: the channel mean carries the background
    assert TrainConfig().schedule == "linear"


def test_saved_sampler_starts_at_the_last_training_timestep():
    pipe = assemble(None, None, None, None, "linear")
    pipe.scheduler.set_timesteps(10)
    assert int(pipe.scheduler.timesteps[0]) == 999
    assert pipe.scheduler.config.beta_schedule == "linear" and not pipe.scheduler.config.clip_sample
    assert pipe.scheduler.config.prediction_type == "v_prediction" == TrainConfig().prediction_type


def test_v_prediction_trains_the_clean_latent_where_sampling_starts():
    """At t = 999 of the linear schedule an ε model's clean-latent estimate amplifies its ε error by
    sqrt(1-ā)/sqrt(ā) ≈ 156 (so the ε loss barely constrains what the first sampling step decides); the v target
    there is the clean latent itself, up to sqrt(ā)·ε."""
    scheduler = DDPMScheduler(**SCHEDULES["linear"], prediction_type="v_prediction")
    alpha_bar = scheduler.alphas_cumprod[999]
    assert float(((1 - alpha_bar) / alpha_bar).sqrt()) > 150.0
    latents, noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)).unbind(0)
    t = torch.tensor([999])
    v = scheduler.get_velocity(latents[None], noise[None], t)[0]
    assert torch.allclose(v, -latents, atol=0.05)  # |v + x0| <= sqrt(ā)|ε| + (1 - sqrt(1-ā))|x0|


def test_unknown_prediction_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--prediction-type 'sample': expected one of"):
        train_pipeline(tmp_path / "out", TrainConfig(prediction_type="sample"))


def test_unknown_schedule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--schedule 'cosine': expected one of"):
        train_pipeline(tmp_path / "out", TrainConfig(schedule="cosine"))


def test_command_line_options_are_the_config_fields():
    out, cfg = parse_training_args(TrainConfig, "train", ["--out", "dir", "--unet-steps", "7", "--prediction-type", "epsilon"])
    assert out == "dir" and cfg == TrainConfig(unet_steps=7, prediction_type="epsilon")
