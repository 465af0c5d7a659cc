"""reward_models.video: per-frame aggregation and temporal consistency on hand-made numbers."""

from __future__ import annotations

import math

import pytest
import torch

from reward_models.preprocessing import pil_to_pixels
from reward_models.video import aggregate_frame_scores, flatten_groups, temporal_consistency


def test_mean_and_min_over_frames_by_hand():
    per_frame = torch.tensor([[1.0, 2.0, 6.0], [4.0, -1.0, 0.0]])
    torch.testing.assert_close(aggregate_frame_scores(per_frame, "mean"), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(aggregate_frame_scores(per_frame, "min"), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="'mean' or 'min'"):
        aggregate_frame_scores(per_frame, "median")


def test_temporal_consistency_is_mean_consecutive_cosine():
    # video 0: e0 = e1 (cos 1), e1 ⟂ e2 (cos 0) -> 0.5; video 1: 45° steps, any norm -> cos(45°) = 0.7071
    embeddings = torch.tensor(
        [
            [[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]],
            [[1.0, 0.0], [1.0, 1.0], [0.0, 5.0]],
        ]
    )
    torch.testing.assert_close(temporal_consistency(embeddings), torch.tensor([0.5, math.cos(math.pi / 4)]))
    with pytest.raises(ValueError, match="F >= 2"):
        temporal_consistency(torch.ones(2, 1, 4))


def test_flatten_groups_is_group_major(reward_images):
    images, n_groups, group_size = flatten_groups([reward_images[:2], reward_images[2:]])
    assert (n_groups, group_size) == (2, 2) and images == reward_images
    pixels = pil_to_pixels(reward_images).view(2, 2, 3, 240, 300)
    flat, n_groups, group_size = flatten_groups(pixels)
    assert flat.shape == (4, 3, 240, 300) and (n_groups, group_size) == (2, 2)
    torch.testing.assert_close(flat[1], pixels[0, 1])
    with pytest.raises(ValueError, match=r"\[N, K, 3, H, W\]"):
        flatten_groups(pixels[0])


def test_score_video_accepts_pil_frame_lists(pickscore_model, reward_images, reward_prompts):
    from_lists = pickscore_model.score_video([reward_images[:2], reward_images[2:]], reward_prompts[:2])
    as_tensor = pil_to_pixels(reward_images).view(2, 2, 3, 240, 300)
    torch.testing.assert_close(pickscore_model.score_video(as_tensor, reward_prompts[:2]).per_frame, from_lists.per_frame)


def test_score_video_checks_aggregate_and_prompts(pickscore_model, reward_images, reward_prompts):
    frames = [reward_images[:2], reward_images[2:]]
    with pytest.raises(ValueError, match="aggregate"):
        pickscore_model.score_video(frames, reward_prompts[:2], aggregate="max")
    with pytest.raises(ValueError, match="one prompt per image"):
        pickscore_model.score_video(frames, reward_prompts[:3])


def test_temporal_consistency_ignores_prompts_and_uses_embeddings(aesthetic_model, reward_images):
    result = aesthetic_model.score_video([reward_images[:3]], None, aggregate="temporal_consistency")
    embeddings = aesthetic_model.image_embeddings(reward_images[:3])
    expected = (embeddings[:-1] * embeddings[1:]).sum(-1).mean()
    torch.testing.assert_close(result.scores, expected[None], rtol=0, atol=1e-5)
    assert result.per_frame.shape == (1, 3)
