"""PickScoreReward on tiny CLIP-H-shaped weights: the contract, the two scales, preference probabilities."""

from __future__ import annotations

import pytest
import torch
from contract import (
    HF_CLIP_REFERENCE,
    REFERENCE_MEAN,
    REFERENCE_STD,
    RewardModelContract,
    assert_scores_close,
)

from reward_models import PickScoreReward
from reward_models.preprocessing import pil_to_pixels


class TestPickScoreContract(RewardModelContract):
    reference_preprocessing = HF_CLIP_REFERENCE

    @pytest.fixture()
    def reward_model(self, pickscore_model):
        return pickscore_model


def test_processor_has_the_laion_clip_h_constants(pickscore_model):
    image_processor = pickscore_model.processor.image_processor
    assert image_processor.size.shortest_edge == 224
    assert (image_processor.crop_size.height, image_processor.crop_size.width) == (224, 224)
    assert int(image_processor.resample) == 3  # PIL bicubic
    assert tuple(image_processor.image_mean) == REFERENCE_MEAN and tuple(image_processor.image_std) == REFERENCE_STD
    assert image_processor.rescale_factor == pytest.approx(1 / 255)
    assert len(pickscore_model.processor.tokenizer) == 49408


def test_score_is_logit_scale_times_cosine(pickscore_model, reward_images, reward_prompts):
    logit_scale = pickscore_model.clip.logit_scale.exp().item()
    assert logit_scale == pytest.approx(100.0, rel=1e-5)  # tiny builder sets log(100), as trained CLIPs have
    cosine = pickscore_model.cosine(reward_images, reward_prompts)
    assert cosine.abs().max() <= 1.0
    assert_scores_close(pickscore_model.score(reward_images, reward_prompts), logit_scale * cosine, relative=1e-5)


def test_cosine_matches_embeddings_computed_by_hand(pickscore_model, reward_images, reward_prompts):
    image = pickscore_model.image_embeddings(reward_images)
    with torch.no_grad():
        text = pickscore_model.text_embeddings(reward_prompts)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))
    expected = (image * text).sum(-1)
    assert_scores_close(pickscore_model.cosine(reward_images, reward_prompts), expected, relative=1e-5)


def test_preference_probs_are_a_softmax_over_candidates(pickscore_model, reward_images, reward_prompts):
    candidates = [reward_images[:2], reward_images[2:]]
    probs = pickscore_model.preference_probs(candidates, reward_prompts[:2])
    assert probs.shape == (2, 2)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(2))
    scores = pickscore_model.score(reward_images, [reward_prompts[0]] * 2 + [reward_prompts[1]] * 2).view(2, 2)
    torch.testing.assert_close(probs, scores.softmax(dim=-1))
    as_tensor = pickscore_model.preference_probs(pil_to_pixels(reward_images).view(2, 2, 3, 240, 300), reward_prompts[:2])
    torch.testing.assert_close(as_tensor, probs)


def test_preference_probs_refuse_ragged_candidates(pickscore_model, reward_images, reward_prompts):
    with pytest.raises(ValueError, match="same number of images"):
        pickscore_model.preference_probs([reward_images[:1], reward_images[1:]], reward_prompts[:2])


def test_long_prompts_are_truncated_to_77_tokens(pickscore_model, reward_images):
    long_prompt = " ".join(["a very detailed painting of a castle"] * 30)
    scores = pickscore_model.score(reward_images[:1], [long_prompt])
    assert torch.isfinite(scores).all()


def test_half_precision_weights_still_return_float32(tiny_reward_kwargs, reward_images, reward_prompts, pickscore_model):
    half = PickScoreReward(**tiny_reward_kwargs("pickscore"), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    scores = half.score(reward_images, reward_prompts)
    assert scores.dtype == torch.float32
    assert_scores_close(scores, pickscore_model.score(reward_images, reward_prompts), relative=0.05)


def test_unknown_dtype_is_refused(tiny_reward_kwargs):
    with pytest.raises(ValueError, match="dtype"):
        PickScoreReward(**tiny_reward_kwargs("pickscore"), dtype="float33")
