"""AestheticReward: the LAION predictor's exact MLP layout over normalised CLIP image embeddings."""

from __future__ import annotations

import pytest
import torch
from contract import HF_CLIP_REFERENCE, RewardModelContract, assert_scores_close

from reward_models import AestheticMLP, AestheticReward, WeightLoadingError

# improved-aesthetic-predictor's nn.Sequential: Linear, Dropout(0.2), Linear, Dropout(0.2), Linear, Dropout(0.1),
# Linear, Linear: the published state dict has exactly these keys and shapes.
PUBLISHED_KEYS_AND_SHAPES = {
    "layers.0.weight": (1024, 768),
    "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024),
    "layers.2.bias": (128,),
    "layers.4.weight": (64, 128),
    "layers.4.bias": (64,),
    "layers.6.weight": (16, 64),
    "layers.6.bias": (16,),
    "layers.7.weight": (1, 16),
    "layers.7.bias": (1,),
}


class TestAestheticContract(RewardModelContract):
    reference_preprocessing = HF_CLIP_REFERENCE

    @pytest.fixture()
    def reward_model(self, aesthetic_model):
        return aesthetic_model


def test_mlp_state_dict_matches_the_published_layout():
    mlp = AestheticMLP()
    assert {key: tuple(value.shape) for key, value in mlp.state_dict().items()} == PUBLISHED_KEYS_AND_SHAPES
    dropouts = [(i, layer.p) for i, layer in enumerate(mlp.layers) if isinstance(layer, torch.nn.Dropout)]
    assert dropouts == [(1, 0.2), (3, 0.2), (5, 0.1)]


def test_prompts_are_optional_and_ignored(aesthetic_model, reward_images, reward_prompts):
    without = aesthetic_model.score(reward_images, None)
    torch.testing.assert_close(aesthetic_model.score(reward_images, reward_prompts), without, rtol=0, atol=0)
    torch.testing.assert_close(aesthetic_model.score(reward_images, ["x"] * 4), without, rtol=0, atol=0)


def test_score_is_the_mlp_of_the_normalised_embedding(aesthetic_model, reward_images):
    embeddings = aesthetic_model.image_embeddings(reward_images)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(4))
    with torch.no_grad():
        expected = aesthetic_model.mlp.layers(embeddings).squeeze(-1)
    assert_scores_close(aesthetic_model.score(reward_images, None), expected, relative=1e-5)


def test_safetensors_weights_load_like_pth(tiny_reward_kwargs, aesthetic_model, reward_images):
    from_safetensors = AestheticReward(**tiny_reward_kwargs("aesthetic", weights_format="safetensors"))
    torch.testing.assert_close(from_safetensors.score(reward_images, None), aesthetic_model.score(reward_images, None))


def test_mlp_for_another_embedding_width_names_the_file(tiny_reward_kwargs, tmp_path):
    weights = tmp_path / "wrong_width.pth"
    torch.save(AestheticMLP(input_size=768).state_dict(), weights)  # real width; the tiny CLIP's is 16
    kwargs = {**tiny_reward_kwargs("aesthetic"), "weights": str(weights)}
    with pytest.raises(WeightLoadingError, match=r"wrong_width\.pth.*wrong shapes: layers\.0\.weight"):
        AestheticReward(**kwargs)


def test_missing_weight_file_is_named(tiny_reward_kwargs, tmp_path):
    kwargs = {**tiny_reward_kwargs("aesthetic"), "weights": str(tmp_path / "absent.pth")}
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        AestheticReward(**kwargs)
