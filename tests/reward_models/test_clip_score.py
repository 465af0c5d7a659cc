"""ClipScoreReward: torchmetrics' max(100·cos, 0) on tiny OpenAI-style CLIP weights."""

from __future__ import annotations

import pytest
import torch
from contract import HF_CLIP_REFERENCE, RewardModelContract, assert_scores_close


class TestClipScoreContract(RewardModelContract):
    reference_preprocessing = HF_CLIP_REFERENCE

    @pytest.fixture()
    def reward_model(self, clip_score_model):
        return clip_score_model


def test_clip_score_is_100_cosine_clamped_at_zero(clip_score_model, reward_images, reward_prompts):
    cosine = clip_score_model.cosine(reward_images, reward_prompts)
    expected = (100 * cosine).clamp(min=0)
    assert_scores_close(clip_score_model.score(reward_images, reward_prompts), expected, relative=1e-5)


def test_clip_score_head_on_hand_made_embeddings(clip_score_model):
    with torch.no_grad():
        text = clip_score_model.text_embeddings(["a cat", "a dog"])
        aligned = clip_score_model.reward_from_embeddings(text, ["a cat", "a dog"])
        opposite = clip_score_model.reward_from_embeddings(-text, ["a cat", "a dog"])
    torch.testing.assert_close(aligned, torch.full((2,), 100.0), rtol=0, atol=1e-3)
    torch.testing.assert_close(opposite, torch.zeros(2), rtol=0, atol=0)


def test_backbone_is_openai_style_quick_gelu(clip_score_model):
    assert clip_score_model.clip.config.vision_config.hidden_act == "quick_gelu"
    assert clip_score_model.clip.config.vision_config.patch_size == 14
