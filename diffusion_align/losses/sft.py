"""Supervised fine-tuning on the preferred sample only: the baseline of every preference paper.

Salesforce ``train.py --sft``: ``F.mse_loss(pred.float(), target.float(), reduction="mean")`` on the winner image,
ties asserted away. With equal-sized samples the batch mean of per-sample means is that same number.
"""

from __future__ import annotations

from torch import Tensor

from diffusion_align.losses.common import (
    apply_weights,
    check_pairwise,
    refuse_reference,
    require_hard_label,
    to_float32,
)
from diffusion_align.types import LossOutput, metric_dict


def sft_loss(
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None = None,
    ref_err_l: Tensor | None = None,
    *,
    label: Tensor | None = None,
    weights: Tensor | None = None,
) -> LossOutput:
    """Winner-only denoising loss ``mean_b err_w[b]`` (reference-free; the config says ``needs_reference: false``).

    Worked example: ``err_w = [0.2, 0.4]``, ``err_l = [9, 9]`` gives losses ``[0.2, 0.4]`` and loss ``0.3``: the
    loser's error never enters the loss (it is only logged).

    Args:
        err_w: ``[B]`` policy denoising error of the preferred sample (mean over non-batch dims).
        err_l: ``[B]`` policy error of the dispreferred sample: logged as ``mse/policy_rejected``, not trained on.
        ref_err_w: unused; must be None (raises otherwise: no reference should be computed for this method).
        ref_err_l: unused; must be None.
        label: optional ``[B]``; must be all ones (the first sample is the winner) when given.
        weights: optional ``[B]`` per-sample weights, multiplied into ``losses`` before the mean.

    Returns:
        ``LossOutput`` with ``mse/policy_chosen`` and ``mse/policy_rejected`` metrics (no implicit rewards).
    """
    method = "sft_loss"
    check_pairwise(method, err_w, err_l, label=label)
    refuse_reference(method, ref_err_w, ref_err_l)
    require_hard_label(method, label)
    err_w, err_l = to_float32(err_w, err_l)
    losses = apply_weights(err_w, weights, method)
    metrics = metric_dict(**{"mse/policy_chosen": err_w, "mse/policy_rejected": err_l})
    return LossOutput(loss=losses.mean(), losses=losses, metrics=metrics)
