"""Diffusion-DPO and Flow-DPO: hand-derived numbers, conventions, gradient direction, symmetry, contracts."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_align.losses import diffusion_dpo_loss, flow_dpo_loss
from diffusion_align.testing.contracts import LossContract, pairwise_inputs, swap_pairwise

# The docstring example: beta = 10, x = inside_term = [1, -1].
ERR_W, ERR_L = torch.tensor([0.3, 0.5]), torch.tensor([0.5, 0.3])
REF = torch.tensor([0.4, 0.4])


class PairwiseContract(LossContract):
    def make_inputs(self, dtype, generator):
        return pairwise_inputs(self.batch_size, dtype, generator)

    def swap_chosen_rejected(self, inputs):
        return swap_pairwise(inputs)


class TestDpoSigmoidContract(PairwiseContract):
    loss_fn = diffusion_dpo_loss


class TestDpoHingeContract(PairwiseContract):
    loss_fn = functools.partial(diffusion_dpo_loss, loss_type="hinge", beta=10.0)


class TestDpoIpoContract(PairwiseContract):
    loss_fn = functools.partial(diffusion_dpo_loss, loss_type="ipo", beta=10.0)


class TestFlowDpoContract(PairwiseContract):
    loss_fn = flow_dpo_loss


def test_hand_example_sigmoid():
    out = diffusion_dpo_loss(ERR_W, ERR_L, REF, REF, beta=10.0)
    torch.testing.assert_close(out.losses, torch.tensor([math.log1p(math.exp(-1)), math.log1p(math.e)]))
    assert out.loss.item() == pytest.approx(0.8132616875, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.5
    torch.testing.assert_close(out.metrics["rewards/margins"], torch.tensor(0.0))


def test_hand_example_soft_label():
    out = diffusion_dpo_loss(ERR_W, ERR_L, REF, REF, beta=10.0, label=torch.tensor([0.75, 1.0]))
    assert out.losses[0].item() == pytest.approx(0.5632616875, abs=1e-6)


def test_hand_example_hinge_and_ipo():
    hinge = diffusion_dpo_loss(ERR_W, ERR_L, REF, REF, beta=10.0, loss_type="hinge")
    torch.testing.assert_close(hinge.losses, torch.tensor([0.0, 2.0]))
    ipo = diffusion_dpo_loss(ERR_W, ERR_L, REF, REF, beta=10.0, loss_type="ipo")
    torch.testing.assert_close(ipo.losses, torch.tensor([0.01, 0.09]))
    assert ipo.loss.item() == pytest.approx(0.05, abs=1e-6)


def test_rewards_are_salesforce_inside_term():
    out = diffusion_dpo_loss(ERR_W[:1], ERR_L[:1], REF[:1], REF[:1], beta=10.0)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-5 * (0.3 - 0.4), abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-5 * (0.5 - 0.4), abs=1e-6)
    assert out.metrics["rewards/margins"].item() == pytest.approx(1.0, abs=1e-6)


def test_model_equal_to_reference_gives_log_2():
    err = torch.rand(8) * 0.3
    out = diffusion_dpo_loss(err, err.flip(0), err, err.flip(0), beta=5000.0)
    torch.testing.assert_close(out.losses, torch.full((8,), math.log(2.0)))


def test_equals_diffusers_no_half_convention_at_half_beta():
    g = torch.Generator().manual_seed(1)
    err_w, err_l, ref_w, ref_l = (torch.rand(16, generator=g) * 0.2 for _ in range(4))
    beta_diffusers = 2500.0
    logits = (ref_w - ref_l) - (err_w - err_l)
    expected = -F.logsigmoid(beta_diffusers * logits).mean()
    torch.testing.assert_close(diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta=5000.0).loss, expected)


def test_lowering_winner_error_lowers_loss():
    err_w = torch.tensor([0.20, 0.25], requires_grad=True)
    err_l = torch.tensor([0.22, 0.21], requires_grad=True)
    out = diffusion_dpo_loss(err_w, err_l, REF, REF, beta=100.0)
    out.loss.backward()
    assert (err_w.grad > 0).all() and (err_l.grad < 0).all()
    lower = diffusion_dpo_loss(err_w.detach() - 0.01, err_l.detach(), REF, REF, beta=100.0)
    assert lower.loss < out.loss


def test_swapping_pair_equals_flipping_label():
    g = torch.Generator().manual_seed(2)
    err_w, err_l, ref_w, ref_l = (torch.rand(6, generator=g) * 0.2 for _ in range(4))
    p = torch.rand(6, generator=g)
    forward = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta=50.0, label=p)
    swapped = diffusion_dpo_loss(err_l, err_w, ref_l, ref_w, beta=50.0, label=1.0 - p)
    torch.testing.assert_close(forward.losses, swapped.losses)


def test_tie_counts_as_wrong_in_accuracy():
    out = diffusion_dpo_loss(REF, REF, REF, REF, beta=10.0)
    assert out.metrics["rewards/accuracies"].item() == 0.0


def test_missing_reference_raises():
    with pytest.raises(ValueError, match="needs_reference: true"):
        diffusion_dpo_loss(ERR_W, ERR_L)


@pytest.mark.parametrize("loss_type", ["hinge", "ipo"])
def test_hinge_and_ipo_refuse_soft_labels(loss_type):
    with pytest.raises(ValueError, match="hard labels"):
        diffusion_dpo_loss(ERR_W, ERR_L, REF, REF, loss_type=loss_type, label=torch.tensor([0.5, 1.0]))
    diffusion_dpo_loss(ERR_W, ERR_L, REF, REF, loss_type=loss_type, label=torch.ones(2))


def test_unknown_loss_type_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="loss_type 'cpo'"):
        diffusion_dpo_loss(ERR_W, ERR_L, REF, REF, loss_type="cpo")
    with pytest.raises(ValueError, match="'err_l' has shape"):
        diffusion_dpo_loss(ERR_W, ERR_L[:1], REF, REF)
    with pytest.raises(ValueError, match="'weights' has 3 entries"):
        diffusion_dpo_loss(ERR_W, ERR_L, REF, REF, weights=torch.ones(3))


def test_flow_dpo_constant_beta_equals_dpo():
    inputs = pairwise_inputs(5, torch.float32, torch.Generator().manual_seed(3))
    flow = flow_dpo_loss(**inputs, beta=700.0)
    dpo = diffusion_dpo_loss(**inputs, beta=700.0)
    torch.testing.assert_close(flow.losses, dpo.losses)
    assert flow.metrics["flow/beta_t"].item() == pytest.approx(700.0)


def test_flow_dpo_time_dependent_beta_matches_per_sample_dpo():
    inputs = pairwise_inputs(3, torch.float32, torch.Generator().manual_seed(4))
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    out = flow_dpo_loss(**inputs, beta=1000.0, beta_schedule="one_minus_t_squared", sigmas=sigmas)
    for i, sigma in enumerate(sigmas.tolist()):
        single = {k: v[i : i + 1] for k, v in inputs.items()}
        expected = diffusion_dpo_loss(**single, beta=1000.0 * (1.0 - sigma) ** 2).loss
        torch.testing.assert_close(out.losses[i], expected)


def test_flow_dpo_time_dependent_beta_needs_sigmas():
    inputs = pairwise_inputs(3, torch.float32, torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="needs 'sigmas'"):
        flow_dpo_loss(**inputs, beta_schedule="one_minus_t_squared")
