"""Ensembles of reward models, themselves reward models.

Syn-Pic (RankDPO, Karthik et al. 2024) labels its synthetic preferences by scoring each image with several
pre-trained reward models and **averaging their predictions**, then ranking the images by the average.
Reward models live on different scales (PickScore ≈ 21, HPS ≈ 0.3, aesthetic ≈ 5), so each model's scores are
first normalised across the images of one call:

* ``"zscore"``: ``(s - mean) / std`` over the batch (population std; a model whose scores are all equal
  contributes 0);
* ``"rank"``: each image's rank among the batch scaled to [0, 1] (0 = lowest, 1 = highest, ties share the
  average rank, a single image gets 0.5); not differentiable;
* ``"none"``: the raw scores (only meaningful for models on one scale).

The ensemble score is the weighted mean of the normalised scores. Because of the normalisation it depends on
which images are scored together: to rank each prompt's candidates, call once per prompt group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from reward_models.base import Images, RewardModel, as_pil_images
from reward_models.preprocessing import check_pixels

NORMALIZATIONS = ("zscore", "rank", "none")


def zscore(scores: Tensor) -> Tensor:
    """``[N]`` -> ``(scores - mean) / std`` with the population std; all-equal scores give zeros."""
    centred = scores - scores.mean()
    std = centred.pow(2).mean().sqrt()
    return centred / std.clamp_min(torch.finfo(scores.dtype).tiny)


def normalized_ranks(scores: Tensor) -> Tensor:
    """``[N]`` -> average rank of each score scaled to [0, 1] (lowest 0, highest 1, ties averaged, N=1 -> 0.5)."""
    if scores.numel() == 1:
        return torch.full_like(scores, 0.5)
    below = (scores[None, :] < scores[:, None]).sum(dim=1).to(scores.dtype)
    equal_others = (scores[None, :] == scores[:, None]).sum(dim=1).to(scores.dtype) - 1
    return (below + equal_others / 2) / (scores.numel() - 1)


def normalize_scores(scores: Tensor, normalize: str) -> Tensor:
    """Apply one of :data:`NORMALIZATIONS` to ``[N]`` scores."""
    if normalize == "zscore":
        return zscore(scores)
    if normalize == "rank":
        return normalized_ranks(scores)
    if normalize == "none":
        return scores
    raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")


class RewardEnsemble(RewardModel):
    """A weighted mean of normalised reward-model scores.

    Args:
        models: name -> reward model, or a sequence of reward models named by their ``name`` attribute.
        weights: name -> weight, or one weight per model in order; equal weights when ``None`` (Syn-Pic's mean).
        normalize: ``"zscore"``, ``"rank"`` or ``"none"`` (see the module docstring).
        batch_size: images per forward pass of each member when a call gives none.
        device: moves every member there when given (``None`` leaves them where they are).
    """

    name = "ensemble"
    scale = "weighted mean of per-model scores normalised across the call's images (zscore: unitless; rank: [0, 1])"

    def __init__(
        self,
        models: Mapping[str, RewardModel] | Sequence[RewardModel],
        weights: Mapping[str, float] | Sequence[float] | None = None,
        normalize: str = "zscore",
        batch_size: int = 16,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(batch_size)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
        self.members = nn.ModuleDict(self._named(models))
        self.weights = self._weights(weights)
        self.normalize = normalize
        self.uses_prompts = any(model.uses_prompts for model in self.members.values())
        if device is not None:
            self.to(device)

    @staticmethod
    def _named(models: Mapping[str, RewardModel] | Sequence[RewardModel]) -> dict[str, RewardModel]:
        pairs = list(models.items()) if isinstance(models, Mapping) else list(enumerate(models))
        for key, model in pairs:
            if not isinstance(model, RewardModel):
                raise TypeError(f"models[{key!r}]: expected a RewardModel, got {type(model).__name__}")
        named = dict(models) if isinstance(models, Mapping) else {model.name: model for _, model in pairs}
        if len(named) != len(pairs):
            raise ValueError(f"models: two members share a name in {[m.name for _, m in pairs]}; pass a mapping name -> model")
        if not named:
            raise ValueError("models: an ensemble needs at least one reward model")
        return named

    def _weights(self, weights: Mapping[str, float] | Sequence[float] | None) -> dict[str, float]:
        names = list(self.members)
        if weights is None:
            return {name: 1.0 for name in names}
        if isinstance(weights, Mapping):
            if set(weights) != set(names):
                raise ValueError(f"weights: expected keys {sorted(names)}, got {sorted(weights)}")
            resolved = {name: float(weights[name]) for name in names}
        elif len(weights) != len(names):
            raise ValueError(f"weights: expected {len(names)} weights for {names}, got {len(weights)}")
        else:
            resolved = dict(zip(names, map(float, weights)))
        if min(resolved.values()) < 0 or sum(resolved.values()) <= 0:
            raise ValueError(f"weights: expected non-negative weights with a positive sum, got {resolved}")
        return resolved

    def combine(self, scores: Mapping[str, Tensor]) -> Tensor:
        """Per-model raw scores ``{name: [N]}`` -> ``[N]`` weighted mean of the normalised scores."""
        total = sum(self.weights.values())
        parts = [self.weights[name] * normalize_scores(scores[name].float(), self.normalize) for name in self.members]
        return torch.stack(parts).sum(dim=0) / total

    def score_all(self, images: Images, prompts: Sequence[str] | None, batch_size: int | None = None) -> dict[str, Tensor]:
        """Each member's raw scores ``{name: [N]}`` (float32, CPU), in its own scale."""
        images = as_pil_images(images)
        prompts = self.check_prompts(prompts, len(images))
        step = batch_size or self.batch_size
        return {name: model.score(images, prompts if model.uses_prompts else None, step) for name, model in self.members.items()}

    def score(self, images: Images, prompts: Sequence[str] | None, batch_size: int | None = None) -> Tensor:
        return self.combine(self.score_all(images, prompts, batch_size))

    def score_tensor(self, pixels: Tensor, prompts: Sequence[str] | None) -> Tensor:
        if self.normalize == "rank":
            raise ValueError("normalize='rank' has no gradient; use 'zscore' or 'none' for score_tensor")
        check_pixels(pixels)
        prompts = self.check_prompts(prompts, pixels.shape[0])
        scores = {
            name: model.score_tensor(pixels, prompts if model.uses_prompts else None) for name, model in self.members.items()
        }
        return self.combine(scores)
