"""MaPO: the authors' compute_loss form, hand numbers, reference-free contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_align.losses import mapo_loss, mapo_score
from diffusion_align.testing.contracts import (
    SHARED_POLICY_MSE_KEYS,
    SHARED_REWARD_KEYS,
    LossContract,
    pairwise_inputs,
)


class TestMapoContract(LossContract):
    loss_fn = mapo_loss
    metric_keys = (
        SHARED_REWARD_KEYS + SHARED_POLICY_MSE_KEYS + ("mapo/win_score", "mapo/lose_score", "mapo/or_loss")
    )

    def make_inputs(self, dtype, generator):
        inputs = pairwise_inputs(self.batch_size, dtype, generator, spread=0.05)
        return {"err_w": inputs["err_w"], "err_l": inputs["err_l"]}

    def swap_chosen_rejected(self, inputs):
        return {"err_w": inputs["err_l"], "err_l": inputs["err_w"]}


def authors_compute_loss(mw, ml, beta=0.1, a=0.5, T=1000):
    """MaPO's utils.py::compute_loss, written independently from the paper's code description."""

    def g(loss):
        return a * loss / (torch.exp(a * loss) - 1)

    ratio_losses = beta * F.logsigmoid((g(mw) - g(ml)) * T)
    return mw.mean() - ratio_losses.mean()


def test_hand_example_equal_errors():
    out = mapo_loss(torch.tensor([0.2]), torch.tensor([0.2]))
    assert out.loss.item() == pytest.approx(0.2 + 0.1 * math.log(2.0), abs=1e-7)


def test_hand_example_small_T():
    # float32 exp(x) - 1 (the authors' form) carries ~1e-7/x relative error, hence the tolerances.
    assert mapo_score(torch.tensor(0.1), 0.5).item() == pytest.approx(0.05 / math.expm1(0.05), rel=1e-5)
    out = mapo_loss(torch.tensor([0.1]), torch.tensor([0.2]), num_train_timesteps=10)
    assert out.loss.item() == pytest.approx(0.157868005, abs=1e-5)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.243751302, abs=1e-4)


def test_matches_authors_form_on_random_errors():
    g = torch.Generator().manual_seed(0)
    mw, ml = torch.rand(16, generator=g) * 0.3, torch.rand(16, generator=g) * 0.3
    torch.testing.assert_close(mapo_loss(mw, ml).loss, authors_compute_loss(mw, ml))


def test_score_is_one_at_zero_error_with_finite_gradient():
    err = torch.zeros(2, requires_grad=True)
    score = mapo_score(err, 0.5)
    score.sum().backward()
    torch.testing.assert_close(score, torch.ones(2))
    assert torch.isfinite(err.grad).all()


def test_lowering_winner_error_lowers_loss():
    err_w = torch.tensor([0.20, 0.21], requires_grad=True)
    err_l = torch.tensor([0.20, 0.20], requires_grad=True)
    mapo_loss(err_w, err_l).loss.backward()
    assert (err_w.grad > 0).all() and (err_l.grad < 0).all()


def test_reference_and_soft_labels_refused():
    err = torch.tensor([0.2, 0.4])
    with pytest.raises(ValueError, match="reference-free"):
        mapo_loss(err, err, err, None)
    with pytest.raises(ValueError, match="hard labels"):
        mapo_loss(err, err, label=torch.tensor([0.9, 1.0]))
