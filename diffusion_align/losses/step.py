"""Step-level DPO of SPO (Liang et al., CVPR 2025) and LPO (Zhang et al., NeurIPS 2025).

Source: ``RockeyCoss/SPO`` ``train_spo.py`` and ``Kwai-Kolors/LPO`` ``train_lpo.py`` (the same loss): for a
winning and a losing candidate ``x_{t-1}`` drawn from the same ``x_t``::

    r_w  = clamp(exp(logp_θ(x^w_{t-1}|x_t) - logp_ref(x^w_{t-1}|x_t)), 1 - eps, 1 + eps)      # eps = 0.1
    r_l  = clamp(exp(logp_θ(x^l_{t-1}|x_t) - logp_ref(x^l_{t-1}|x_t)), 1 - eps, 1 + eps)
    loss = -mean log(sigmoid(beta·log r_w - beta·log r_l))                                    # literal log(sigmoid())

The clamp zeroes the gradient outside the trust region. SPO uses β = 10; LPO uses β = 500.
The log-probabilities come from the DDIM step with log-prob (mean over C, H, W), computed by the online loop.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_align.losses.common import apply_weights, check_pairwise, to_float32
from diffusion_align.types import LossOutput, metric_dict


def clamped_ratio(logp: Tensor, ref_logp: Tensor, clip: float) -> Tensor:
    """``clamp(exp(logp - ref_logp), 1 - clip, 1 + clip)``: the trust-region likelihood ratio, float32."""
    return torch.clamp(torch.exp(logp - ref_logp), 1.0 - clip, 1.0 + clip)


def step_dpo_loss(
    logp_w: Tensor,
    logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    *,
    beta: float = 10.0,
    clip: float = 0.1,
    weights: Tensor | None = None,
) -> LossOutput:
    """SPO / LPO step-level loss per pair: ``-log(sigmoid(β·(log r_w - log r_l)))`` with clamped ratios.

    Worked example (β = 10, clip = 0.1): ``logp_w - ref_logp_w = 0.05`` (``r_w = e^0.05``, inside the region) and
    ``logp_l - ref_logp_l = -0.5`` (``r_l`` clamped to 0.9): ``x = 10·(0.05 - log 0.9) = 1.553605``, loss
    ``-log σ(1.553605) = 0.191846``. Equal log-probs everywhere give ``log 2``.

    Args:
        logp_w: ``[B]`` policy log-probability of the winning step ``x^w_{t-1}`` given ``x_t``.
        logp_l: ``[B]`` policy log-probability of the losing step.
        ref_logp_w: ``[B]`` reference log-probability of the winning step.
        ref_logp_l: ``[B]`` reference log-probability of the losing step.
        beta: β on the log-ratios (10 in SPO's configs; 500 in LPO's).
        clip: trust-region half-width eps of the ratio clamp (0.1 in both).
        weights: optional ``[B]`` per-pair weights, multiplied into ``losses`` before the mean.

    Returns:
        ``LossOutput``: rewards ``β·log r``; accuracy ``#(r_w > r_l)/B`` as LPO logs it; ``step/clip_fraction``
        the fraction of ratios at a clamp bound; ``logp/policy_chosen`` / ``logp/policy_rejected``.
    """
    method = "step_dpo_loss"
    check_pairwise(method, logp_w, logp_l, ref_logp_w, ref_logp_l)
    logp_w, logp_l, ref_logp_w, ref_logp_l = to_float32(logp_w, logp_l, ref_logp_w, ref_logp_l)
    ratio_w, ratio_l = clamped_ratio(logp_w, ref_logp_w, clip), clamped_ratio(logp_l, ref_logp_l, clip)
    reward_w, reward_l = beta * torch.log(ratio_w), beta * torch.log(ratio_l)
    losses = apply_weights(-torch.log(torch.sigmoid(reward_w - reward_l)), weights, method)
    raw_log_ratios = torch.stack([logp_w - ref_logp_w, logp_l - ref_logp_l])
    clipped = (raw_log_ratios < math.log(1.0 - clip)) | (raw_log_ratios > math.log(1.0 + clip))
    metrics = metric_dict(
        **{
            "rewards/chosen": reward_w,
            "rewards/rejected": reward_l,
            "rewards/margins": reward_w - reward_l,
            "rewards/accuracies": (ratio_w > ratio_l).float(),
            "logp/policy_chosen": logp_w,
            "logp/policy_rejected": logp_l,
            "step/clip_fraction": clipped.float(),
        }
    )
    return LossOutput(loss=losses.mean(), losses=losses, metrics=metrics)
