"""Transforms equal the official torchvision pipeline; every random draw is fixed by (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from diffusion_align.data.transforms import PreferenceTransform, SamplingSettings, item_rng


def _image(width: int = 50, height: int = 37, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _official(resolution: int, flip: bool) -> transforms.Compose:
    """Salesforce DiffusionDPO's train_transforms (center crop), with the flip forced on or off."""
    return transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.RandomHorizontalFlip(p=1.0 if flip else 0.0),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("size", [(50, 37), (37, 50), (16, 16)])
def test_center_crop_pipeline_equals_official_torchvision(flip, size):
    image = _image(*size)
    ours = PreferenceTransform(24)(image, flip, item_rng(0, 0, 0, "crop"))
    assert ours.shape == (3, 24, 24) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, _official(24, flip)(image), rtol=0, atol=0)


def test_random_crop_is_a_seeded_crop_of_the_resized_image():
    image, transform = _image(80, 30), PreferenceTransform(24, random_crop=True)
    resized = transforms.Resize(24, interpolation=transforms.InterpolationMode.BILINEAR)(image)
    full = transforms.Normalize([0.5], [0.5])(transforms.ToTensor()(resized))  # [3, 24, 64]
    crops = {}
    for epoch in range(6):
        out = transform(image, False, item_rng(7, epoch, 3, "crop"))
        again = transform(image, False, item_rng(7, epoch, 3, "crop"))
        torch.testing.assert_close(out, again, rtol=0, atol=0)
        matches = [left for left in range(64 - 24 + 1) if torch.equal(full[:, :, left : left + 24], out)]
        assert matches, "the random crop is not a window of the resized image"
        crops[epoch] = matches[0]
    assert len(set(crops.values())) > 1, "every epoch drew the same crop"


def test_flips_depend_only_on_seed_epoch_index():
    settings = SamplingSettings(seed=3)
    draws = [settings.flips(epoch, index, 2) for epoch in range(4) for index in range(64)]
    assert draws == [settings.flips(epoch, index, 2) for epoch in range(4) for index in range(64)]
    flat = np.array(draws)
    assert 0.35 < flat.mean() < 0.65
    assert (flat[:, 0] != flat[:, 1]).any(), "Salesforce flips each image independently"
    other_seed = SamplingSettings(seed=4)
    assert [settings.flips(0, i, 2) for i in range(64)] != [other_seed.flips(0, i, 2) for i in range(64)]


def test_same_flip_for_pair_and_hflip_off():
    same = SamplingSettings(seed=3, same_flip_for_pair=True)
    assert all(len(set(same.flips(0, i, 4))) == 1 for i in range(32))
    assert any(same.flips(0, i, 4)[0] for i in range(32))
    assert SamplingSettings(hflip=False).flips(0, 0, 3) == [False, False, False]


def test_prompt_dropout_proportion_and_determinism():
    settings = SamplingSettings(seed=1, proportion_empty_prompts=0.2)
    dropped = [settings.drop_prompt(epoch, index) for epoch in range(5) for index in range(400)]
    assert dropped == [settings.drop_prompt(epoch, index) for epoch in range(5) for index in range(400)]
    assert 0.17 < np.mean(dropped) < 0.23
    assert [settings.drop_prompt(0, i) for i in range(400)] != [
        settings.drop_prompt(1, i) for i in range(400)
    ]
    assert not any(SamplingSettings().drop_prompt(0, i) for i in range(100))
    assert all(SamplingSettings(proportion_empty_prompts=1.0).drop_prompt(0, i) for i in range(100))
    with pytest.raises(ValueError, match="proportion_empty_prompts 1.5"):
        SamplingSettings(proportion_empty_prompts=1.5)


def test_video_frames_share_one_crop_and_one_flip():
    frames = np.stack([np.asarray(_image(50, 37, seed=0))] * 3)
    transform = PreferenceTransform(24, random_crop=True)
    out = transform.video(frames, True, item_rng(0, 0, 0, "crop"))
    assert out.shape == (3, 3, 24, 24)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)
    single = transform(Image.fromarray(frames[0]), True, item_rng(0, 0, 0, "crop"))
    torch.testing.assert_close(out[0], single, rtol=0, atol=0)


def test_describe_records_what_changes_the_pixels():
    assert PreferenceTransform(32).describe() != PreferenceTransform(64).describe()
    assert PreferenceTransform(32).describe()["crop"] == "center"
    with pytest.raises(ValueError, match="resolution 0"):
        PreferenceTransform(0)
