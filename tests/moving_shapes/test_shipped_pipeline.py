"""The shipped Moving Shapes pipeline: a stock diffusers ``WanPipeline`` directory that samples prompt-coloured clips.

Its samples have the prompt's background and mostly its colour and direction of motion, seldom its shape (README,
"The Moving Shapes world"). These tests pin what it does: load, architecture, and those three attributes against the
chance level of a render of a random prompt (background 0.10, colour 0.10 under the exact reward; direction 0.24 for
a render of another held-out prompt).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import UMT5EncoderModel

from diffusion_align.moving_shapes import FRAME_SIZE, FRAMES, split_prompts
from diffusion_align.moving_shapes.assets import shipped_pipeline_path
from diffusion_align.moving_shapes.train_pipeline import FLOW_SHIFT
from reward_models import MovingShapesReward


@pytest.fixture(scope="module")
def pipe() -> WanPipeline:
    pipe = WanPipeline.from_pretrained(str(shipped_pipeline_path()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_loads_with_stock_diffusers_as_the_wan_architecture(pipe):
    assert isinstance(pipe.vae, AutoencoderKLWan) and isinstance(pipe.transformer, WanTransformer3DModel)
    assert isinstance(pipe.text_encoder, UMT5EncoderModel)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == FLOW_SHIFT
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == (2, 2)
    assert tuple(pipe.transformer.config.patch_size) == (1, 2, 2)
    total = sum(p.numel() for module in (pipe.vae, pipe.text_encoder, pipe.transformer) for p in module.parameters())
    assert total < 5_000_000  # "a few MB" in the repository


def test_training_config_records_how_it_was_trained():
    config = json.loads((shipped_pipeline_path() / "training_config.json").read_text())
    assert config["transformer_steps_done"] == 4000 and len(config["lineage"]) == 5
    assert config["lineage"][4].startswith("4: continued from stage 3")
    assert config["patch"] == 2 and config["autocast"] == "bf16"


def test_held_out_samples_have_the_prompts_background_and_mostly_its_colour_and_direction(pipe):
    prompts = split_prompts("held_out")
    prompts = prompts[:: len(prompts) // 12][:12]
    frames = pipe([p.text for p in prompts], height=FRAME_SIZE, width=FRAME_SIZE, num_frames=FRAMES,
                  num_inference_steps=10, guidance_scale=3.0, output_type="np",
                  generator=torch.Generator().manual_seed(0)).frames
    clips = (np.asarray(frames) * 255).round().clip(0, 255).astype(np.uint8)
    assert clips.shape == (12, FRAMES, FRAME_SIZE, FRAME_SIZE, 3)
    scores = MovingShapesReward().components(clips, [p.text for p in prompts])
    assert scores["background"].mean() > 0.9  # 1.00 on 162 held-out prompts
    assert scores["color"].mean() > 0.3  # 0.89 on 162; chance 0.10
    assert np.nanmean(np.asarray(scores["direction"], dtype=float)) > 0.35  # 0.57 on these 12, 0.69 on 162
