"""ShapesProxyReward: the shipped tiny CLIP judges held-out Shapes prompts; loading errors name the file; a short
training run lowers the loss and reloads through the same loader."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from contract import SHAPES_PROXY_REFERENCE, RewardModelContract

from diffusion_align.shapes.proxy import (
    PROXY_MODEL_CONFIG,
    ProxyTrainingConfig,
    evaluate_proxy,
    main,
    one_attribute_changes,
    save_proxy,
    train_proxy,
)
from diffusion_align.shapes.render import render_batch
from diffusion_align.shapes.world import COLORS, parse_prompt, split_prompts
from reward_models import ShapesProxyReward, WeightLoadingError
from reward_models.shapes_proxy import PROXY_CONFIG_FILE, PROXY_WEIGHTS_FILE, SHIPPED_PROXY_DIR

SHIPPED_SIZE_LIMIT = 4 * 2**20  # bytes: the package ships it


def to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def proxy() -> ShapesProxyReward:
    return ShapesProxyReward()


class TestShapesProxyContract(RewardModelContract):
    reference_preprocessing = SHAPES_PROXY_REFERENCE

    @pytest.fixture()
    def reward_model(self, proxy):
        return proxy


def test_shipped_proxy_is_small_and_matches_the_training_config():
    assert sum(path.stat().st_size for path in SHIPPED_PROXY_DIR.iterdir()) < SHIPPED_SIZE_LIMIT
    config = json.loads((SHIPPED_PROXY_DIR / PROXY_CONFIG_FILE).read_text())
    assert config["model_cfg"] == PROXY_MODEL_CONFIG
    assert json.loads((SHIPPED_PROXY_DIR / "training.json").read_text())["held_out"]["accuracy"] >= 0.8


@pytest.mark.parametrize("attribute", ["color", "bg"])
def test_shipped_proxy_prefers_the_right_render_over_a_wrong_colour(proxy, attribute):
    rng = np.random.default_rng(0)
    prompts = random.Random(1).sample(split_prompts("held_out"), 120)
    wrong = []
    for prompt in prompts:
        options = [q for q in one_attribute_changes(prompt) if getattr(q, attribute) != getattr(prompt, attribute)]
        wrong.append(options[rng.integers(len(options))])
    pixels = to_pixels(render_batch(prompts + wrong, seed=2))
    right_scores, wrong_scores = proxy.score(pixels, [p.text for p in prompts] * 2).chunk(2)
    assert (right_scores > wrong_scores).float().mean() >= 0.9


def test_evaluation_figures_on_a_few_held_out_prompts(proxy):
    figures = evaluate_proxy(proxy, random.Random(0).sample(split_prompts("held_out"), 24))
    assert set(figures) == {f"accuracy/{a}" for a in ("color", "shape", "bg", "size", "position")} | {"accuracy", "spearman"}
    assert all(0.0 <= value <= 1.0 for key, value in figures.items() if key.startswith("accuracy"))
    assert figures["accuracy"] >= 0.7 and figures["spearman"] >= 0.4


def test_one_attribute_changes_differ_in_exactly_one_attribute():
    placed, unplaced = parse_prompt("a small red circle at the left on a blue background"), parse_prompt("a red circle on a blue background")
    fields = ("color", "shape", "bg", "size", "position")
    for prompt in (placed, unplaced):
        changes = one_attribute_changes(prompt)
        assert len(set(changes)) == len(changes)
        assert all(sum(getattr(q, f) != getattr(prompt, f) for f in fields) == 1 for q in changes)
    colors = len(COLORS) - 2  # neither the current colour nor the background's
    assert len(one_attribute_changes(placed)) == 2 * colors + 2 + 2 + 4
    assert all(q.position is None for q in one_attribute_changes(unplaced))  # naming a position is not a change


@pytest.mark.parametrize("missing", [PROXY_CONFIG_FILE, PROXY_WEIGHTS_FILE])
def test_a_missing_file_is_named(tmp_path, missing):
    shutil.copytree(SHIPPED_PROXY_DIR, tmp_path / "proxy")
    (tmp_path / "proxy" / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        ShapesProxyReward(tmp_path / "proxy")


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_proxy"):
        ShapesProxyReward(tmp_path / "no_such_proxy")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    shutil.copytree(SHIPPED_PROXY_DIR, tmp_path / "proxy")
    config_path = tmp_path / "proxy" / PROXY_CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["model_cfg"]["embed_dim"] = 48
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightLoadingError, match=r"open_clip_model\.safetensors.*wrong shapes"):
        ShapesProxyReward(tmp_path / "proxy")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[list[float], list[float], object]:
    """Two identically seeded 12-step runs on batches of 16 (one render per prompt); the first one saved."""
    config = ProxyTrainingConfig(steps=12, batch_size=16, renders_per_prompt=1, warmup_steps=1, seed=3)
    model, losses = train_proxy(config, log_every=0)
    _, repeated = train_proxy(config, log_every=0)
    directory = tmp_path_factory.mktemp("proxy")
    save_proxy(model, directory)
    return losses, repeated, directory


def test_tiny_training_lowers_the_loss_and_is_deterministic(tiny_run):
    losses, repeated, _ = tiny_run
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3
    assert losses == repeated


def test_a_trained_model_reloads_through_the_loader(tiny_run):
    _, _, directory = tiny_run
    reloaded = ShapesProxyReward(directory)
    prompts = [parse_prompt("a red circle on a blue background"), parse_prompt("a large green square at the top on a white background")]
    scores = reloaded.score(to_pixels(render_batch(prompts, seed=0)), [p.text for p in prompts])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert reloaded.logit_scale > 0


def test_command_line_trains_and_writes_the_model_directory(tmp_path):
    summary = main(["--out", str(tmp_path), "--steps", "2", "--batch-size", "8", "--renders-per-prompt", "1", "--no-eval"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([PROXY_CONFIG_FILE, PROXY_WEIGHTS_FILE, "training.json"])
    assert summary["config"]["steps"] == 2 and "held_out" not in summary
    assert ShapesProxyReward(tmp_path).score(torch.rand(1, 3, 64, 64), ["a red circle on a blue background"]).shape == (1,)
