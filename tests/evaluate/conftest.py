"""Shared fixtures for evaluation tests: a tiny SD1.5 pipeline with a LoRA that changes its images, tiny reward
models, and one small evaluation (base vs aligned, 3 prompts x 2 samples) run once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

PROMPTS = ("a red circle on a white background", "a blue square on a black background", "a green triangle")


@pytest.fixture(scope="session")
def evaluation_prompts() -> tuple[str, ...]:
    """The prompts of the ``evaluation`` fixture, in order."""
    return PROMPTS


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_sd15_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA for the tiny SD1.5 pipeline, saved as `diffalign train` saves it, with non-zero (random) updates."""
    from diffusers import StableDiffusionPipeline

    from diffusion_align.adapters.lora import add_lora, save_lora

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd15_path)
    add_lora(pipeline.unet, rank=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipeline.unet.named_parameters():
            if "lora_B" in name:  # peft's gaussian init leaves B at zero: a no-op LoRA would tell nothing
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    directory = tmp_path_factory.mktemp("tiny_lora")
    save_lora(pipeline, pipeline.unet, "unet_lora_layers", directory)
    return directory


@pytest.fixture(scope="session")
def tiny_reward_kwargs(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_reward_kwargs(name)``: constructor kwargs of a tiny reward model, built once per session and name."""
    from diffusion_align.testing import build_tiny_reward

    built: dict[str, dict[str, str]] = {}

    def get(name: str) -> dict[str, str]:
        if name not in built:
            built[name] = build_tiny_reward(name, tmp_path_factory.mktemp(f"tiny_reward_{name}"))
        return built[name]

    return get


@pytest.fixture(scope="session")
def clip_reward(tiny_reward_kwargs):
    from reward_models import ClipScoreReward

    return ClipScoreReward(**tiny_reward_kwargs("clip_score"))


@pytest.fixture(scope="session")
def ensemble_reward(clip_reward, tiny_reward_kwargs):
    from reward_models import AestheticReward, RewardEnsemble

    return RewardEnsemble({"clip": clip_reward, "aesthetic": AestheticReward(**tiny_reward_kwargs("aesthetic"))})


@pytest.fixture(scope="session")
def evaluation(tiny_sd15_path, tiny_lora_dir, clip_reward, ensemble_reward, tmp_path_factory):
    """``(results, out_dir)`` of base vs aligned (tiny SD1.5 + LoRA), 3 prompts x 2 samples, 2 steps, two rewards."""
    from diffusion_align.evaluate import PromptSet, SamplingSettings, StatsSettings, evaluate_models

    out_dir = tmp_path_factory.mktemp("evaluation")
    prompts = PromptSet("tiny", PROMPTS, ("circle", "square", "triangle"))
    results = evaluate_models(
        {"base": str(tiny_sd15_path), "aligned": {"pipeline": str(tiny_sd15_path), "lora": str(tiny_lora_dir)}},
        prompts,
        {"clip": clip_reward, "ens": ensemble_reward},
        out_dir,
        sampling=SamplingSettings(samples_per_prompt=2, num_inference_steps=2, batch_size=6),
        stats=StatsSettings(n_resamples=200),
    )
    return results, out_dir
