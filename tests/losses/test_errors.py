"""per_sample_error: the mean-over-dims convention and temporal segments."""

from __future__ import annotations

import pytest
import torch

from diffusion_align.losses import per_sample_error


def test_hand_example():
    pred = torch.zeros(2, 1, 2)
    target = torch.tensor([[[1.0, 3.0]], [[0.0, 2.0]]])
    torch.testing.assert_close(per_sample_error(pred, target), torch.tensor([5.0, 2.0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_authors_float32_mse(dtype):
    pred, target = torch.randn(3, 4, 8, 8).to(dtype), torch.randn(3, 4, 8, 8).to(dtype)
    expected = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(
        dim=[1, 2, 3]
    )
    out = per_sample_error(pred, target)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_segments_split_the_frame_axis():
    pred = torch.zeros(1, 2, 5, 1, 1)
    target = torch.arange(5.0).reshape(1, 1, 5, 1, 1).expand(1, 2, 5, 1, 1)
    # frames 0-1 | 2-3 | 4 (tensor_split gives the first F mod S segments one extra frame)
    expected = torch.tensor([[(0 + 1) / 2, (4 + 9) / 2, 16.0]])
    torch.testing.assert_close(per_sample_error(pred, target, segments=3), expected)


def test_segments_of_equal_size_average_to_the_whole():
    pred, target = torch.randn(2, 4, 6, 3, 3), torch.randn(2, 4, 6, 3, 3)
    torch.testing.assert_close(
        per_sample_error(pred, target, segments=3).mean(1), per_sample_error(pred, target)
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="pred shape"):
        per_sample_error(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="segments=7"):
        per_sample_error(torch.zeros(1, 2, 5, 1, 1), torch.zeros(1, 2, 5, 1, 1), segments=7)
    with pytest.raises(ValueError, match="frame_dim=5"):
        per_sample_error(torch.zeros(1, 2, 5, 1, 1), torch.zeros(1, 2, 5, 1, 1), segments=2, frame_dim=5)
