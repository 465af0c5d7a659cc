"""Scoring candidates with a reward model or ensemble, and ranking each prompt's candidates.

Raw scores are computed in large batches over many prompts at once (:func:`raw_scores`); the ensemble score is
then combined **per prompt group** (:func:`group_scores`), because an ensemble normalises each member's scores
across the candidates it combines (Syn-Pic averages reward models over one prompt's images). With
``normalize="rank"`` the ensemble score of a candidate is the mean over reward models of the fraction of the
prompt's other candidates it beats: Syn-Pic's ψ.

Videos are scored frame by frame (every frame with its clip's prompt) and each member's frame scores are
aggregated per clip (``mean`` or ``min``) before the ensemble combines them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from reward_models.base import RewardModel
from reward_models.ensemble import RewardEnsemble
from reward_models.video import aggregate_frame_scores

FRAME_AGGREGATES = ("mean", "min")


def member_names(reward: RewardModel) -> list[str]:
    """Names of the raw score columns: an ensemble's members, or the single model's ``name``."""
    return list(reward.members) if isinstance(reward, RewardEnsemble) else [reward.name]


def raw_scores(
    reward: RewardModel, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int
) -> dict[str, Tensor]:
    """Each member's raw score of every image ``{name: [N]}`` (float32, CPU), in the member's own scale."""
    if isinstance(reward, RewardEnsemble):
        return reward.score_all(list(images), list(prompts), batch_size)
    return {reward.name: reward.score(list(images), list(prompts) if reward.uses_prompts else None, batch_size)}


def combine(reward: RewardModel, scores: dict[str, Tensor]) -> Tensor:
    """The ensemble score ``[n]`` of one group of candidates from their raw member scores (a model's own score)."""
    if isinstance(reward, RewardEnsemble):
        return reward.combine(scores)
    return scores[reward.name].float()


def descending_ranks(scores: Tensor) -> Tensor:
    """Rank of every score, 0 = highest; equal scores keep candidate order. ``[n]`` float -> ``[n]`` int64."""
    order = torch.sort(scores, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order))
    return ranks


def group_scores(reward: RewardModel, raw: dict[str, Tensor], sizes: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
    """Split ``raw`` (members -> ``[N]``) into consecutive groups of ``sizes``; ``(score [n], rank [n])`` each."""
    if sum(sizes) != len(next(iter(raw.values()))):
        raise ValueError(f"group sizes sum to {sum(sizes)}, but {len(next(iter(raw.values())))} candidates were scored")
    results, start = [], 0
    for size in sizes:
        score = combine(reward, {name: values[start : start + size] for name, values in raw.items()})
        results.append((score, descending_ranks(score)))
        start += size
    return results


def frame_images(clips: Sequence[np.ndarray]) -> list[Image.Image]:
    """Every frame of every clip (uint8 ``[F, H, W, 3]``), clip-major, as PIL images."""
    return [Image.fromarray(frame) for clip in clips for frame in clip]


def per_frame_raw_scores(
    reward: RewardModel, clips: Sequence[np.ndarray], prompts: Sequence[str], batch_size: int
) -> dict[str, list[Tensor]]:
    """Each member's score of every frame, split per clip: ``{name: [clip 0 [F0], clip 1 [F1], ...]}``."""
    frame_prompts = [prompt for clip, prompt in zip(clips, prompts) for _ in range(len(clip))]
    flat = raw_scores(reward, frame_images(clips), frame_prompts, batch_size)
    sizes = [len(clip) for clip in clips]
    return {name: list(torch.split(values, sizes)) for name, values in flat.items()}


def aggregate_clips(per_frame: dict[str, list[Tensor]], aggregate: str) -> dict[str, Tensor]:
    """Per-frame member scores -> one score per clip and member ``{name: [N]}`` (``mean`` or ``min``)."""
    if aggregate not in FRAME_AGGREGATES:
        raise ValueError(f"frame aggregate '{aggregate}': expected one of {FRAME_AGGREGATES}")
    return {
        name: torch.cat([aggregate_frame_scores(frames[None], aggregate) for frames in clips])
        for name, clips in per_frame.items()
    }
