"""The tie policy: drop, half, smooth; validation of label values."""

from __future__ import annotations

import pytest
import torch

from diffusion_align.losses import resolve_ties

LABEL_0 = torch.tensor([1.0, 0.0, 0.5])


def test_drop():
    keep, swap, label = resolve_ties(LABEL_0)
    assert keep.tolist() == [True, True, False]
    assert swap.tolist() == [False, True, False]
    assert label.tolist() == [1.0, 1.0, 1.0]


def test_half():
    keep, swap, label = resolve_ties(LABEL_0, policy="half")
    assert keep.tolist() == [True, True, True]
    assert swap.tolist() == [False, True, False]
    assert label.tolist() == [1.0, 1.0, 0.5]


def test_smooth():
    keep, swap, label = resolve_ties(LABEL_0, policy="smooth", label_smoothing=0.1)
    assert keep.all()
    torch.testing.assert_close(label, torch.tensor([0.9, 0.9, 0.5]))


def test_swapped_label_is_probability_winner_first():
    keep, swap, label = resolve_ties(torch.tensor([0.0, 1.0]))
    images = torch.tensor([[10.0, 20.0], [30.0, 40.0]])  # [B, K]: image 0, image 1
    ordered = torch.where(swap[:, None], images.flip(1), images)
    assert ordered[:, 0].tolist() == [20.0, 30.0]  # the preferred image of each pair comes first


def test_bad_values_are_named():
    with pytest.raises(ValueError, match=r"got \[0.25, 2.0\]"):
        resolve_ties(torch.tensor([1.0, 0.25, 2.0, 0.0]))


def test_bad_policy_and_smoothing_raise():
    with pytest.raises(ValueError, match="policy 'keep'"):
        resolve_ties(LABEL_0, policy="keep")
    with pytest.raises(ValueError, match="needs policy 'smooth'"):
        resolve_ties(LABEL_0, policy="drop", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        resolve_ties(LABEL_0, policy="smooth", label_smoothing=0.5)
