"""DenseDPO: segment-level DPO with tie masking, against per-segment Diffusion-DPO."""

from __future__ import annotations

import pytest
import torch

from diffusion_align.losses import dense_dpo_loss, diffusion_dpo_loss
from diffusion_align.testing.contracts import DPO_FAMILY_KEYS, LossContract

SEGMENTS = 3


class TestDenseDpoContract(LossContract):
    loss_fn = dense_dpo_loss
    metric_keys = DPO_FAMILY_KEYS + ("densedpo/tie_fraction",)
    loss_is_mean_of_losses = False

    def make_inputs(self, dtype, generator):
        shape = (self.batch_size, SEGMENTS)
        ref = 0.05 + 0.2 * torch.rand(2, *shape, generator=generator)
        err = ref + 2e-4 * torch.randn(2, *shape, generator=generator)
        label = torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 0.0], [0.5, 0.0, 1.0], [0.0, 0.5, 0.5]])
        return {
            "err_w": err[0].to(dtype),
            "err_l": err[1].to(dtype),
            "ref_err_w": ref[0].to(dtype),
            "ref_err_l": ref[1].to(dtype),
            "segment_label": label,
        }

    def swap_chosen_rejected(self, inputs):
        # Exchange the two videos but keep the labels: every decisive segment's margin changes sign.
        swapped = {"err_w": inputs["err_l"], "err_l": inputs["err_w"]}
        swapped.update(ref_err_w=inputs["ref_err_l"], ref_err_l=inputs["ref_err_w"])
        return {**inputs, **swapped}


def test_hand_example():
    err_w, err_l = torch.tensor([[0.3, 0.3, 0.3]]), torch.tensor([[0.5, 0.5, 0.5]])
    ref = torch.full((1, 3), 0.4)
    out = dense_dpo_loss(err_w, err_l, ref, ref, segment_label=torch.tensor([[1.0, 0.0, 0.5]]), beta=10.0)
    assert out.loss.item() == pytest.approx(0.8132617, abs=1e-6)
    assert out.metrics["densedpo/tie_fraction"].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("reduction", ["segment_mean", "sample_mean"])
def test_matches_dpo_over_decisive_segments(reduction):
    g = torch.Generator().manual_seed(0)
    ref = 0.1 + 0.1 * torch.rand(2, 3, 4, generator=g)
    err = ref + 1e-3 * torch.randn(2, 3, 4, generator=g)
    label = torch.tensor([[1.0, 0.5, 0.0, 1.0], [0.5, 0.5, 1.0, 0.5], [0.5, 0.5, 0.5, 0.5]])
    out = dense_dpo_loss(err[0], err[1], ref[0], ref[1], segment_label=label, beta=500.0, reduction=reduction)
    per_pair, all_terms = [], []
    for b in range(3):
        terms = []
        for s in range(4):
            if label[b, s] == 0.5:
                continue
            first, second = (0, 1) if label[b, s] == 1 else (1, 0)
            seg_err, seg_ref = err[:, b, s : s + 1], ref[:, b, s : s + 1]
            terms.append(
                diffusion_dpo_loss(
                    seg_err[first], seg_err[second], seg_ref[first], seg_ref[second], beta=500.0
                ).loss
            )
        per_pair.append(torch.stack(terms).mean() if terms else torch.tensor(0.0))
        all_terms += terms
    torch.testing.assert_close(out.losses, torch.stack(per_pair))
    expected = (
        torch.stack(all_terms).mean() if reduction == "segment_mean" else torch.stack(per_pair[:2]).mean()
    )
    torch.testing.assert_close(out.loss, expected)


def test_all_ties_give_zero_loss_with_a_graph():
    err = torch.rand(2, 3, requires_grad=True)
    out = dense_dpo_loss(err, err.detach(), err.detach(), err.detach(), segment_label=torch.full((2, 3), 0.5))
    assert out.loss.item() == 0.0 and out.loss.requires_grad


def test_bad_labels_and_shapes_raise():
    err = torch.rand(2, 3)
    with pytest.raises(ValueError, match=r"got \[0.25"):
        dense_dpo_loss(err, err, err, err, segment_label=torch.tensor([[1.0, 0.25, 0.0], [1.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        dense_dpo_loss(err[0], err[0], err[0], err[0], segment_label=torch.ones(3))
    with pytest.raises(ValueError, match="'segment_label' has shape"):
        dense_dpo_loss(err, err, err, err, segment_label=torch.ones(2, 2))
