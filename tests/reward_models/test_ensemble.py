"""RewardEnsemble: normalisation on hand-made scores, weights, and the contract on tiny real members."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from contract import RewardModelContract, assert_scores_close
from torch import Tensor

from reward_models import RewardEnsemble, RewardModel, normalized_ranks, zscore
from reward_models.base import Images, as_pil_images
from reward_models.ensemble import normalize_scores


class FixedScores(RewardModel):
    """A stand-in member returning hand-made scores (one per image, in order), for normalisation checks."""

    name = "fixed"
    scale = "hand-made numbers for tests"

    def __init__(self, scores: Sequence[float], uses_prompts: bool = True) -> None:
        super().__init__()
        self.fixed = torch.nn.Parameter(torch.tensor(scores, dtype=torch.float32), requires_grad=False)
        self.uses_prompts = uses_prompts

    def score(self, images: Images, prompts: Sequence[str] | None, batch_size: int | None = None) -> Tensor:
        return self.fixed[: len(as_pil_images(images))].clone()

    def score_tensor(self, pixels: Tensor, prompts: Sequence[str] | None) -> Tensor:
        return self.fixed[: pixels.shape[0]] + 0.0 * pixels.sum(dim=(1, 2, 3))


def test_zscore_by_hand():
    # mean 2, population std sqrt(2/3): (x - 2) / 0.81650
    torch.testing.assert_close(zscore(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.224745, 0.0, 1.224745]))
    torch.testing.assert_close(zscore(torch.tensor([5.0, 5.0])), torch.zeros(2))  # no spread, no preference


def test_normalized_ranks_by_hand():
    torch.testing.assert_close(normalized_ranks(torch.tensor([3.0, 1.0, 2.0])), torch.tensor([1.0, 0.0, 0.5]))
    # ties share the average rank: ranks 0.5, 0.5, 2 out of a maximum of 2
    torch.testing.assert_close(normalized_ranks(torch.tensor([1.0, 1.0, 2.0])), torch.tensor([0.25, 0.25, 1.0]))
    torch.testing.assert_close(normalized_ranks(torch.tensor([7.0])), torch.tensor([0.5]))


def test_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="normalize"):
        normalize_scores(torch.zeros(2), "minmax")
    with pytest.raises(ValueError, match="normalize"):
        RewardEnsemble({"a": FixedScores([1.0])}, normalize="minmax")


def test_ensemble_averages_normalised_scores_with_weights(reward_images, reward_prompts):
    # PickScore-like and HPS-like numbers on different scales, opposite orders on the last two images.
    big = FixedScores([20.0, 21.0, 22.0, 23.0])
    small = FixedScores([0.30, 0.25, 0.35, 0.20])
    ensemble = RewardEnsemble({"big": big, "small": small}, weights={"big": 3.0, "small": 1.0}, normalize="rank")
    raw = ensemble.score_all(reward_images, reward_prompts)
    torch.testing.assert_close(raw["big"], big.fixed.data)
    big_ranks, small_ranks = torch.tensor([0, 1, 2, 3]) / 3, torch.tensor([2, 1, 3, 0]) / 3
    expected = (3 * big_ranks + small_ranks) / 4
    torch.testing.assert_close(ensemble.score(reward_images, reward_prompts), expected)
    plain = RewardEnsemble({"big": big, "small": small}, normalize="none")
    torch.testing.assert_close(plain.score(reward_images, reward_prompts), (big.fixed.data + small.fixed.data) / 2)


def test_zscore_ensemble_by_hand(reward_images, reward_prompts):
    ensemble = RewardEnsemble([FixedScores([1.0, 2.0, 3.0, 4.0])], normalize="zscore")
    centred = torch.tensor([-1.5, -0.5, 0.5, 1.5])
    torch.testing.assert_close(ensemble.score(reward_images, reward_prompts), centred / centred.pow(2).mean().sqrt())


def test_weights_and_names_are_checked():
    a, b = FixedScores([1.0]), FixedScores([2.0])
    with pytest.raises(ValueError, match="share a name"):
        RewardEnsemble([a, b])
    with pytest.raises(ValueError, match="expected keys"):
        RewardEnsemble({"a": a, "b": b}, weights={"a": 1.0})
    with pytest.raises(ValueError, match="expected 2 weights"):
        RewardEnsemble({"a": a, "b": b}, weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        RewardEnsemble({"a": a, "b": b}, weights=[1.0, -1.0])
    with pytest.raises(TypeError, match=r"models\['a'\]"):
        RewardEnsemble({"a": "pickscore"})


def test_prompts_are_needed_only_when_a_member_uses_them(reward_images):
    prompt_free = RewardEnsemble({"a": FixedScores([1.0, 2.0, 3.0, 4.0], uses_prompts=False)})
    assert prompt_free.score(reward_images, None).shape == (4,)
    with pytest.raises(ValueError, match="prompts must be given"):
        RewardEnsemble({"a": FixedScores([1.0] * 4)}).score(reward_images, None)


def test_rank_ensemble_has_no_differentiable_path(reward_prompts):
    with pytest.raises(ValueError, match="no gradient"):
        RewardEnsemble({"a": FixedScores([1.0] * 4)}, normalize="rank").score_tensor(torch.rand(4, 3, 8, 8), reward_prompts)


class TestEnsembleContract(RewardModelContract):
    has_image_embeddings = False  # an ensemble has no single embedding space

    @pytest.fixture()
    def reward_model(self, pickscore_model, hps_model):
        return RewardEnsemble([pickscore_model, hps_model], normalize="zscore")  # a transformers and an open_clip member

    def test_contract_preprocessing_equals_reference(self, reward_model, pickscore_model, hps_model):
        """An ensemble has no preprocessing of its own: each member keeps its own reference constants."""
        from contract import HF_CLIP_REFERENCE, OPEN_CLIP_REFERENCE

        assert pickscore_model.preprocessing == HF_CLIP_REFERENCE
        assert hps_model.preprocessing == OPEN_CLIP_REFERENCE
        assert list(reward_model.members.values()) == [pickscore_model, hps_model]


def test_tiny_ensemble_score_is_the_mean_member_zscore(pickscore_model, aesthetic_model, reward_images, reward_prompts):
    ensemble = RewardEnsemble({"pick": pickscore_model, "aesthetic": aesthetic_model})
    assert ensemble.uses_prompts
    raw = ensemble.score_all(reward_images, reward_prompts)
    assert set(raw) == {"pick", "aesthetic"}
    assert_scores_close(raw["pick"], pickscore_model.score(reward_images, reward_prompts), relative=1e-6)
    expected = (zscore(raw["pick"]) + zscore(raw["aesthetic"])) / 2
    torch.testing.assert_close(ensemble.score(reward_images, reward_prompts), expected)
