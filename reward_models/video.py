"""Scoring videos with image reward models: per-frame scores and their aggregation over frames.

The common practice for image rewards on video is to score every frame with the video's prompt and average
(e.g. per-frame PickScore, ``verl-project/verl-omni#415``). ``min`` is the pessimistic variant (a video is as
good as its worst frame). ``temporal_consistency`` measures smoothness instead of quality: the mean cosine
similarity between the CLIP image embeddings of consecutive frames (1 for a static video). Dedicated video
reward models (VideoReward, VideoScore) need multi-billion-parameter VLMs and are not wrapped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor

VIDEO_AGGREGATES = ("mean", "min", "temporal_consistency")


class VideoScores(NamedTuple):
    """The result of ``score_video``.

    Attributes:
        scores: ``[N]`` one aggregated score per video, float32 on CPU.
        per_frame: ``[N, F]`` the model's score of every frame with its video's prompt, float32 on CPU.
    """

    scores: Tensor
    per_frame: Tensor


def flatten_groups(groups: Tensor | Sequence[Sequence[Image.Image]]) -> tuple[Tensor | list[Image.Image], int, int]:
    """N groups of K images (a video's frames, a prompt's candidates) as one batch of ``N·K`` images, group-major.

    Args:
        groups: ``[N, K, 3, H, W]`` floats in [0, 1], or N sequences of K PIL images each.

    Returns:
        ``(images, N, K)``: ``images`` is ``[N·K, 3, H, W]`` or a list of ``N·K`` PIL images.
    """
    if isinstance(groups, Tensor):
        if groups.ndim != 5 or groups.shape[2] != 3:
            raise ValueError(f"expected a tensor [N, K, 3, H, W] (videos × frames or prompts × candidates), got {tuple(groups.shape)}")
        n_groups, group_size = groups.shape[:2]
        return groups.reshape(n_groups * group_size, *groups.shape[2:]), n_groups, group_size
    nested = [list(group) for group in groups]
    sizes = {len(group) for group in nested}
    if len(sizes) != 1:
        raise ValueError(f"every group (video, prompt) needs the same number of images, got sizes {sorted(sizes)}")
    return [image for group in nested for image in group], len(nested), sizes.pop()


def aggregate_frame_scores(per_frame: Tensor, aggregate: str) -> Tensor:
    """``[N, F]`` per-frame scores -> ``[N]`` by ``"mean"`` or ``"min"`` over frames."""
    if aggregate == "mean":
        return per_frame.mean(dim=1)
    if aggregate == "min":
        return per_frame.min(dim=1).values
    raise ValueError(f"aggregate: expected 'mean' or 'min' for per-frame scores, got {aggregate!r}")


def temporal_consistency(embeddings: Tensor) -> Tensor:
    """Mean cosine similarity of consecutive frames' image embeddings.

    Args:
        embeddings: ``[N, F, D]`` image embeddings (normalised here, so any scale works), ``F >= 2``.

    Returns:
        ``[N]`` in [-1, 1]: ``mean_t cos(e_t, e_{t+1})`` over the ``F - 1`` consecutive pairs.
    """
    if embeddings.ndim != 3 or embeddings.shape[1] < 2:
        raise ValueError(f"temporal_consistency needs embeddings [N, F, D] with F >= 2 frames, got {tuple(embeddings.shape)}")
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    return (unit[:, :-1] * unit[:, 1:]).sum(dim=-1).mean(dim=1)
