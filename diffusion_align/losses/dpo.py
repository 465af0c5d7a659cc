"""Diffusion-DPO (Wallace et al. 2023) and Flow-DPO (Liu et al. 2025), over per-sample denoising errors.

Convention (Salesforce ``train.py``, block ``#### START LOSS COMPUTATION ####``, and diffusers'
``train_diffusion_dpo_sdxl.py``)::

    inside_term = -0.5 * beta * ((err_w - ref_err_w) - (err_l - ref_err_l))
    loss        = -logsigmoid(inside_term).mean()

diffusers' SD1.5 port writes the same loss without the 0.5: ``-logsigmoid(beta_d * (ref_diff - model_diff))`` with
``beta_d = 2500``; it equals ours at ``beta = 2 * beta_d = 5000``. Every β in this file is in the −0.5·β convention.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from diffusion_align.losses.common import (
    apply_weights,
    check_pairwise,
    check_same_shape,
    dpo_family_metrics,
    preference_nll,
    require_hard_label,
    require_reference,
    to_float32,
)
from diffusion_align.types import LossOutput, metric_dict

DpoLossType = Literal["sigmoid", "hinge", "ipo"]
FlowBetaSchedule = Literal["constant", "one_minus_t_squared"]


def implicit_rewards(
    err_w: Tensor, err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor, beta: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Implicit rewards ``r = -0.5·β·(err - ref_err)`` of the first and second sample, float32 ``[B]`` each.

    Their difference ``r_w - r_l`` is the Salesforce ``inside_term``. ``beta`` is a float or a per-sample ``[B]``.
    """
    return -0.5 * beta * (err_w - ref_err_w), -0.5 * beta * (err_l - ref_err_l)


def _dpo_core(
    method: str,
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None,
    ref_err_l: Tensor | None,
    label: Tensor | None,
    weights: Tensor | None,
    beta: float | Tensor,
    loss_type: DpoLossType,
) -> LossOutput:
    """The shared body of :func:`diffusion_dpo_loss` and :func:`flow_dpo_loss` (``beta`` float or ``[B]``)."""
    check_pairwise(method, err_w, err_l, ref_err_w, ref_err_l, label)
    ref_err_w, ref_err_l = require_reference(method, ref_err_w, ref_err_l)
    err_w, err_l, ref_err_w, ref_err_l, label = to_float32(err_w, err_l, ref_err_w, ref_err_l, label)
    reward_w, reward_l = implicit_rewards(err_w, err_l, ref_err_w, ref_err_l, beta)
    inside_term = reward_w - reward_l
    if loss_type == "sigmoid":
        losses = preference_nll(inside_term, label)
    elif loss_type == "hinge":
        require_hard_label(f"{method}(loss_type='hinge')", label)
        losses = torch.relu(1.0 - inside_term)
    elif loss_type == "ipo":
        require_hard_label(f"{method}(loss_type='ipo')", label)
        losses = ((2.0 * inside_term - 1.0) / beta) ** 2
    else:
        raise ValueError(f"{method}: loss_type '{loss_type}' is not one of 'sigmoid', 'hinge', 'ipo'")
    losses = apply_weights(losses, weights, method)
    metrics = dpo_family_metrics(reward_w, reward_l, err_w, err_l, ref_err_w, ref_err_l)
    return LossOutput(loss=losses.mean(), losses=losses, metrics=metrics)


def diffusion_dpo_loss(
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None = None,
    ref_err_l: Tensor | None = None,
    *,
    label: Tensor | None = None,
    weights: Tensor | None = None,
    beta: float = 5000.0,
    loss_type: DpoLossType = "sigmoid",
) -> LossOutput:
    """Diffusion-DPO (Wallace et al. 2023, Eq. 14 with ``T·ω(λ_t)`` folded into β, as the official code).

    With ``x = inside_term = -0.5·β·((err_w - ref_err_w) - (err_l - ref_err_l))`` per sample:

    - ``sigmoid``: ``-log σ(x)``; with a soft label p: ``-(p·log σ(x) + (1-p)·log σ(-x))``.
    - ``hinge``: ``relu(1 - x)`` (diffusers ``relu(1 - β_d·logits)`` with ``β_d = β/2``, ``logits = x/β_d``).
    - ``ipo``: ``((ref_diff - model_diff) - 1/β)² = ((2x - 1)/β)²`` (diffusers ``(logits - 1/(2β_d))²``).
      The diffusers script reads a non-existent ``args.beta`` here; we use the same β as the other types.

    Hinge and IPO take hard labels only. ``rewards/accuracies`` counts a tie (x == 0) as wrong (Salesforce);
    diffusers gives ties half credit.

    Worked example (β = 10, B = 2): ``err_w = [0.3, 0.5]``, ``err_l = [0.5, 0.3]``, all reference errors 0.4.
    ``x = -5·((err_w - 0.4) - (err_l - 0.4)) = [1, -1]``; sigmoid losses ``log(1 + e^-1) = 0.31326`` and
    ``log(1 + e) = 1.31326``, loss ``0.81326``; accuracy 0.5. With ``label = [0.75, 1]`` the first loss becomes
    ``0.75·0.31326 + 0.25·1.31326 = 0.56326``. Hinge: ``[0, 2]``, loss 1. IPO: ``[(0.2 - 0.1)², (-0.2 - 0.1)²] =
    [0.01, 0.09]``, loss 0.05. With model == reference, ``x = 0`` and the sigmoid loss is ``log 2 = 0.693147``.

    Args:
        err_w: ``[B]`` policy denoising error (mean squared error over all non-batch dims) of the preferred sample.
        err_l: ``[B]`` policy error of the dispreferred sample.
        ref_err_w: ``[B]`` reference error of the preferred sample (required).
        ref_err_l: ``[B]`` reference error of the dispreferred sample (required).
        label: optional ``[B]`` probability that the first sample is preferred (from the tie policy; 1 = hard).
        weights: optional ``[B]`` per-sample weights, multiplied into ``losses`` before the mean.
        beta: β in the −0.5·β convention; 5000 in the official SD1.5 and SDXL launchers.
        loss_type: ``sigmoid`` | ``hinge`` | ``ipo``.

    Returns:
        ``LossOutput``: ``loss`` = ``losses.mean()``; ``losses`` the weighted per-sample losses ``[B]``; shared metrics.
    """
    return _dpo_core(
        "diffusion_dpo_loss", err_w, err_l, ref_err_w, ref_err_l, label, weights, beta, loss_type
    )


def flow_dpo_loss(
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None = None,
    ref_err_l: Tensor | None = None,
    *,
    label: Tensor | None = None,
    weights: Tensor | None = None,
    beta: float = 5000.0,
    beta_schedule: FlowBetaSchedule = "constant",
    sigmas: Tensor | None = None,
) -> LossOutput:
    """Flow-DPO (Liu et al. 2025, arXiv 2501.13918) [paper-recalled: no released code].

    Rectified flow ``x_t = (1-t)·x0 + t·ε`` with velocity target ``v = ε - x0``: the loss is Diffusion-DPO with the
    errors measured against ``v`` instead of ε (the adapter chooses the target; this function only sees errors) and
    ``β`` replaced by ``β_t``:

    - ``constant``: ``β_t = β``; then this function equals :func:`diffusion_dpo_loss` exactly (the paper reports the
      constant works better).
    - ``one_minus_t_squared``: ``β_t = β·(1 - t)²`` per sample, with ``t`` the noise level σ of each pair (``sigmas``).

    Args:
        err_w, err_l, ref_err_w, ref_err_l, label, weights: as :func:`diffusion_dpo_loss` (errors against ``v``).
        beta: β in the −0.5·β convention. No verified Flow-DPO value: 5000 is Diffusion-DPO's launcher value.
        beta_schedule: ``constant`` | ``one_minus_t_squared``.
        sigmas: ``[B]`` noise level t ∈ (0, 1) of each pair; required for ``one_minus_t_squared`` only.

    Returns:
        ``LossOutput`` as :func:`diffusion_dpo_loss`, plus ``flow/beta_t`` (mean β_t).
    """
    method = "flow_dpo_loss"
    if beta_schedule == "constant":
        beta_t: float | Tensor = beta
    elif beta_schedule == "one_minus_t_squared":
        if sigmas is None:
            raise ValueError(
                f"{method}: beta_schedule='one_minus_t_squared' needs 'sigmas' ([B] noise levels t)"
            )
        check_same_shape(method, err_w=err_w, sigmas=sigmas)
        beta_t = beta * (1.0 - sigmas.float()) ** 2
    else:
        raise ValueError(
            f"{method}: beta_schedule '{beta_schedule}' is not 'constant' or 'one_minus_t_squared'"
        )
    out = _dpo_core(method, err_w, err_l, ref_err_w, ref_err_l, label, weights, beta_t, "sigmoid")
    out.metrics.update(
        metric_dict(**{"flow/beta_t": torch.as_tensor(beta_t, dtype=torch.float32, device=err_w.device)})
    )
    return out
