"""SFT baseline: winner-only MSE, reference-free, hard labels only."""

from __future__ import annotations

import pytest
import torch

from diffusion_align.losses import sft_loss
from diffusion_align.testing.contracts import SHARED_POLICY_MSE_KEYS, LossContract, pairwise_inputs


class TestSftContract(LossContract):
    loss_fn = sft_loss
    differentiable = ("err_w",)
    metric_keys = SHARED_POLICY_MSE_KEYS
    has_margin = False

    def make_inputs(self, dtype, generator):
        inputs = pairwise_inputs(self.batch_size, dtype, generator)
        return {"err_w": inputs["err_w"], "err_l": inputs["err_l"]}


def test_hand_example_ignores_loser():
    out = sft_loss(torch.tensor([0.2, 0.4]), torch.tensor([9.0, 9.0]))
    torch.testing.assert_close(out.losses, torch.tensor([0.2, 0.4]))
    assert out.loss.item() == pytest.approx(0.3)
    assert out.metrics["mse/policy_rejected"].item() == pytest.approx(9.0)


def test_equals_full_tensor_mse_for_equal_sized_samples():
    pred, target = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    per_sample = ((pred - target) ** 2).flatten(1).mean(1)
    expected = torch.nn.functional.mse_loss(pred, target, reduction="mean")
    torch.testing.assert_close(sft_loss(per_sample, per_sample).loss, expected)


def test_reference_errors_are_refused():
    err = torch.tensor([0.2, 0.4])
    with pytest.raises(ValueError, match="reference-free"):
        sft_loss(err, err, err, err)


def test_soft_labels_are_refused():
    err = torch.tensor([0.2, 0.4])
    with pytest.raises(ValueError, match="hard labels"):
        sft_loss(err, err, label=torch.tensor([1.0, 0.5]))
    sft_loss(err, err, label=torch.ones(2))
