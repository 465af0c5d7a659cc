"""SmPO: the smoothed preference probability and the scaled DPO loss."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_align.losses import diffusion_dpo_loss, smpo_loss, smpo_preference_probability
from diffusion_align.losses.smpo import PICKSCORE_HIGH, PICKSCORE_LOW
from diffusion_align.testing.contracts import DPO_FAMILY_KEYS, LossContract, pairwise_inputs, swap_pairwise


class TestSmpoContract(LossContract):
    loss_fn = smpo_loss
    metric_keys = DPO_FAMILY_KEYS + ("smpo/beta_effective",)

    def make_inputs(self, dtype, generator):
        inputs = pairwise_inputs(self.batch_size, dtype, generator)
        return {**inputs, "label": 0.5 + 0.23 * torch.rand(self.batch_size, generator=generator)}

    def swap_chosen_rejected(self, inputs):
        return swap_pairwise(inputs)


def test_equals_dpo_where_scale_is_one():
    inputs = pairwise_inputs(8, torch.float32, torch.Generator().manual_seed(0))
    smpo = smpo_loss(**inputs, label=torch.full((8,), 0.55), beta=5000.0)
    dpo = diffusion_dpo_loss(**inputs, beta=5000.0)
    torch.testing.assert_close(smpo.losses, dpo.losses, rtol=1e-5, atol=1e-6)


def test_hand_example():
    args = (torch.tensor([0.3]), torch.tensor([0.5]), torch.tensor([0.4]), torch.tensor([0.4]))
    assert smpo_loss(*args, label=torch.tensor([0.55]), beta=10.0).loss.item() == pytest.approx(
        0.3132617, abs=1e-5
    )
    assert smpo_loss(*args, label=torch.tensor([0.6]), beta=10.0).loss.item() == pytest.approx(
        0.1269280, abs=1e-5
    )


def test_no_preference_at_half_gives_log_2_and_no_gradient():
    inputs = pairwise_inputs(4, torch.float32, torch.Generator().manual_seed(1))
    err_w = inputs["err_w"].clone().requires_grad_(True)
    out = smpo_loss(**{**inputs, "err_w": err_w}, label=torch.full((4,), 0.5))
    out.loss.backward()
    torch.testing.assert_close(out.losses, torch.full((4,), math.log(2.0)))
    torch.testing.assert_close(err_w.grad, torch.zeros(4))


def test_uses_each_pairs_own_probability():
    inputs = pairwise_inputs(2, torch.float32, torch.Generator().manual_seed(2))
    p = torch.tensor([0.55, 0.7])
    batch = smpo_loss(**inputs, label=p, beta=5000.0).losses
    for i in range(2):
        single = smpo_loss(**{k: v[i : i + 1] for k, v in inputs.items()}, label=p[i : i + 1], beta=5000.0)
        torch.testing.assert_close(batch[i : i + 1], single.losses)


def test_preference_probability_per_sample():
    p = smpo_preference_probability(
        torch.tensor([PICKSCORE_HIGH, 0.2, 0.2]), torch.tensor([PICKSCORE_LOW, 0.2, 0.21])
    )
    expected = [1 / (1 + math.exp(-1.0)), 0.5, 1 / (1 + math.exp(0.01 / (PICKSCORE_HIGH - PICKSCORE_LOW)))]
    torch.testing.assert_close(p, torch.tensor(expected))


def test_preference_probability_is_softmax_of_normalised_scores():
    s_w, s_l = torch.tensor([0.25]), torch.tensor([0.18])
    n = (torch.stack([s_w, s_l]) - PICKSCORE_LOW) / (PICKSCORE_HIGH - PICKSCORE_LOW)
    torch.testing.assert_close(smpo_preference_probability(s_w, s_l), torch.softmax(n, dim=0)[0])


def test_label_and_reference_required():
    inputs = pairwise_inputs(2, torch.float32, torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="needs 'label'"):
        smpo_loss(**inputs)
    with pytest.raises(ValueError, match="needs reference"):
        smpo_loss(inputs["err_w"], inputs["err_l"], label=torch.full((2,), 0.6))
