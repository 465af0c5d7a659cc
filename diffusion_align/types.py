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
