"""MaPO: margin-aware preference optimization (Hong, Paul et al. 2024), reference-free.

Source: ``mapo-t2i/mapo`` ``utils.py::compute_loss`` (HEAD 374b3d3), defaults from ``args.py``::

    g(L)     = a·L / (exp(a·L) - 1)                 # a = --snr_value = 0.5
    log_odds = g(err_w) - g(err_l)
    ratio    = logsigmoid(log_odds · T)             # T = noise_scheduler.config.num_train_timesteps
    loss     = err_w.mean() - beta_mapo · ratio.mean()

The code's "log-odds" is not literally ``log(p/(1-p))``; we keep the code form for numerical parity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_align.losses.common import (
    apply_weights,
    check_pairwise,
    refuse_reference,
    require_hard_label,
    to_float32,
)
from diffusion_align.types import LossOutput, metric_dict


def mapo_score(err: Tensor, snr_value: float) -> Tensor:
    """MaPO's ``g(L) = a·L / (exp(a·L) - 1)``, decreasing in ``L``, with its limit ``g(0) = 1``.

    Computed as the authors write it, ``exp(aL) - 1`` rather than ``expm1``: the float32 cancellation error
    (relative ~1e-7/(aL)) is multiplied by T = 1000 in the logit, and for numerical parity we keep it. Only an
    error of exactly 0 (0/0 in the authors' code) is replaced by the limit 1.
    """
    x = snr_value * err
    at_zero = x == 0
    safe = torch.where(at_zero, torch.ones_like(x), x)
    return torch.where(at_zero, torch.ones_like(x), safe / (torch.exp(safe) - 1.0))


def mapo_loss(
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None = None,
    ref_err_l: Tensor | None = None,
    *,
    label: Tensor | None = None,
    weights: Tensor | None = None,
    beta: float = 0.1,
    snr_value: float = 0.5,
    num_train_timesteps: int = 1000,
) -> LossOutput:
    """MaPO per sample: ``err_w - β·log σ(T·(g(err_w) - g(err_l)))``; the mean is the authors' loss.

    Implicit rewards (our shared metric names) are ``T·g(err)``, so ``rewards/margins`` is the logit inside the
    log-sigmoid. Also logged as the authors do: ``mapo/win_score`` (mean g(err_w)), ``mapo/lose_score``,
    ``mapo/or_loss`` (``-β·mean log σ``).

    Worked example (a = 0.5, β = 0.1). Equal errors ``0.2, 0.2``: ``log σ(0) = -log 2`` and the loss is
    ``0.2 + 0.1·0.693147 = 0.269315``. ``err_w = 0.1, err_l = 0.2`` with ``T = 10``: ``g(0.1) = 0.05/(e^0.05 - 1) =
    0.975208``, ``g(0.2) = 0.950833``, logit ``10·0.024375 = 0.243751``, ``log σ = -0.578680``, loss ``0.157868``.

    Args:
        err_w: ``[B]`` policy denoising error of the preferred sample (mean over non-batch dims, float32 in code).
        err_l: ``[B]`` policy error of the dispreferred sample.
        ref_err_w: unused; must be None (MaPO is reference-free; its config says ``needs_reference: false``).
        ref_err_l: unused; must be None.
        label: optional ``[B]``; must be all ones when given (MaPO takes hard labels; ties removed upstream).
        weights: optional ``[B]`` per-sample weights, multiplied into ``losses`` before the mean.
        beta: ``--beta_mapo``, weight of the odds-ratio term (0.1 in ``args.py``).
        snr_value: ``--snr_value`` a in ``g`` (0.5 in ``args.py``).
        num_train_timesteps: T multiplying the log-odds (``noise_scheduler.config.num_train_timesteps``, 1000).

    Returns:
        ``LossOutput`` with the shared metrics (``mse/ref_*`` absent) and the ``mapo/*`` keys.
    """
    method = "mapo_loss"
    check_pairwise(method, err_w, err_l, label=label)
    refuse_reference(method, ref_err_w, ref_err_l)
    require_hard_label(method, label)
    err_w, err_l = to_float32(err_w, err_l)
    score_w, score_l = mapo_score(err_w, snr_value), mapo_score(err_l, snr_value)
    logits = (score_w - score_l) * num_train_timesteps
    ratio = torch.nn.functional.logsigmoid(logits)
    losses = apply_weights(err_w - beta * ratio, weights, method)
    reward_w, reward_l = score_w * num_train_timesteps, score_l * num_train_timesteps
    metrics = metric_dict(
        **{
            "rewards/chosen": reward_w,
            "rewards/rejected": reward_l,
            "rewards/margins": logits,
            "rewards/accuracies": (logits > 0).float(),
            "mse/policy_chosen": err_w,
            "mse/policy_rejected": err_l,
            "mapo/win_score": score_w,
            "mapo/lose_score": score_l,
            "mapo/or_loss": -beta * ratio,
        }
    )
    return LossOutput(loss=losses.mean(), losses=losses, metrics=metrics)
