"""reward_models.preprocessing: the differentiable path against the reference processors, pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from contract import HF_CLIP_REFERENCE, OPEN_CLIP_REFERENCE, make_images

from reward_models.preprocessing import (
    crop_offset,
    pil_to_pixels,
    pixels_to_pil,
    preprocess_pixels,
    resized_size,
)


def test_resized_size_keeps_aspect_with_truncation():
    assert resized_size(240, 300, 224) == (224, 280)
    assert resized_size(301, 224, 224) == (301, 224)
    assert resized_size(512, 333, 224) == (344, 224)  # int(224 * 512 / 333) = int(344.36)


def test_crop_offset_rounding_conventions():
    assert crop_offset(303, 224, "floor") == 39  # transformers: int(39.5)
    assert crop_offset(303, 224, "round") == 40  # torchvision: round(39.5) -> 40 (half to even)
    assert crop_offset(301, 224, "round") == 38 and crop_offset(301, 224, "floor") == 38


@pytest.mark.parametrize("size", [(240, 300), (300, 240), (224, 224), (513, 257)])
def test_torch_path_matches_the_transformers_processor(pickscore_model, size):
    images = make_images(2, *size, seed=3)
    reference = pickscore_model.pixel_values_from_pil(images)
    ours = preprocess_pixels(pil_to_pixels(images), HF_CLIP_REFERENCE)
    assert ours.shape == reference.shape == (2, 3, 224, 224)
    # the references round to uint8 after each resize pass: about one level at most (1/255/std ≈ 0.015)
    assert (ours - reference).abs().max() < 1.5 / 255 / min(HF_CLIP_REFERENCE.std)
    assert (ours - reference).abs().mean() < 0.4 / 255 / min(HF_CLIP_REFERENCE.std)


@pytest.mark.parametrize("size", [(240, 300), (303, 227)])
def test_torch_path_matches_open_clip_preprocess_val(hps_model, size):
    images = make_images(2, *size, seed=4)
    reference = hps_model.pixel_values_from_pil(images)
    ours = preprocess_pixels(pil_to_pixels(images), OPEN_CLIP_REFERENCE)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 1.5 / 255 / min(OPEN_CLIP_REFERENCE.std)
    assert (ours - reference).abs().mean() < 0.4 / 255 / min(OPEN_CLIP_REFERENCE.std)


def test_images_already_at_crop_size_are_only_normalised():
    pixels = torch.rand(1, 3, 224, 224)
    mean = torch.tensor(HF_CLIP_REFERENCE.mean).view(1, 3, 1, 1)
    std = torch.tensor(HF_CLIP_REFERENCE.std).view(1, 3, 1, 1)
    torch.testing.assert_close(preprocess_pixels(pixels, HF_CLIP_REFERENCE), (pixels - mean) / std)


def test_pil_round_trip_is_exact():
    images = make_images(2, 17, 23)
    back = pixels_to_pil(pil_to_pixels(images))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, back))


def test_pixels_are_checked():
    with pytest.raises(ValueError, match=r"min -0\.1000"):
        pixels_to_pil(torch.full((1, 3, 4, 4), -0.1))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        pixels_to_pil(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="one size"):
        pil_to_pixels(make_images(1, 8, 8) + make_images(1, 9, 9))
