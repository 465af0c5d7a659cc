"""HPSReward: open_clip architecture + local {"state_dict"} checkpoint, on a tiny ViT-H-14-shaped config."""

from __future__ import annotations

import open_clip
import pytest
import torch
from contract import (
    OPEN_CLIP_REFERENCE,
    REFERENCE_MEAN,
    REFERENCE_STD,
    RewardModelContract,
    assert_scores_close,
)
from torchvision import transforms

from reward_models import HPSReward, WeightLoadingError


class TestHPSContract(RewardModelContract):
    reference_preprocessing = OPEN_CLIP_REFERENCE

    @pytest.fixture()
    def reward_model(self, hps_model):
        return hps_model


def test_open_clip_vit_h_14_preprocessing_is_the_reference():
    # What create_model_and_transforms("ViT-H-14") would use, read without building the 1B-parameter model.
    assert open_clip.get_model_config("ViT-H-14")["vision_cfg"]["image_size"] == 224
    assert tuple(open_clip.OPENAI_DATASET_MEAN) == REFERENCE_MEAN and tuple(open_clip.OPENAI_DATASET_STD) == REFERENCE_STD


def test_preprocess_val_is_resize_bicubic_crop_normalise(hps_model):
    steps = hps_model.preprocess_val.transforms
    resize = next(t for t in steps if isinstance(t, transforms.Resize))
    crop = next(t for t in steps if isinstance(t, transforms.CenterCrop))
    normalize = next(t for t in steps if isinstance(t, transforms.Normalize))
    assert resize.size == 224 and resize.interpolation == transforms.InterpolationMode.BICUBIC
    assert tuple(crop.size) == (224, 224)
    assert tuple(normalize.mean) == REFERENCE_MEAN and tuple(normalize.std) == REFERENCE_STD


def test_score_is_a_cosine_and_multiplier_scales_it(tiny_reward_kwargs, hps_model, reward_images, reward_prompts):
    raw = hps_model.score(reward_images, reward_prompts)
    assert raw.abs().max() <= 1.0
    times_100 = HPSReward(**tiny_reward_kwargs("hps"), multiplier=100.0).score(reward_images, reward_prompts)
    assert_scores_close(times_100, 100 * raw, relative=1e-5)


def test_checkpoint_of_another_architecture_lists_keys(tiny_reward_kwargs):
    wider = tiny_reward_kwargs("hps", width=48, architecture="tiny-wide-ViT-H-14")
    kwargs = {**tiny_reward_kwargs("hps"), "checkpoint": wider["checkpoint"]}
    with pytest.raises(WeightLoadingError) as error:
        HPSReward(**kwargs)
    message = str(error.value)
    assert wider["checkpoint"] in message and "wrong shapes:" in message and "in all)" in message


def test_missing_checkpoint_is_named(tiny_reward_kwargs, tmp_path):
    kwargs = {**tiny_reward_kwargs("hps"), "checkpoint": str(tmp_path / "HPS_v2.1_compressed.pt")}
    with pytest.raises(FileNotFoundError, match=r"HPS_v2\.1_compressed\.pt"):
        HPSReward(**kwargs)


def test_checkpoint_without_state_dict_entry_is_refused(tiny_reward_kwargs, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save({"model": {}}, bare)
    with pytest.raises(KeyError, match=r"bare\.pt.*'state_dict'"):
        HPSReward(**{**tiny_reward_kwargs("hps"), "checkpoint": str(bare)})


def test_model_config_must_be_named_after_the_architecture(tiny_reward_kwargs):
    with pytest.raises(ValueError, match="registers this config as 'tiny-ViT-H-14'"):
        HPSReward(**{**tiny_reward_kwargs("hps"), "architecture": "ViT-H-14"})


def test_model_config_must_be_an_open_clip_config(tiny_reward_kwargs, tmp_path):
    config = tmp_path / "tiny-ViT-H-14.json"
    config.write_text('{"embed_dim": 16}')
    with pytest.raises(ValueError, match="missing keys"):
        HPSReward(**{**tiny_reward_kwargs("hps"), "model_config": str(config)})
