"""SmPO-Diffusion: smoothed preference optimization (Lu et al., ICML 2025).

Source: ``JaydenLyh/SmPO`` ``preprocessing.py`` and ``train.py`` (HEAD 8922d54). The loss is Salesforce Diffusion-DPO
with a per-pair scale from a reward-model preference probability p::

    scale_term  = -0.5 * beta * (2p - 1) * 10
    inside_term = scale_term * (model_diff - ref_diff)

so the effective β multiplier ``10·(2p - 1)`` is 1 at ``p = 0.55`` (plain DPO). The authors' code applies the first
example's p to the whole batch (``batch['probs'][0]``, harmless at their bs = 1); we use each pair's own p.
SmPO's second ingredient, ReNoise inversion instead of forward noising, lives in
:mod:`diffusion_align.noising` (``noising: renoise_inversion`` in ``conf/method/smpo.yaml``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_align.losses.common import (
    apply_weights,
    check_pairwise,
    check_same_shape,
    dpo_family_metrics,
    require_reference,
    to_float32,
)
from diffusion_align.types import LossOutput, metric_dict

PICKSCORE_LOW = 0.11543526500463486
"""Normalisation floor of the raw PickScore cosine in SmPO's ``preprocessing.py``."""
PICKSCORE_HIGH = 0.28201571106910706
"""Normalisation ceiling of the raw PickScore cosine in SmPO's ``preprocessing.py``."""


def smpo_preference_probability(
    score_w: Tensor, score_l: Tensor, low: float = PICKSCORE_LOW, high: float = PICKSCORE_HIGH
) -> Tensor:
    """Per-pair probability that the first sample is preferred: softmax of min-max normalised scores.

    ``n = (s - low)/(high - low)``, ``p = exp(n_w)/(exp(n_w) + exp(n_l)) = σ((s_w - s_l)/(high - low))``.
    The scores are SmPO's raw PickScore cosines (no ``logit_scale``); with the authors' ordering (the PickScore
    winner first) p ∈ [0.5, ~0.73]. If the second sample scores higher, p < 0.5.

    Example: ``s_w = 0.28201571``, ``s_l = 0.11543527`` (the two bounds) gives ``p = σ(1) = 0.731059``.

    Args:
        score_w: ``[B]`` score of the first sample.
        score_l: ``[B]`` score of the second sample.
        low, high: the normalisation bounds (defaults: the authors' PickScore constants).

    Returns:
        float32 ``[B]`` probability.
    """
    check_same_shape("smpo_preference_probability", score_w=score_w, score_l=score_l)
    if not high > low:
        raise ValueError(f"smpo_preference_probability: need high > low, got low={low}, high={high}")
    return torch.sigmoid((score_w.float() - score_l.float()) / (high - low))


def smpo_loss(
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None = None,
    ref_err_l: Tensor | None = None,
    *,
    label: Tensor | None = None,
    weights: Tensor | None = None,
    beta: float = 5000.0,
) -> LossOutput:
    """SmPO loss per pair: ``-log σ(-0.5·β·10·(2p - 1)·((err_w - ref_err_w) - (err_l - ref_err_l)))``.

    At ``p = 0.55`` the scale ``10·(2p - 1)`` is 1 and this equals :func:`diffusion_dpo_loss` with the same β.
    At ``p = 0.5`` the pair carries no preference: loss ``log 2`` and zero gradient.

    Worked example (β = 10): ``err_w = 0.3``, ``err_l = 0.5``, references 0.4, ``p = 0.55``: inside term
    ``-5·1·(-0.2) = 1``, loss ``0.31326``; with ``p = 0.6`` (scale 2) the inside term is 2, loss ``0.126928``.

    Args:
        err_w, err_l, ref_err_w, ref_err_l: ``[B]`` per-sample denoising errors (reference required).
        label: ``[B]`` smoothed preference probability p of the first sample (required), e.g. from
            :func:`smpo_preference_probability`.
        weights: optional ``[B]`` per-sample weights, multiplied into ``losses`` before the mean.
        beta: β in the −0.5·β convention (2000 in the SD1.5 launcher, 5000 in the SDXL launcher).

    Returns:
        ``LossOutput`` with the shared metrics (rewards use the per-pair effective β) and ``smpo/beta_effective``.
    """
    method = "smpo_loss"
    if label is None:
        raise ValueError(
            f"{method} needs 'label': the smoothed preference probability p per pair ([B] in [0, 1])"
        )
    check_pairwise(method, err_w, err_l, ref_err_w, ref_err_l, label)
    ref_err_w, ref_err_l = require_reference(method, ref_err_w, ref_err_l)
    err_w, err_l, ref_err_w, ref_err_l, label = to_float32(err_w, err_l, ref_err_w, ref_err_l, label)
    beta_effective = beta * (2.0 * label - 1.0) * 10.0
    reward_w = -0.5 * beta_effective * (err_w - ref_err_w)
    reward_l = -0.5 * beta_effective * (err_l - ref_err_l)
    losses = apply_weights(-torch.nn.functional.logsigmoid(reward_w - reward_l), weights, method)
    metrics = dpo_family_metrics(reward_w, reward_l, err_w, err_l, ref_err_w, ref_err_l)
    metrics.update(metric_dict(**{"smpo/beta_effective": beta_effective}))
    return LossOutput(loss=losses.mean(), losses=losses, metrics=metrics)
