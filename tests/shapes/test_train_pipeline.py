"""The Shapes pipeline's training schedule: the reason it is DDPM's linear one, and what the saved sampler uses."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_align.shapes.train_pipeline import (
    SCHEDULES,
    TrainConfig,
    assemble,
    continued_record,
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


def test_a_continued_run_carries_the_sources_lineage_forward(tmp_path):
    """``--init-from`` (either world): the source's recorded stages, then this run as the next one; a source without
    a lineage gets one line standing for its own training."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "training_config.json").write_text(json.dumps({"unet_steps_done": 300}))
    first = continued_record(bare, "unet", "+5 steps")
    assert first == {"lineage": [f"0: {bare} (300 unet steps; no lineage recorded)",
                                 f"1: continued from {bare} at its unet step 300: +5 steps"]}
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "training_config.json").write_text(json.dumps({"unet_steps_done": 5, **first}))
    assert continued_record(recorded, "unet", "+7 steps")["lineage"] == [
        *first["lineage"], f"2: continued from {recorded} at its unet step 5: +7 steps"]
    assert continued_record(tmp_path / "none", "unet", "+1 steps")["lineage"] == [
        f"0: {tmp_path / 'none'} (an unrecorded number of unet steps; no lineage recorded)",
        f"1: continued from {tmp_path / 'none'} at its unet step ?: +1 steps"]


def test_a_run_continued_from_a_saved_pipeline_records_its_lineage(tmp_path):
    tiny = dict(vae_steps=1, vae_batch=2, renders_per_prompt=1, unet_steps=1, unet_batch=2, save_every=0)
    source = train_pipeline(tmp_path / "source", TrainConfig(**tiny))
    continued = train_pipeline(tmp_path / "continued", TrainConfig(**tiny, vae_from=str(tmp_path / "source.vae"),
                                                                    init_from=str(source), unet_lr=0.0))
    lineage = json.loads((continued / "training_config.json").read_text())["lineage"]
    assert lineage[0] == f"0: {source} (1 unet steps; no lineage recorded)"
    assert lineage[1] == (f"1: continued from {source} at its unet step 1: +1 steps of 2 images, lr 0 (warmup + "
                          "cosine), v_prediction, linear betas, EMA 0.999")
