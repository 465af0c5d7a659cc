"""Typed carriers shared by losses, adapters, references and the trainer.

Shapes use these letters: ``B`` pairs (or prompts) in the local batch, ``K`` ranked candidates per prompt,
``S`` temporal segments of a video, ``C, H, W`` latent channels and size, ``F`` latent frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LossOutput:
    """What every preference loss returns.

    Attributes:
        loss: 0-dim float32 tensor, the scalar the trainer back-propagates (mean of ``losses`` unless the
            method's own reduction says otherwise).
        losses: per-sample loss, shape ``[B]`` (float32); what weighting, logging and tests look at.
        metrics: detached 0-dim tensors under the shared metric names (``rewards/chosen``,
            ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``mse/policy_chosen``,
            ``mse/policy_rejected``, ``mse/ref_chosen``, ``mse/ref_rejected``) plus method-specific keys.
            Reading them never syncs the device: call ``.item()`` only at logging intervals.
    """

    loss: Tensor
    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def metrics_as_floats(self) -> dict[str, float]:
        """Host copies of the metrics (one device sync); use at logging intervals only."""
        return {k: float(v) for k, v in self.metrics.items()}


def metric_dict(**values: Tensor) -> dict[str, Tensor]:
    """Detach metric values and reduce each to a float32 0-dim tensor (batch mean where it has several)."""
    return {k: v.detach().float().mean() for k, v in values.items()}


@dataclass
class PreferenceBatch:
    """One training batch of B prompts with K candidates each (K = 2 for pairwise data, winner first).

    Exactly one image source is set: ``pixel_values`` (decode + VAE on the fly) or ``latent_mean``/``latent_std``
    (the latent cache: the VAE posterior, so every step still samples a fresh latent as the authors' scripts do).
    Exactly one text source is set: ``prompts`` are always present for logging; ``prompt_embeds`` when cached.

    Attributes:
        prompts: ``B`` captions (after prompt dropout: a dropped prompt is ``""``).
        pixel_values: ``[B, K, 3, H, W]`` (video ``[B, K, F, 3, H, W]``) float in [-1, 1].
        latent_mean: ``[B, K, C, h, w]`` (video ``[B, K, C, f, h, w]``) unscaled VAE posterior mean.
        latent_std: same shape as ``latent_mean``; posterior standard deviation.
        prompt_embeds: cached text conditioning: name -> ``[B, ...]`` (adapter-specific keys).
        label: ``[B]`` probability that candidate 0 is preferred, after the tie policy (1.0 = hard label).
        scores: ``[B, K]`` per-candidate scores (ranked data; reward scores for SmPO's smoothed label).
        desirable: ``[B, K]`` bool, for unpaired (KTO) data.
        segment_label: ``[B, S]`` per-temporal-segment label (1: candidate 0 better, 0: candidate 1, 0.5: tie).
        index: ``[B]`` int64 dataset row of each prompt (for logs, caches and resume checks).
    """

    prompts: list[str]
    pixel_values: Tensor | None = None
    latent_mean: Tensor | None = None
    latent_std: Tensor | None = None
    prompt_embeds: dict[str, Tensor] | None = None
    label: Tensor | None = None
    scores: Tensor | None = None
    desirable: Tensor | None = None
    segment_label: Tensor | None = None
    index: Tensor | None = None

    @property
    def num_candidates(self) -> int:
        source = self.pixel_values if self.pixel_values is not None else self.latent_mean
        if source is None:
            raise ValueError("PreferenceBatch has neither pixel_values nor latent_mean")
        return source.shape[1]
