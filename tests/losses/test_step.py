"""SPO / LPO step-level loss against the authors' literal formula."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_align.losses import step_dpo_loss
from diffusion_align.testing.contracts import SHARED_REWARD_KEYS, LossContract


class TestStepDpoContract(LossContract):
    loss_fn = step_dpo_loss
    differentiable = ("logp_w", "logp_l")
    metric_keys = SHARED_REWARD_KEYS + ("logp/policy_chosen", "logp/policy_rejected", "step/clip_fraction")

    def make_inputs(self, dtype, generator):
        ref = -1.0 - torch.rand(2, self.batch_size, generator=generator)
        logp = ref + 0.05 * torch.randn(2, self.batch_size, generator=generator)
        names = ("logp_w", "logp_l", "ref_logp_w", "ref_logp_l")
        return {name: value.to(dtype) for name, value in zip(names, (*logp, *ref))}

    def swap_chosen_rejected(self, inputs):
        return {
            "logp_w": inputs["logp_l"],
            "logp_l": inputs["logp_w"],
            "ref_logp_w": inputs["ref_logp_l"],
            "ref_logp_l": inputs["ref_logp_w"],
        }


def authors_step_loss(logp_w, logp_l, ref_w, ref_l, beta, eps):
    """SPO's train_spo.py loss, transcribed: clamped ratios, literal log(sigmoid())."""
    ratio_w = torch.clamp(torch.exp(logp_w - ref_w), 1 - eps, 1 + eps)
    ratio_l = torch.clamp(torch.exp(logp_l - ref_l), 1 - eps, 1 + eps)
    return -torch.log(torch.sigmoid(beta * torch.log(ratio_w) - beta * torch.log(ratio_l))).mean()


def test_hand_example():
    out = step_dpo_loss(torch.tensor([0.05]), torch.tensor([-0.5]), torch.zeros(1), torch.zeros(1))
    assert out.loss.item() == pytest.approx(0.19184619, abs=1e-6)
    assert out.metrics["step/clip_fraction"].item() == 0.5


def test_equal_logps_give_log_2():
    logp = torch.randn(5)
    out = step_dpo_loss(logp, logp, logp, logp)
    torch.testing.assert_close(out.losses, torch.full((5,), math.log(2.0)))


@pytest.mark.parametrize("beta", [10.0, 500.0])
def test_matches_authors_formula(beta):
    g = torch.Generator().manual_seed(0)
    ref_w, ref_l = -torch.rand(8, generator=g), -torch.rand(8, generator=g)
    logp_w, logp_l = ref_w + 0.2 * torch.randn(8, generator=g), ref_l + 0.2 * torch.randn(8, generator=g)
    out = step_dpo_loss(logp_w, logp_l, ref_w, ref_l, beta=beta)
    torch.testing.assert_close(out.loss, authors_step_loss(logp_w, logp_l, ref_w, ref_l, beta, 0.1))


def test_gradient_is_zero_outside_the_trust_region():
    logp_w = torch.tensor([0.5, 0.01], requires_grad=True)  # first ratio e^0.5 > 1.1: clamped
    step_dpo_loss(logp_w, torch.zeros(2), torch.zeros(2), torch.zeros(2)).loss.backward()
    assert logp_w.grad[0] == 0 and logp_w.grad[1] < 0
