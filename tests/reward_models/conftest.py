"""Reward-model fixtures: tiny weights built once per session, models loaded through the real loading code.

Session-scoped models are frozen (``requires_grad=False``, eval mode); tests must not modify them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from contract import make_images
from PIL import Image

TinyRewardFactory = Callable[..., dict[str, str]]


@pytest.fixture(scope="session")
def tiny_reward_kwargs(tmp_path_factory: pytest.TempPathFactory) -> TinyRewardFactory:
    """``tiny_reward_kwargs(name, **builder_kwargs)``: constructor kwargs of a tiny reward, built once per arguments."""
    from diffusion_align.testing.tiny_rewards import build_tiny_reward

    built: dict[tuple, dict[str, str]] = {}

    def get(name: str, **builder_kwargs) -> dict[str, str]:
        key = (name, tuple(sorted(builder_kwargs.items())))
        if key not in built:
            built[key] = build_tiny_reward(name, tmp_path_factory.mktemp(f"tiny_{name}"), **builder_kwargs)
        return built[key]

    return get


@pytest.fixture(scope="session")
def pickscore_model(tiny_reward_kwargs: TinyRewardFactory):
    from reward_models import PickScoreReward

    return PickScoreReward(**tiny_reward_kwargs("pickscore"))


@pytest.fixture(scope="session")
def hps_model(tiny_reward_kwargs: TinyRewardFactory):
    from reward_models import HPSReward

    return HPSReward(**tiny_reward_kwargs("hps"))


@pytest.fixture(scope="session")
def clip_score_model(tiny_reward_kwargs: TinyRewardFactory):
    from reward_models import ClipScoreReward

    return ClipScoreReward(**tiny_reward_kwargs("clip_score"))


@pytest.fixture(scope="session")
def aesthetic_model(tiny_reward_kwargs: TinyRewardFactory):
    from reward_models import AestheticReward

    return AestheticReward(**tiny_reward_kwargs("aesthetic"))


@pytest.fixture(scope="session")
def reward_images() -> list[Image.Image]:
    """Four 240×300 (H×W) RGB images: not square, so resize and center crop both act."""
    return make_images(4)


@pytest.fixture(scope="session")
def reward_prompts() -> list[str]:
    return ["a red cube on a table", "a photo of an astronaut riding a horse", "two cats", "a watercolour of a lighthouse at dusk"]


@pytest.fixture()
def image_folder(tmp_path: Path, reward_images: list[Image.Image]) -> Path:
    """A folder of the four sample images as PNG files ``img_0.png`` ... ``img_3.png`` (no prompt sidecar)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(reward_images):
        image.save(folder / f"img_{i}.png")
    return folder
