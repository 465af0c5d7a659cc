"""RankDPO (Karthik et al. 2024, "Scalable Ranked Preference Optimization", arXiv 2410.18013).

[paper-alg] No released code was read; this follows the paper's Algorithm 2::

    s_i  = err_θ(x_i) - err_ref(x_i)                          # per candidate, shared noise and t
    G_ij = 2^{ψ_i} - 2^{ψ_j};   D(τ) = log(1 + τ)              # ψ: Syn-Pic's reward-ensemble win fraction in [0, 1]
    Δ_ij = |G_ij| · |1/D(τ(i)) - 1/D(τ(j))|                   # LambdaRank-style ΔDCG
    L    = -Σ_{i≻j} Δ_ij · log σ(-β (s_i - s_j))              # i ≻ j when ψ_i > ψ_j; no 0.5 factor

The uncertain choices are options: where the ranking τ comes from (``ranking``), the log base of D (``log_base``),
the base of the gain (``gain_base``), and sum vs mean over pairs (``pair_reduction``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from diffusion_align.losses.common import apply_weights, check_same_shape
from diffusion_align.types import LossOutput, metric_dict

RankingSource = Literal["model", "scores"]
PairReduction = Literal["sum", "mean"]


def rank_positions(key: Tensor, descending: bool) -> Tensor:
    """1-based rank position of each candidate along dim 1 (``[B, K]`` int64); ties keep index order."""
    order = torch.argsort(key.detach(), dim=1, descending=descending, stable=True)
    return torch.argsort(order, dim=1) + 1


def lambda_weights(scores: Tensor, positions: Tensor, log_base: float, gain_base: float) -> Tensor:
    """``Δ_ij = |gain_base^ψ_i - gain_base^ψ_j| · |1/log_b(1+τ_i) - 1/log_b(1+τ_j)|``, shape ``[B, K, K]``."""
    gains = gain_base**scores
    inv_discount = math.log(log_base) / torch.log1p(positions.float())
    gain_gap = (gains[:, :, None] - gains[:, None, :]).abs()
    return gain_gap * (inv_discount[:, :, None] - inv_discount[:, None, :]).abs()


def rank_dpo_loss(
    errs: Tensor,
    ref_errs: Tensor | None,
    scores: Tensor,
    *,
    beta: float = 2500.0,
    weights: Tensor | None = None,
    ranking: RankingSource = "model",
    log_base: float = 2.0,
    gain_base: float = 2.0,
    pair_reduction: PairReduction = "sum",
) -> LossOutput:
    """DCG-weighted pairwise DPO over K ranked candidates per prompt.

    Worked example (β = 10, one prompt, K = 3): ``ψ = [1, 0.5, 0]``, ``s = errs - ref_errs = [-0.1, 0, 0.1]``,
    model ranking ``τ = [1, 2, 3]``, ``1/log2(1+τ) = [1, 0.630930, 0.5]``. Pairs (0,1), (0,2), (1,2):
    ``Δ = [0.585786·0.369070, 1·0.5, 0.414214·0.130930] = [0.216196, 0.5, 0.054233]``, terms
    ``-log σ(-10·Δs) = [0.313262, 0.126928, 0.313262]``; summed loss ``0.148179``.

    Args:
        errs: ``[B, K]`` policy denoising errors of the K candidates of each prompt.
        ref_errs: ``[B, K]`` reference errors (required).
        scores: ``[B, K]`` ψ, the candidates' preference scores (higher is better; Syn-Pic's ψ lies in [0, 1]).
        beta: β with no 0.5 factor (Algorithm 2). No verified paper value: 2500 makes each pair's term the
            Salesforce DPO term at its β = 5000.
        weights: optional ``[B]`` per-prompt weights, multiplied into ``losses`` before the mean.
        ranking: τ from the current model (``model``: ascending ``s``, the paper's caption) or from ψ (``scores``).
        log_base: base of the logarithm in ``D(τ) = log(1 + τ)`` (2: standard DCG); scales the loss only.
        gain_base: base of the gain ``G = gain_base^ψ`` (2 in the paper).
        pair_reduction: ``sum`` over the prompt's pairs (the paper's Σ) or ``mean`` over its pairs i ≻ j.

    Returns:
        ``LossOutput``: ``losses`` ``[B]`` per prompt. Rewards are ``-β·s``; ``rewards/chosen`` / ``rejected`` are
        those of the best / worst candidate by ψ; ``rewards/accuracies`` is the fraction of pairs i ≻ j with
        ``s_i < s_j``; also ``rankdpo/pairs`` (mean number of pairs per prompt).
    """
    method = "rank_dpo_loss"
    if errs.ndim != 2 or errs.shape[1] < 2:
        raise ValueError(f"{method}: 'errs' must have shape [B, K] with K >= 2, got {tuple(errs.shape)}")
    if ref_errs is None:
        raise ValueError(f"{method} needs 'ref_errs' ([B, K] reference errors): set needs_reference: true")
    check_same_shape(method, errs=errs, ref_errs=ref_errs, scores=scores)
    if ranking not in ("model", "scores"):
        raise ValueError(f"{method}: ranking '{ranking}' is not 'model' or 'scores'")
    errs, ref_errs, scores = errs.float(), ref_errs.float(), scores.float()
    s = errs - ref_errs
    positions = (
        rank_positions(s, descending=False) if ranking == "model" else rank_positions(scores, descending=True)
    )
    delta = lambda_weights(scores, positions, log_base, gain_base)
    preferred = (scores[:, :, None] > scores[:, None, :]).float()  # [B, K, K]: i ≻ j
    terms = -torch.nn.functional.logsigmoid(-beta * (s[:, :, None] - s[:, None, :]))
    losses = (preferred * delta * terms).sum(dim=(1, 2))
    if pair_reduction == "mean":
        losses = losses / preferred.sum(dim=(1, 2)).clamp(min=1.0)
    elif pair_reduction != "sum":
        raise ValueError(f"{method}: pair_reduction '{pair_reduction}' is not 'sum' or 'mean'")
    losses = apply_weights(losses, weights, method)
    metrics = _ranked_metrics(errs, ref_errs, scores, -beta * s, preferred)
    return LossOutput(loss=losses.mean(), losses=losses, metrics=metrics)


def _ranked_metrics(
    errs: Tensor, ref_errs: Tensor, scores: Tensor, rewards: Tensor, preferred: Tensor
) -> dict:
    """Shared metric names for ranked data: chosen = best candidate by ψ, rejected = worst."""
    best, worst = scores.argmax(dim=1, keepdim=True), scores.argmin(dim=1, keepdim=True)
    chosen, rejected = rewards.gather(1, best)[:, 0], rewards.gather(1, worst)[:, 0]
    agree = (rewards[:, :, None] > rewards[:, None, :]).float()
    accuracy = (preferred * agree).sum() / preferred.sum().clamp(min=1.0)
    return metric_dict(
        **{
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": accuracy,
            "mse/policy_chosen": errs.gather(1, best),
            "mse/policy_rejected": errs.gather(1, worst),
            "mse/ref_chosen": ref_errs.gather(1, best),
            "mse/ref_rejected": ref_errs.gather(1, worst),
            "rankdpo/pairs": preferred.sum(dim=(1, 2)),
        }
    )
