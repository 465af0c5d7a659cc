"""Per-sample denoising errors: the common currency every loss consumes.

All official scripts (Diffusion-DPO, MaPO, SmPO, KTO) reduce ``(pred - target)²`` by a **mean** over every
non-batch dimension, in float32: β is therefore tied to that convention, never to a sum.
"""

from __future__ import annotations

import torch
from torch import Tensor


def per_sample_error(
    pred: Tensor, target: Tensor, *, segments: int | None = None, frame_dim: int = 2
) -> Tensor:
    """Mean squared error per sample (float32), or per temporal segment of each sample.

    Example: ``pred = zeros(2, 1, 2)``, ``target = [[[1, 3]], [[0, 2]]]`` gives ``[(1 + 9)/2, (0 + 4)/2] = [5, 2]``.

    Args:
        pred: ``[N, ...]`` model prediction (ε, v or flow velocity); any float dtype.
        target: same shape as ``pred``.
        segments: if given, split the frame axis ``frame_dim`` into this many contiguous segments (with
            ``torch.tensor_split``: when F is not divisible by S the first ``F mod S`` segments get one extra frame)
            and return one mean per segment.
        frame_dim: the frame axis of video latents ``[N, C, F, H, W]`` (2); used only with ``segments``.

    Returns:
        float32 ``[N]``, or ``[N, S]`` with ``segments``.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"per_sample_error: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    if pred.ndim < 2:
        raise ValueError(f"per_sample_error: expected [N, ...] with at least 2 dims, got {tuple(pred.shape)}")
    squared = (pred.float() - target.float()) ** 2
    if segments is None:
        return squared.flatten(1).mean(dim=1)
    if not 0 < frame_dim < squared.ndim:
        raise ValueError(
            f"per_sample_error: frame_dim={frame_dim} is not a non-batch axis of shape {tuple(pred.shape)}"
        )
    num_frames = squared.shape[frame_dim]
    if not 1 <= segments <= num_frames:
        raise ValueError(
            f"per_sample_error: segments={segments} must be in [1, {num_frames}] (frames on dim {frame_dim})"
        )
    chunks = torch.tensor_split(squared, segments, dim=frame_dim)
    return torch.stack([chunk.flatten(1).mean(dim=1) for chunk in chunks], dim=1)
