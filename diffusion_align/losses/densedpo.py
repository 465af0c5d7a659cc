"""DenseDPO (Wu et al. 2025, arXiv 2506.03517): Diffusion-DPO per temporal segment of a video pair.

[paper-recalled] No released code. The pair is two temporally aligned videos (StructuralDPO: both denoised from
the same partly-noised real video); each ~1 s segment carries its own label. Each decisive segment contributes a
Diffusion-DPO term restricted to its latent frames (errors from ``per_sample_error(..., segments=S)``); tied
segments are masked out. The reduction and β are not pinned by the paper: both are options here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from diffusion_align.losses.common import apply_weights, check_same_shape, require_reference, to_float32
from diffusion_align.types import LossOutput, metric_dict

SegmentReduction = Literal["segment_mean", "sample_mean"]


def _check_segment_labels(method: str, segment_label: Tensor) -> None:
    """Raise unless every label is 0, 0.5 or 1 (one device sync)."""
    valid = (segment_label == 0) | (segment_label == 0.5) | (segment_label == 1)
    if not bool(valid.all()):
        bad = torch.unique(segment_label[~valid].detach().float().cpu()).tolist()
        raise ValueError(f"{method}: segment_label values must be 1, 0 or 0.5 (tie), got {bad}")


def dense_dpo_loss(
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None = None,
    ref_err_l: Tensor | None = None,
    *,
    segment_label: Tensor,
    beta: float = 5000.0,
    weights: Tensor | None = None,
    reduction: SegmentReduction = "segment_mean",
) -> LossOutput:
    """Segment-level Diffusion-DPO.

    Per segment, ``x = -0.5·β·((err_w - ref_err_w) - (err_l - ref_err_l))`` (first minus second video); the term is
    ``-log σ(x)`` when the first is better (label 1), ``-log σ(-x)`` when the second is (label 0), none for a tie
    (0.5). ``losses[b]`` is the mean over the decisive segments of video pair b (0 if it has none), times its weight.

    Worked example (β = 10, B = 1, S = 3): errors give ``x = [1, 1, 1]``, ``segment_label = [1, 0, 0.5]``: terms
    ``0.31326`` and ``log(1 + e) = 1.31326``, the tie masked; loss ``0.81326``.

    Args:
        err_w: ``[B, S]`` policy error per segment of the first video (``w`` for the shared signature only: which
            video is better is per segment).
        err_l: ``[B, S]`` policy error per segment of the second video.
        ref_err_w, ref_err_l: ``[B, S]`` reference errors (required).
        segment_label: ``[B, S]`` in {1: first better, 0: second better, 0.5: tie, masked out}.
        beta: β in the −0.5·β convention (not pinned by the paper; 5000 as Diffusion-DPO's launchers).
        weights: optional ``[B]`` per-pair weights (timestep-aware), multiplied into ``losses``.
        reduction: ``segment_mean``: every decisive segment of the batch weighs the same (``loss = Σ_b n_b·losses_b
            / Σ_b n_b``); ``sample_mean``: mean of ``losses`` over pairs with at least one decisive segment.

    Returns:
        ``LossOutput``; rewards are oriented so "chosen" is each decisive segment's better video; averaged over
        decisive segments. ``densedpo/tie_fraction`` is the fraction of masked segments.
    """
    method = "dense_dpo_loss"
    if err_w.ndim != 2:
        raise ValueError(f"{method}: 'err_w' must have shape [B, S], got {tuple(err_w.shape)}")
    ref_err_w, ref_err_l = require_reference(method, ref_err_w, ref_err_l)
    check_same_shape(
        method,
        err_w=err_w,
        err_l=err_l,
        ref_err_w=ref_err_w,
        ref_err_l=ref_err_l,
        segment_label=segment_label,
    )
    _check_segment_labels(method, segment_label)
    err_w, err_l, ref_err_w, ref_err_l, label = to_float32(err_w, err_l, ref_err_w, ref_err_l, segment_label)
    reward_first, reward_second = -0.5 * beta * (err_w - ref_err_w), -0.5 * beta * (err_l - ref_err_l)
    orientation = 2.0 * label - 1.0  # +1 first better, -1 second better, 0 tie
    decisive = (label != 0.5).float()
    terms = -torch.nn.functional.logsigmoid(orientation * (reward_first - reward_second)) * decisive
    counts = decisive.sum(dim=1)
    losses = apply_weights(terms.sum(dim=1) / counts.clamp(min=1.0), weights, method)
    if reduction == "segment_mean":
        loss = (losses * counts).sum() / counts.sum().clamp(min=1.0)
    elif reduction == "sample_mean":
        loss = (losses * (counts > 0).float()).sum() / (counts > 0).float().sum().clamp(min=1.0)
    else:
        raise ValueError(f"{method}: reduction '{reduction}' is not 'segment_mean' or 'sample_mean'")
    metrics = _segment_metrics(
        reward_first, reward_second, err_w, err_l, ref_err_w, ref_err_l, label, decisive
    )
    return LossOutput(loss=loss, losses=losses, metrics=metrics)


def _segment_metrics(
    reward_first: Tensor,
    reward_second: Tensor,
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor,
    ref_err_l: Tensor,
    label: Tensor,
    decisive: Tensor,
) -> dict[str, Tensor]:
    """Shared metric names over decisive segments, oriented so "chosen" is the better video of each segment."""
    first_better = label == 1
    n = decisive.sum().clamp(min=1.0)

    def oriented_mean(first: Tensor, second: Tensor, chosen: bool) -> Tensor:
        picked = torch.where(first_better == chosen, first, second)
        return (picked * decisive).sum() / n

    chosen, rejected = (
        oriented_mean(reward_first, reward_second, True),
        oriented_mean(reward_first, reward_second, False),
    )
    margins = torch.where(first_better, reward_first - reward_second, reward_second - reward_first)
    return metric_dict(
        **{
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": ((margins > 0).float() * decisive).sum() / n,
            "mse/policy_chosen": oriented_mean(err_w, err_l, True),
            "mse/policy_rejected": oriented_mean(err_w, err_l, False),
            "mse/ref_chosen": oriented_mean(ref_err_w, ref_err_l, True),
            "mse/ref_rejected": oriented_mean(ref_err_w, ref_err_l, False),
            "densedpo/tie_fraction": 1.0 - decisive,
        }
    )
