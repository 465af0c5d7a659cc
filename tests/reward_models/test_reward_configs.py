"""conf/reward/*.yaml: every file composes into conf/score.yaml and instantiates on tiny weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from diffusion_align.config import build
from reward_models import (
    AestheticReward,
    ClipScoreReward,
    HPSReward,
    MovingShapesFrameProxyReward,
    MovingShapesReward,
    PickScoreReward,
    RewardEnsemble,
    RewardModel,
    ShapesProxyReward,
    ShapesReward,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
REWARD_CONFIGS = sorted(path.stem for path in (CONF_DIR / "reward").glob("*.yaml"))
EXPECTED_CLASSES = {
    "pickscore": PickScoreReward,
    "hps_v2": HPSReward,
    "hps_v2_1": HPSReward,
    "clip_score": ClipScoreReward,
    "aesthetic": AestheticReward,
    "ensemble_default": RewardEnsemble,
    "shapes": ShapesReward,
    "shapes_proxy": ShapesProxyReward,
    "moving_shapes": MovingShapesReward,
    "moving_shapes_proxy": MovingShapesFrameProxyReward,
}
# no weights / the shipped Shapes proxy (a few MB) loads as it is
NO_TINY_WEIGHTS = {"shapes", "shapes_proxy", "moving_shapes", "moving_shapes_proxy"}
# Prompts of the Shapes grammar, which every reward here accepts (the Shapes rewards accept nothing else) but the
# Moving Shapes reward, which takes its own grammar.
SHAPES_PROMPTS = ["a red circle on a blue background", "a small green square at the left on a white background"]
MOVING_PROMPTS = ["a red circle moving left on a blue background", "a small green square moving up quickly on a white background"]


def tiny_overrides(name: str, prefix: str, tiny_reward_kwargs) -> list[str]:
    """Overrides pointing config ``name`` (at key ``prefix``) at tiny weights."""
    if name == "ensemble_default":
        return [
            override
            for member in ("pickscore", "hps_v2_1", "clip_score")
            for override in tiny_overrides(member, f"{prefix}.models.{member}", tiny_reward_kwargs)
        ]
    if name in NO_TINY_WEIGHTS:
        return []
    builder = {"hps_v2": "hps", "hps_v2_1": "hps"}.get(name, name)
    return [f"{prefix}.{key}={value}" for key, value in tiny_reward_kwargs(builder).items()]


def test_the_reward_folder_holds_the_documented_options():
    assert REWARD_CONFIGS == sorted(EXPECTED_CLASSES)


@pytest.mark.parametrize("name", REWARD_CONFIGS)
def test_reward_config_instantiates_on_tiny_weights(name, tiny_reward_kwargs, reward_images):
    overrides = [f"reward={name}", "input=unused", "output=unused.csv", *tiny_overrides(name, "reward", tiny_reward_kwargs)]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="score", overrides=overrides)
    model = build(cfg.reward)
    assert type(model) is EXPECTED_CLASSES[name] and isinstance(model, RewardModel)
    prompts = MOVING_PROMPTS if name.startswith("moving_shapes") else SHAPES_PROMPTS
    assert model.score(reward_images[:2], prompts).shape == (2,)


@pytest.mark.parametrize("name", REWARD_CONFIGS)
def test_reward_config_documents_its_scale(name):
    text = (CONF_DIR / "reward" / f"{name}.yaml").read_text()
    assert "Scale:" in text.split("_target_")[0], f"conf/reward/{name}.yaml: the header comment must state the scale"
