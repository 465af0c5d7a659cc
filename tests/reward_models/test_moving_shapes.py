"""MovingShapesReward: renders of a prompt score about 1; wrong attributes, motion and segments show."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from contract import RewardModelContract
from PIL import Image

from diffusion_align.generate.dense import segment_frame_ranges
from diffusion_align.moving_shapes.render import NO_CLIP_JITTER, ClipJitter, render_clip, render_clips
from diffusion_align.moving_shapes.world import FRAMES, HALF_EXTENT, SPEED, parse_prompt, split_prompts
from diffusion_align.shapes.world import COLORS
from reward_models import RewardModel
from reward_models.moving_shapes import (
    COMPONENTS,
    FRAME_COMPONENTS,
    SIZE_RAMP,
    SPEED_RAMP,
    MovingShapesReward,
    fit_line,
)
from reward_models.preprocessing import pil_to_pixels

BASE = "a small red circle moving right on a blue background"
# (prompt of the clip, component that must fail) for clips that get one attribute of BASE wrong.
WRONG_ONE_ATTRIBUTE = {
    "color": ("a small green circle moving right on a blue background", "color"),
    "shape_square": ("a small red square moving right on a blue background", "shape"),
    "shape_triangle": ("a small red triangle moving right on a blue background", "shape"),
    "background": ("a small red circle moving right on a yellow background", "background"),
    "size_medium": ("a red circle moving right on a blue background", "size"),
    "size_large": ("a large red circle moving right on a blue background", "size"),
    "direction_reversed": ("a small red circle moving left on a blue background", "direction"),
    "direction_across": ("a small red circle moving up on a blue background", "direction"),
    "speed_slowly": ("a small red circle moving right slowly on a blue background", "speed"),
    "speed_quickly": ("a small red circle moving right quickly on a blue background", "speed"),
}
RANGES = segment_frame_ranges(FRAMES, 3, 4)  # [(0, 1), (1, 5), (5, 9)]


def to_pixels(clips: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, F, H, W, 3]`` -> ``[N, F, 3, H, W]`` floats in [0, 1]."""
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 255.0


def nominal_clip(text: str) -> np.ndarray:
    """The unjittered clip of ``text``: ``uint8 [F, 32, 32, 3]``, trajectory centred in the frame."""
    return render_clip(parse_prompt(text), np.random.default_rng(0), NO_CLIP_JITTER)


@pytest.fixture(scope="module")
def reward() -> MovingShapesReward:
    return MovingShapesReward()


@pytest.fixture(scope="module")
def reward_prompts() -> list[str]:
    """Moving Shapes prompts for the contract (overrides the conftest's free-text prompts)."""
    return [BASE, "a yellow square moving up on a purple background",
            "a large white triangle moving down quickly on a black background",
            "a orange circle moving left slowly on a green background"]


class TestMovingShapesRewardContract(RewardModelContract):
    """The shared checks on single frames; the video path is the clip reward; no differentiable path."""

    has_image_embeddings = False

    @pytest.fixture()
    def reward_model(self, reward):
        return reward

    def test_contract_score_tensor_matches_score(self, reward_model, reward_images, reward_prompts):
        with pytest.raises(TypeError, match="no differentiable path.*score_clips"):
            reward_model.score_tensor(pil_to_pixels(reward_images), reward_prompts)

    def test_contract_score_tensor_gives_pixel_gradients_only(self, reward_model):
        assert list(reward_model.parameters()) == []

    def test_contract_pixels_outside_unit_range_are_refused(self, reward_model, reward_prompts):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            reward_model.score(torch.full((4, 3, 32, 32), 1.5), reward_prompts)
        with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
            reward_model.score(torch.rand(4, 32, 32), reward_prompts)

    def test_contract_video_scores_every_frame_with_its_prompt(self, reward_model, reward_prompts):
        prompts = reward_prompts[:2]
        pixels = to_pixels(render_clips([parse_prompt(p) for p in prompts], seed=0))
        result = reward_model.score_video(pixels, prompts)
        torch.testing.assert_close(result.scores, reward_model.score_clips(pixels, prompts))
        frame_prompts = [p for p in prompts for _ in range(FRAMES)]
        per_frame = reward_model.score(pixels.flatten(0, 1), frame_prompts).view(2, -1)
        torch.testing.assert_close(result.per_frame, per_frame)
        with pytest.raises(ValueError, match="aggregate 'min'.*only 'mean'"):
            reward_model.score_video(pixels, prompts, aggregate="min")

    def test_contract_temporal_consistency(self, reward_model, reward_prompts):
        pixels = to_pixels(render_clips([parse_prompt(reward_prompts[0])], seed=0))
        with pytest.raises(ValueError, match="aggregate 'temporal_consistency'"):
            reward_model.score_video(pixels, reward_prompts[:1], aggregate="temporal_consistency")


@pytest.mark.parametrize("split", ["train", "held_out"])
def test_renders_of_the_prompt_score_near_one(reward, split):
    prompts = random.Random(0).sample(split_prompts(split), 150)
    clips, texts = render_clips(prompts, seed=1), [p.text for p in prompts]
    scores = reward.score_clips(clips, texts)
    assert scores.mean() >= 0.99 and scores.min() >= 0.9
    for name, values in reward.components(clips, texts).items():
        assert values.mean() >= 0.98, name


@pytest.mark.parametrize("case", sorted(WRONG_ONE_ATTRIBUTE))
def test_each_wrong_attribute_lowers_exactly_its_component(reward, case):
    shown, failing = WRONG_ONE_ATTRIBUTE[case]
    clips = render_clips([parse_prompt(BASE)] * 3 + [parse_prompt(shown)] * 3, seed=3)
    scores = reward.score_clips(clips, [BASE] * 6)
    components = reward.components(clips[3:], [BASE] * 3)
    assert (scores[:3] >= 0.98).all() and (scores[3:] <= 0.9).all()
    assert (components[failing] <= 0.05).all()
    assert all((components[name] >= 0.9).all() for name in COMPONENTS if name != failing)


def test_a_static_object_fails_direction_and_speed_only(reward):
    clips = render_clips([parse_prompt(BASE)] * 3, seed=4)
    static = np.repeat(clips[:, :1], FRAMES, axis=1)
    components = reward.components(static, [BASE] * 3)
    assert (components["direction"] == 0).all() and (components["speed"] == 0).all()
    assert all((components[name] >= 0.95).all() for name in COMPONENTS if name not in ("direction", "speed"))


def test_an_object_that_changes_colour_mid_way_loses_consistency(reward):
    red, green = nominal_clip(BASE), nominal_clip(BASE.replace("red", "green"))  # same geometry
    changing = np.concatenate([red[:5], green[5:]])[None]
    components = reward.components(changing, [BASE])
    assert components["consistency"] <= 0.05
    assert components["color"] == pytest.approx(5 / 9, abs=0.02)  # 5 of the 9 frames red
    assert components["direction"] >= 0.95 and components["speed"] >= 0.95


def test_an_object_that_jumps_mid_way_loses_consistency(reward):
    clip = nominal_clip(BASE)
    jumping = np.concatenate([clip[:5], np.roll(clip[5:], 5, axis=1)])[None]  # 5 px down from frame 5 on
    components = reward.components(jumping, [BASE])
    assert components["consistency"] <= 0.05
    assert all(components[name] >= 0.95 for name in FRAME_COMPONENTS)


def test_shuffled_frames_lose_consistency_and_the_score_drops(reward):
    clips = render_clips([parse_prompt(BASE)] * 3, seed=5)
    shuffled = clips[:, [4, 0, 7, 2, 8, 1, 5, 3, 6]]
    components = reward.components(shuffled, [BASE] * 3)
    assert (components["consistency"] <= 0.05).all() and (components["direction"] <= 0.8).all()
    assert (reward.score_clips(shuffled, [BASE] * 3) <= reward.score_clips(clips, [BASE] * 3) - 0.2).all()


def test_an_empty_clip_scores_only_its_background(reward):
    empty = np.broadcast_to(np.array(COLORS["blue"], dtype=np.uint8), (1, FRAMES, 32, 32, 3)).copy()
    components = reward.components(empty, [BASE])
    assert components["background"] == 1.0
    assert all(components[name] == 0.0 for name in COMPONENTS if name != "background")
    assert reward.score_clips(empty, [BASE]) == pytest.approx(1 / 8)


def test_segments_score_high_where_right_and_low_where_wrong(reward):
    right = nominal_clip(BASE)
    wrong_colour = np.concatenate([right[:5], nominal_clip(BASE.replace("red", "green"))[5:]])
    reversed_motion = np.concatenate([right[:5], nominal_clip(BASE.replace("right", "left"))[5:]])
    clips = np.stack([right, wrong_colour, reversed_motion])
    scores = reward.segment_scores(clips, [BASE] * 3, RANGES)
    components = reward.segment_components(clips, [BASE] * 3, RANGES)
    assert scores.shape == (3, 3) and (scores[:, :2] >= 0.98).all() and scores[0, 2] >= 0.98
    assert (scores[1:, 2] <= 0.9).all()
    assert components["color"][1].tolist() == [1.0, 1.0, 0.0]
    assert components["direction"][2, 1:].tolist() == [1.0, 0.0]


def test_a_one_frame_segment_has_no_motion_and_scores_its_frame_components(reward):
    clips = render_clips([parse_prompt(BASE)], seed=6)
    components = reward.segment_components(clips, [BASE], [(0, 1), (2, 3)])
    assert all(components[name].isnan().all() for name in ("direction", "speed", "consistency"))
    frame_mean = torch.stack([components[name] for name in FRAME_COMPONENTS]).mean(dim=0)
    torch.testing.assert_close(reward.segment_scores(clips, [BASE], [(0, 1), (2, 3)]), frame_mean)
    frames = [Image.fromarray(clips[0, 0]), Image.fromarray(clips[0, 2])]
    torch.testing.assert_close(frame_mean[0], reward.score(frames, [BASE] * 2))


def test_segment_ranges_outside_the_clip_are_refused_naming_them(reward):
    clips = render_clips([parse_prompt(BASE)], seed=0)
    with pytest.raises(ValueError, match=r"ranges\[1\] = \(5, 10\): expected \[start, stop\).*<= 9"):
        reward.segment_scores(clips, [BASE], [(0, 5), (5, 10)])
    with pytest.raises(ValueError, match="at least one"):
        reward.segment_scores(clips, [BASE], [])


def test_clips_of_five_frames_score_near_one(reward):
    prompts = random.Random(1).sample(split_prompts("train"), 24)
    clips = render_clips(prompts, seed=7, frames=5)
    assert reward.score_clips(clips, [p.text for p in prompts]).min() >= 0.95


def test_every_clip_format_gives_the_same_scores(reward):
    prompts = random.Random(2).sample(split_prompts("held_out"), 3)
    clips, texts = render_clips(prompts, seed=8), [p.text for p in prompts]
    expected = reward.score_clips(clips, texts)
    torch.testing.assert_close(reward.score_clips(to_pixels(clips), texts), expected, rtol=0, atol=0)
    as_pil = [[Image.fromarray(frame) for frame in clip] for clip in clips]
    torch.testing.assert_close(reward.score_clips(as_pil, texts), expected, rtol=0, atol=0)
    doubled = clips.repeat(2, axis=2).repeat(2, axis=3)  # 64 x 64 frames are box-filtered back to 32 x 32
    torch.testing.assert_close(reward.score_clips(doubled, texts), expected, rtol=0, atol=0)
    torch.testing.assert_close(reward.score_clips(clips, texts, batch_size=1), expected)


def test_malformed_clips_and_prompts_are_errors_naming_the_culprit(reward):
    clips = render_clips([parse_prompt(BASE)] * 2, seed=0)
    with pytest.raises(ValueError, match=r"expected a float tensor \[N, F, 3, H, W\]"):
        reward.score_clips(to_pixels(clips)[0], [BASE])
    with pytest.raises(ValueError, match=r"expected a uint8 array \[N, F, H, W, 3\], got float32"):
        reward.score_clips(clips.astype(np.float32), [BASE] * 2)
    ragged = [[Image.fromarray(f) for f in clips[0]], [Image.fromarray(f) for f in clips[1][:8]]]
    with pytest.raises(ValueError, match=r"same non-zero number of PIL frames, got lengths \[8, 9\]"):
        reward.score_clips(ragged, [BASE] * 2)
    with pytest.raises(ValueError, match=r"prompts\[1\]: not a Moving Shapes prompt: 'a red circle on a"):
        reward.score_clips(clips, [BASE, "a red circle on a blue background"])
    with pytest.raises(ValueError, match="one prompt per image"):
        reward.score_clips(clips, [BASE])


def test_mild_pixel_noise_keeps_renders_near_one(reward):
    prompts = random.Random(3).sample(split_prompts("train"), 48)
    clips = render_clips(prompts, seed=9)
    noise = np.random.default_rng(0).normal(0.0, 0.03 * 255, clips.shape)
    noisy = np.clip(np.rint(clips + noise), 0, 255).astype(np.uint8)
    assert reward.score_clips(noisy, [p.text for p in prompts]).mean() >= 0.97


def test_fit_line_matches_hand_computed_numbers():
    # x = 0, 1, 2, 3, 5 over t = 0..4: mean t 2, mean x 2.2, sum (t - 2)² = 10, sum (t - 2)(x - 2.2) = 12,
    # so 1.2 px/frame; the line 2.2 + 1.2 (t - 2) = -0.2, 1.0, 2.2, 3.4, 4.6 misses the points by 0.2, 0,
    # -0.2, -0.4, 0.4: RMS sqrt(0.4 / 5)
    center = torch.tensor([[[0.0, 7.0], [1.0, 7.0], [2.0, 7.0], [3.0, 7.0], [5.0, 7.0]]])
    fit = fit_line(center, torch.ones(1, 5))
    torch.testing.assert_close(fit.velocity, torch.tensor([[1.2, 0.0]]))
    torch.testing.assert_close(fit.residual, torch.tensor([0.08**0.5]))
    # weight 0 (or a NaN centre) drops the last frame: the rest lie on x = t exactly
    dropped = fit_line(center, torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(dropped.velocity, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(dropped.residual, torch.tensor([0.0]))
    nan_last = center.clone()
    nan_last[0, 4] = float("nan")
    torch.testing.assert_close(fit_line(nan_last, torch.ones(1, 5)).velocity, torch.tensor([[1.0, 0.0]]))
    single = fit_line(center, torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]))
    assert not single.defined.item() and single.velocity.isnan().all()


def test_tolerances_separate_neighbouring_sizes_and_speeds_under_the_render_jitter():
    jitter = ClipJitter()
    for values, ramp, spread in ((HALF_EXTENT, SIZE_RAMP, jitter.size), (SPEED, SPEED_RAMP, jitter.speed)):
        ordered = sorted(values.values())
        assert ramp.full > np.log(1 + spread) + 0.05  # own renders: jitter plus a measuring margin
        for low, high in zip(ordered, ordered[1:]):  # the closest renders of neighbours, against each other
            assert np.log(high * (1 - spread) / low) > ramp.zero + 0.03
            assert np.log(high / (low * (1 + spread))) > ramp.zero + 0.03


def test_it_is_a_cpu_reward_model_without_weights(reward):
    assert isinstance(reward, RewardModel) and reward.name == "moving_shapes"
    assert reward.device == torch.device("cpu") and reward.dtype == torch.float32 and not reward.training
    with pytest.raises(ValueError, match="device must be 'cpu', got 'cuda'"):
        MovingShapesReward(device="cuda")
