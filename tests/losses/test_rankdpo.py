"""RankDPO: DCG-weighted pairwise DPO against an independent loop over pairs."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from diffusion_align.losses import diffusion_dpo_loss, rank_dpo_loss
from diffusion_align.testing.contracts import DPO_FAMILY_KEYS, LossContract


class TestRankDpoContract(LossContract):
    loss_fn = functools.partial(rank_dpo_loss, beta=2500.0)
    differentiable = ("errs",)
    metric_keys = DPO_FAMILY_KEYS + ("rankdpo/pairs",)

    def make_inputs(self, dtype, generator):
        ref = 0.05 + 0.2 * torch.rand(self.batch_size, 4, generator=generator)
        errs = ref + 2e-4 * torch.randn(self.batch_size, 4, generator=generator)
        scores = torch.rand(self.batch_size, 4, generator=generator)
        return {"errs": errs.to(dtype), "ref_errs": ref.to(dtype), "scores": scores}

    def swap_chosen_rejected(self, inputs):
        return {**inputs, "scores": -inputs["scores"]}


def loop_reference(errs, ref_errs, scores, beta, ranking="model", log_base=2.0, pair_reduction="sum"):
    """Algorithm 2 of the paper, one prompt and one pair at a time, in float64 Python."""
    losses = []
    for e, r, psi in zip(errs.tolist(), ref_errs.tolist(), scores.tolist()):
        s = [a - b for a, b in zip(e, r)]
        key = s if ranking == "model" else [-p for p in psi]
        order = sorted(range(len(s)), key=lambda i: key[i])
        tau = {item: position + 1 for position, item in enumerate(order)}
        total, pairs = 0.0, 0
        for i, j in itertools.permutations(range(len(s)), 2):
            if psi[i] <= psi[j]:
                continue
            gain = abs(2 ** psi[i] - 2 ** psi[j])
            discount = abs(1 / math.log(1 + tau[i], log_base) - 1 / math.log(1 + tau[j], log_base))
            total += gain * discount * math.log1p(math.exp(beta * (s[i] - s[j])))
            pairs += 1
        losses.append(total / max(pairs, 1) if pair_reduction == "mean" else total)
    return torch.tensor(losses, dtype=torch.float32)


def test_hand_example():
    out = rank_dpo_loss(
        torch.tensor([[0.3, 0.4, 0.5]]),
        torch.tensor([[0.4, 0.4, 0.4]]),
        torch.tensor([[1.0, 0.5, 0.0]]),
        beta=10.0,
    )
    assert out.loss.item() == pytest.approx(0.1481791, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 1.0


@pytest.mark.parametrize("ranking", ["model", "scores"])
@pytest.mark.parametrize("pair_reduction", ["sum", "mean"])
@pytest.mark.parametrize("log_base", [2.0, math.e])
def test_matches_independent_loop(ranking, pair_reduction, log_base):
    g = torch.Generator().manual_seed(0)
    ref = 0.1 + 0.1 * torch.rand(3, 4, generator=g)
    errs = ref + 0.01 * torch.randn(3, 4, generator=g)
    scores = torch.rand(3, 4, generator=g)
    out = rank_dpo_loss(
        errs, ref, scores, beta=50.0, ranking=ranking, pair_reduction=pair_reduction, log_base=log_base
    )
    expected = loop_reference(errs, ref, scores, 50.0, ranking, log_base, pair_reduction)
    torch.testing.assert_close(out.losses, expected, rtol=1e-5, atol=1e-6)


def test_two_candidates_is_dpo_term_times_delta():
    err_w, err_l, ref = torch.tensor([0.30]), torch.tensor([0.31]), torch.tensor([0.305])
    ranked = rank_dpo_loss(
        torch.stack([err_w, err_l], 1), torch.stack([ref, ref], 1), torch.tensor([[1.0, 0.0]]), beta=2500.0
    )
    delta = (2.0 - 1.0) * (1.0 - 1.0 / math.log2(3.0))
    dpo = diffusion_dpo_loss(err_w, err_l, ref, ref, beta=5000.0)
    torch.testing.assert_close(ranked.loss, delta * dpo.loss)


def test_tied_scores_make_no_pair():
    out = rank_dpo_loss(torch.rand(1, 3), torch.rand(1, 3), torch.full((1, 3), 0.5), beta=10.0)
    assert out.loss.item() == 0.0 and out.metrics["rankdpo/pairs"].item() == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\[B, K\] with K >= 2"):
        rank_dpo_loss(torch.rand(4), torch.rand(4), torch.rand(4))
    with pytest.raises(ValueError, match="needs 'ref_errs'"):
        rank_dpo_loss(torch.rand(2, 3), None, torch.rand(2, 3))
    with pytest.raises(ValueError, match="ranking 'human'"):
        rank_dpo_loss(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), ranking="human")
