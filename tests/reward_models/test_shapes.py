"""ShapesReward: renders of a prompt score about 1, each wrong attribute and noise score clearly lower."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from contract import RewardModelContract
from PIL import Image

from diffusion_align.shapes.render import NO_JITTER, render, render_batch
from diffusion_align.shapes.world import COLORS, parse_prompt, split_prompts
from reward_models import RewardModel, ShapesReward
from reward_models.preprocessing import pil_to_pixels
from reward_models.shapes import COMPONENTS, Ramp

BASE = "a small red circle at the left on a blue background"
# (prompt of the image, component that must fail) for images that get one attribute of BASE wrong.
WRONG_ONE_ATTRIBUTE = {
    "color": ("a small green circle at the left on a blue background", "color"),
    "shape_square": ("a small red square at the left on a blue background", "shape"),
    "shape_triangle": ("a small red triangle at the left on a blue background", "shape"),
    "background": ("a small red circle at the left on a yellow background", "background"),
    "size": ("a large red circle at the left on a blue background", "size"),
    "position": ("a small red circle at the right on a blue background", "position"),
}


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> ``[N, 3, H, W]`` floats in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def shapes_reward() -> ShapesReward:
    return ShapesReward()


@pytest.fixture(scope="module")
def reward_prompts() -> list[str]:
    """Shapes prompts for the contract (overrides the conftest's free-text prompts)."""
    return [BASE, "a yellow square on a purple background", "a large white triangle at the top on a black background",
            "a orange circle in the center on a green background"]


class TestShapesRewardContract(RewardModelContract):
    """The shared checks, with the differentiable path replaced by its documented refusal."""

    has_image_embeddings = False

    @pytest.fixture()
    def reward_model(self, shapes_reward):
        return shapes_reward

    def test_contract_score_tensor_matches_score(self, reward_model, reward_images, reward_prompts):
        with pytest.raises(TypeError, match="no differentiable path.*ShapesProxyReward"):
            reward_model.score_tensor(pil_to_pixels(reward_images), reward_prompts)

    def test_contract_score_tensor_gives_pixel_gradients_only(self, reward_model):
        assert list(reward_model.parameters()) == []

    def test_contract_pixels_outside_unit_range_are_refused(self, reward_model, reward_prompts):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            reward_model.score(torch.full((4, 3, 32, 32), 1.5), reward_prompts)
        with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
            reward_model.score(torch.rand(4, 32, 32), reward_prompts)


@pytest.mark.parametrize("split", ["train", "held_out"])
def test_renders_of_the_prompt_score_near_one(shapes_reward, split):
    prompts = random.Random(0).sample(split_prompts(split), 200)
    pixels = to_pixels(render_batch(prompts, seed=1))
    texts = [p.text for p in prompts]
    scores = shapes_reward.score(pixels, texts)
    assert scores.mean() >= 0.95 and scores.min() >= 0.8
    for name, values in shapes_reward.components(pixels, texts).items():
        assert values.nanmean() >= 0.95, name


@pytest.mark.parametrize("case", sorted(WRONG_ONE_ATTRIBUTE))
def test_each_wrong_attribute_lowers_the_score(shapes_reward, case):
    shown, failing = WRONG_ONE_ATTRIBUTE[case]
    pixels = to_pixels(render_batch([parse_prompt(BASE), parse_prompt(shown)], seed=3))
    right, wrong = shapes_reward.score(pixels, [BASE, BASE])
    components = shapes_reward.components(pixels[1:], [BASE])
    assert right >= 0.95
    assert wrong <= right - 0.15
    assert components[failing] <= 0.1
    assert all(components[name] >= 0.9 for name in COMPONENTS if name != failing)


def test_empty_image_scores_low(shapes_reward):
    background = np.full((1, 64, 64, 3), COLORS["blue"], dtype=np.uint8)
    components = shapes_reward.components(to_pixels(background), [BASE])
    assert components["background"] == 1.0
    assert all(components[name] == 0.0 for name in ("object", "color", "shape", "size", "position"))
    assert shapes_reward.score(to_pixels(background), [BASE]) <= 0.2


def test_noise_scores_low(shapes_reward):
    noise = torch.rand(24, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    prompts = [p.text for p in random.Random(1).sample(split_prompts("train"), 24)]
    scores = shapes_reward.score(noise, prompts)
    assert scores.mean() <= 0.3 and scores.max() <= 0.4


def test_mild_pixel_noise_keeps_renders_near_one(shapes_reward):
    prompts = random.Random(2).sample(split_prompts("held_out"), 48)
    pixels = to_pixels(render_batch(prompts, seed=4))
    noisy = (pixels + 0.05 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert shapes_reward.score(noisy, [p.text for p in prompts]).mean() >= 0.95


def test_no_size_word_is_scored_as_medium(shapes_reward):
    medium = parse_prompt("a blue square on a white background")
    pixels = to_pixels(np.stack([render(medium, np.random.default_rng(0), NO_JITTER)]))
    sizes = {text: shapes_reward.components(pixels, [text])["size"].item() for text in
             ("a blue square on a white background", "a small blue square on a white background",
              "a large blue square on a white background")}
    assert sizes == {"a blue square on a white background": 1.0, "a small blue square on a white background": 0.0,
                     "a large blue square on a white background": 0.0}


def test_components_are_in_unit_range_and_position_applies_only_when_named(shapes_reward):
    prompts = [parse_prompt(BASE), parse_prompt("a yellow square on a purple background")]
    pixels = to_pixels(render_batch(prompts, seed=5))
    texts = [p.text for p in prompts]
    components = shapes_reward.components(pixels, texts)
    assert list(components) == list(COMPONENTS)
    assert not components["position"][0].isnan() and components["position"][1].isnan()
    stacked = torch.stack(list(components.values()), dim=1)
    finite = stacked[~stacked.isnan()]
    assert ((finite >= 0) & (finite <= 1)).all()
    torch.testing.assert_close(shapes_reward.score(pixels, texts), stacked.nanmean(dim=1))


def test_other_image_sizes_are_resized_to_64(shapes_reward):
    prompts = random.Random(3).sample(split_prompts("train"), 8)
    images = [Image.fromarray(image).resize((128, 128), Image.Resampling.NEAREST) for image in render_batch(prompts, 6)]
    scores = shapes_reward.score(images, [p.text for p in prompts])
    torch.testing.assert_close(scores, shapes_reward.score(to_pixels(render_batch(prompts, 6)), [p.text for p in prompts]))


def test_a_prompt_outside_the_grammar_is_an_error_naming_it_and_its_index(shapes_reward):
    pixels = to_pixels(render_batch([parse_prompt(BASE)] * 2, seed=0))
    with pytest.raises(ValueError, match=r"prompts\[1\]: not a Shapes prompt: 'a photo of a cat'"):
        shapes_reward.score(pixels, [BASE, "a photo of a cat"])
    with pytest.raises(ValueError, match=r"prompts\[0\].*both 'red'"):
        shapes_reward.score(pixels[:1], ["a red circle on a red background"])


def test_it_is_a_reward_model_without_weights(shapes_reward):
    assert isinstance(shapes_reward, RewardModel) and shapes_reward.name == "shapes"
    assert shapes_reward.device == torch.device("cpu") and shapes_reward.dtype == torch.float32
    assert not shapes_reward.training


def test_ramp_is_one_up_to_full_and_zero_from_zero():
    ramp = Ramp(full=2.0, zero=4.0)
    torch.testing.assert_close(ramp(torch.tensor([0.0, 2.0, 3.0, 4.0, 9.0])), torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0]))
