"""Generator fixtures: two tiny image pipelines, a tiny two-member reward ensemble, and one reference run.

Everything session-scoped is read-only: tests that write generate into their own ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from generate.helpers import GENERATION, PROMPTS


@pytest.fixture(scope="session")
def image_specs(tiny_pipeline_path):
    """Two generators with their own sampler settings: tiny SD1.5 (2 steps) and tiny SDXL (1 step), no CFG."""
    from diffusion_align.generate import PipelineSpec

    return [
        PipelineSpec("tiny_sd15", str(tiny_pipeline_path("sd15")),
                     {"num_inference_steps": 2, "guidance_scale": 1.0}, batch_size=4),
        PipelineSpec("tiny_sdxl", str(tiny_pipeline_path("sdxl")),
                     {"num_inference_steps": 1, "guidance_scale": 1.0}, batch_size=3),
    ]


@pytest.fixture(scope="session")
def reward_kwargs(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Constructor kwargs of tiny PickScore and CLIP-score models (weights on disk)."""
    from diffusion_align.testing.tiny_rewards import build_tiny_reward

    return {name: build_tiny_reward(name, tmp_path_factory.mktemp(f"gen_{name}")) for name in ("pickscore", "clip_score")}


@pytest.fixture(scope="session")
def tiny_ensemble(reward_kwargs):
    """PickScore + CLIP score, z-scored per prompt group and averaged (Syn-Pic's mean)."""
    from reward_models import ClipScoreReward, PickScoreReward, RewardEnsemble

    return RewardEnsemble({"pickscore": PickScoreReward(**reward_kwargs["pickscore"]),
                           "clip_score": ClipScoreReward(**reward_kwargs["clip_score"])})


@pytest.fixture(scope="session")
def generated(tmp_path_factory, image_specs, tiny_ensemble) -> Path:
    """The reference run (helpers.GENERATION) written once; returns its out_dir."""
    from diffusion_align.generate import generate_dataset

    out_dir = tmp_path_factory.mktemp("generated") / "synpic"
    summary = generate_dataset(PROMPTS, image_specs, tiny_ensemble, out_dir, **GENERATION)
    assert summary.complete
    return out_dir
