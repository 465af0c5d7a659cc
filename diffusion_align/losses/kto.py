"""Diffusion-KTO (Li et al., NeurIPS 2024): preference optimisation from unpaired per-image labels.

Source: ``jacklishufan/diffusion-kto`` ``train_kto_sd_v1.5.py`` (halo "sigmoid")::

    g  = ref_mse - model_mse
    kl = clamp(mean_batch(g), min=0).detach()        # the authors all-reduce this mean over processes
    h  = σ((2y - 1) · β · (g - kl))
    L  = mean(λ_y · (1 - h))

With several processes (``torch.distributed`` initialized, as under ``accelerate launch``) the KL estimate is the
authors' all-reduced one: the mean of the processes' batch means, clamped; ``kl_all_reduce=False`` keeps each
process's own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from diffusion_align.losses.common import apply_weights, check_same_shape, check_vector
from diffusion_align.types import LossOutput, metric_dict


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` (0 when the mask is empty)."""
    mask = mask.float()
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def batch_mean(values: Tensor, all_reduce: bool) -> Tensor:
    """Mean of ``values``, averaged over the processes of ``torch.distributed`` (equal batches) if ``all_reduce``."""
    mean = values.mean()
    if all_reduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        mean = mean.clone()
        dist.all_reduce(mean)
        mean = mean / dist.get_world_size()
    return mean


def kto_loss(
    err: Tensor,
    ref_err: Tensor | None,
    desirable: Tensor,
    *,
    beta: float = 1000.0,
    lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0,
    weights: Tensor | None = None,
    kl_all_reduce: bool = True,
) -> LossOutput:
    """Diffusion-KTO loss per image: ``λ_y·(1 - σ((2y-1)·β·(g - kl)))`` with ``g = ref_err - err``.

    Worked example (β = 1): ``err = [0.2, 0.6]``, ``ref_err = [0.5, 0.5]``, ``desirable = [True, False]``:
    ``g = [0.3, -0.1]``, ``kl = max(mean g, 0) = 0.1``; the desirable image has ``h = σ(0.2)``, the undesirable one
    ``h = σ(-1·(-0.2)) = σ(0.2)``; both losses ``1 - σ(0.2) = 0.450166`` and so is the loss.

    Args:
        err: ``[N]`` policy denoising error per image (mean over non-batch dims).
        ref_err: ``[N]`` reference error per image (required).
        desirable: ``[N]`` bool, True for a desirable (positive) image.
        beta: ``--beta_dpo`` scale of the implicit reward (1000 in the authors' script; no 0.5 factor).
        lambda_desirable: λ_d, weight of desirable images (1.0).
        lambda_undesirable: λ_u, weight of undesirable images (1.0).
        weights: optional ``[N]`` per-image weights, multiplied into ``losses`` before the mean.
        kl_all_reduce: average the batch mean of ``g`` over the processes (an all-reduce, as the authors) when
            ``torch.distributed`` runs more than one; ``False``: this process's batch alone.

    Returns:
        ``LossOutput`` with ``losses`` ``[N]``. Rewards ``β·g``: ``rewards/chosen`` is their mean over desirable
        images, ``rewards/rejected`` over undesirable ones (0 when a group is empty); ``rewards/accuracies`` the
        fraction with ``(2y-1)·(g - kl) > 0``; ``kto/kl`` the detached KL estimate.
    """
    method = "kto_loss"
    if ref_err is None:
        raise ValueError(f"{method} needs 'ref_err' ([N] reference errors): set needs_reference: true")
    check_vector(err, "err", method)
    check_same_shape(method, err=err, ref_err=ref_err, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise ValueError(f"{method}: 'desirable' must be a bool tensor, got dtype {desirable.dtype}")
    err, ref_err = err.float(), ref_err.float()
    g = ref_err - err
    kl = batch_mean(g.detach(), kl_all_reduce).clamp(min=0)
    sign = desirable.float() * 2.0 - 1.0
    h = torch.sigmoid(sign * beta * (g - kl))
    lam = torch.where(desirable, torch.full_like(g, lambda_desirable), torch.full_like(g, lambda_undesirable))
    losses = apply_weights(lam * (1.0 - h), weights, method)
    rewards = beta * g
    chosen, rejected = _masked_mean(rewards, desirable), _masked_mean(rewards, ~desirable)
    metrics = metric_dict(
        **{
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": (sign * (g - kl) > 0).float(),
            "mse/policy_chosen": _masked_mean(err, desirable),
            "mse/policy_rejected": _masked_mean(err, ~desirable),
            "mse/ref_chosen": _masked_mean(ref_err, desirable),
            "mse/ref_rejected": _masked_mean(ref_err, ~desirable),
            "kto/kl": kl,
            "kto/desirable_fraction": desirable.float(),
        }
    )
    return LossOutput(loss=losses.mean(), losses=losses, metrics=metrics)
