"""The reward-model interface: ``score(images, prompts) -> Tensor[N]`` with a documented scale.

Two entry points, one per use:

* :meth:`RewardModel.score`: ranking and evaluation. Images are PIL images or ``[N, 3, H, W]`` floats in [0, 1]
  (rounded to uint8 first, as saving them would); preprocessing is the authors' own (transformers processor or
  open_clip ``preprocess_val``); runs in batches of ``batch_size`` under ``torch.no_grad``; returns float32 on CPU.
* :meth:`RewardModel.score_tensor`: reward fine-tuning. Pixels ``[N, 3, H, W]`` in [0, 1] are resized and
  normalised with torch ops (:mod:`reward_models.preprocessing`) so gradients reach them; one batch; returns
  float32 on the model's device. Agrees with ``score`` up to the uint8 rounding of the reference pipeline.

Reward models are frozen (no parameter takes gradients) and in eval mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Union

import torch
from PIL import Image
from torch import Tensor, nn

from reward_models.preprocessing import ClipPreprocessing, check_pixels, pixels_to_pil, preprocess_pixels
from reward_models.video import (
    VIDEO_AGGREGATES,
    VideoScores,
    aggregate_frame_scores,
    flatten_groups,
    temporal_consistency,
)

Images = Union[Sequence[Image.Image], Tensor]  # N PIL images, or [N, 3, H, W] floats in [0, 1]


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float16"`` / ``"bfloat16"`` / ``torch.float32`` ... -> a ``torch.dtype``; ``ValueError`` names bad input."""
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch dtype name such as 'float32', got {dtype!r}")
    return resolved


def as_pil_images(images: Images) -> list[Image.Image]:
    """Images as a list of PIL images; tensors are checked ([N, 3, H, W], [0, 1]) and rounded to uint8."""
    if isinstance(images, Tensor):
        return pixels_to_pil(images)
    images = list(images)
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"images[{i}]: expected a PIL image or a [N, 3, H, W] tensor, got {type(image).__name__}")
    return images


class RewardModel(nn.Module, ABC):
    """A frozen scorer of (image, prompt) pairs. Subclasses document ``name``, ``scale`` and ``uses_prompts``.

    Attributes:
        name: short identifier, the key of this model's column in ensembles and score files.
        scale: what the numbers mean, e.g. ``"logit_scale × cosine"``, ``"AVA 1-10"``.
        uses_prompts: whether the score depends on the prompt (False: prompts may be ``None``).
        batch_size: images per forward pass in :meth:`score` when the call gives none.
    """

    name: ClassVar[str]
    scale: ClassVar[str]
    uses_prompts: bool = True

    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        """Where the weights are (inputs are moved there)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' floating dtype (pixel values are cast to it)."""
        return next(self.parameters()).dtype

    @abstractmethod
    def score(self, images: Images, prompts: Sequence[str] | None, batch_size: int | None = None) -> Tensor:
        """Rewards ``[N]`` float32 on CPU for N images and N prompts, without gradients."""

    @abstractmethod
    def score_tensor(self, pixels: Tensor, prompts: Sequence[str] | None) -> Tensor:
        """Rewards ``[N]`` float32 on the model's device for pixels ``[N, 3, H, W]`` in [0, 1], keeping gradients."""

    def freeze(self) -> None:
        """Eval mode and no parameter gradients: reward models are never trained here."""
        self.eval()
        self.requires_grad_(False)

    def check_prompts(self, prompts: Sequence[str] | None, n_images: int) -> list[str] | None:
        """``prompts`` as a list of ``n_images`` strings (or ``None`` when the model ignores prompts)."""
        if prompts is None:
            if self.uses_prompts:
                raise ValueError(f"{type(self).__name__} scores (image, prompt) pairs: prompts must be given")
            return None
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a sequence of strings, got a single string")
        prompts = list(prompts)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{i}]: expected a string, got {type(prompt).__name__}")
        if len(prompts) != n_images:
            raise ValueError(f"prompts: expected one prompt per image ({n_images}), got {len(prompts)}")
        return prompts

    def score_video(
        self,
        frames: Tensor | Sequence[Sequence[Image.Image]],
        prompts: Sequence[str] | None,
        aggregate: str = "mean",
        batch_size: int | None = None,
    ) -> VideoScores:
        """Score every frame with the video's prompt, then aggregate over frames.

        Args:
            frames: ``[N, F, 3, H, W]`` floats in [0, 1], or N lists of F PIL frames.
            prompts: one prompt per video (repeated for each of its frames).
            aggregate: ``"mean"`` or ``"min"`` of the per-frame scores, or ``"temporal_consistency"``: the mean
                cosine similarity of consecutive frames' L2-normalised image embeddings (CLIP-based models only;
                1 = static video, lower = flicker or jumps; the prompt plays no part).
            batch_size: frames per forward pass.

        Returns:
            ``VideoScores(scores [N], per_frame [N, F])``, float32 on CPU.
        """
        if aggregate not in VIDEO_AGGREGATES:
            raise ValueError(f"aggregate: expected one of {VIDEO_AGGREGATES}, got {aggregate!r}")
        flat, n_videos, n_frames = flatten_groups(frames)
        prompts = self.check_prompts(prompts, n_videos)
        frame_prompts = None if prompts is None else [p for p in prompts for _ in range(n_frames)]
        per_frame = self.score(flat, frame_prompts, batch_size).view(n_videos, n_frames)
        if aggregate != "temporal_consistency":
            return VideoScores(aggregate_frame_scores(per_frame, aggregate), per_frame)
        if not isinstance(self, ClipRewardModel):
            raise TypeError(f"{type(self).__name__} has no image embeddings: temporal_consistency needs a CLIP-based model")
        embeddings = self.image_embeddings(flat, batch_size).view(n_videos, n_frames, -1)
        return VideoScores(temporal_consistency(embeddings), per_frame)


class ClipRewardModel(RewardModel):
    """A reward computed from CLIP embeddings. Subclasses supply the reference preprocessing and the head.

    Subclasses set ``self.preprocessing`` (:class:`ClipPreprocessing`) and implement
    :meth:`pixel_values_from_pil` (the authors' preprocessing), :meth:`embed_pixel_values` and
    :meth:`reward_from_embeddings`; batching, devices, dtypes and the differentiable path live here.
    """

    preprocessing: ClipPreprocessing

    @abstractmethod
    def pixel_values_from_pil(self, images: list[Image.Image]) -> Tensor:
        """The reference preprocessing: PIL images -> normalised ``[n, 3, crop, crop]`` float32 on CPU."""

    @abstractmethod
    def embed_pixel_values(self, pixel_values: Tensor) -> Tensor:
        """Normalised pixel values ``[n, 3, crop, crop]`` -> L2-normalised image embeddings ``[n, D]``."""

    @abstractmethod
    def reward_from_embeddings(self, image_embeddings: Tensor, prompts: list[str] | None) -> Tensor:
        """L2-normalised image embeddings ``[n, D]`` (+ prompts) -> rewards ``[n]`` in the model's scale."""

    def score(self, images: Images, prompts: Sequence[str] | None, batch_size: int | None = None) -> Tensor:
        return self.map_batches(images, prompts, self.reward_from_embeddings, batch_size)

    def score_tensor(self, pixels: Tensor, prompts: Sequence[str] | None) -> Tensor:
        check_pixels(pixels)
        prompts = self.check_prompts(prompts, pixels.shape[0])
        pixel_values = preprocess_pixels(pixels.to(self.device, torch.float32), self.preprocessing)
        embeddings = self.embed_pixel_values(pixel_values.to(self.dtype))
        return self.reward_from_embeddings(embeddings, prompts).float()

    def image_embeddings(self, images: Images, batch_size: int | None = None) -> Tensor:
        """L2-normalised image embeddings ``[N, D]`` float32 on CPU (reference preprocessing, no gradients)."""
        return self.map_batches(images, None, lambda embeddings, _: embeddings, batch_size, head_uses_prompts=False)

    def map_batches(
        self,
        images: Images,
        prompts: Sequence[str] | None,
        head: Callable[[Tensor, list[str] | None], Tensor],
        batch_size: int | None = None,
        head_uses_prompts: bool = True,
    ) -> Tensor:
        """Run ``head(image_embeddings, prompts)`` over batches without gradients; results float32 on CPU.

        Args:
            images: N PIL images or ``[N, 3, H, W]`` in [0, 1] (rounded to uint8, then the reference preprocessing).
            prompts: N prompts (``None`` when the model or ``head`` ignores them).
            head: maps L2-normalised image embeddings ``[n, D]`` and the batch's prompts to ``[n, ...]``.
            batch_size: images per forward pass; ``self.batch_size`` when ``None``.
            head_uses_prompts: whether ``head`` reads prompts (then they are checked against ``uses_prompts``).
        """
        images = as_pil_images(images)
        if head_uses_prompts:
            prompts = self.check_prompts(prompts, len(images))
        step = batch_size or self.batch_size
        results = []
        with torch.no_grad():
            for start in range(0, len(images), step):
                pixel_values = self.pixel_values_from_pil(images[start : start + step])
                embeddings = self.embed_pixel_values(pixel_values.to(self.device, self.dtype))
                batch_prompts = None if prompts is None else prompts[start : start + step]
                results.append(head(embeddings, batch_prompts).float().cpu())
        if not results:
            raise ValueError("images: expected at least one image, got none")
        return torch.cat(results)
