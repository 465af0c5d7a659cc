"""Metric accumulation without per-step host syncs: tensors are summed on the device and read at log time."""

from __future__ import annotations

from torch import Tensor


class MetricAverager:
    """Running sums of 0-dim metric tensors between two logging points."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, Tensor], **more: Tensor) -> None:
        for name, value in {**metrics, **more}.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def pop(self, prefix: str = "") -> dict[str, float]:
        """Means since the last pop (one host sync per metric), under ``prefix``; then reset."""
        out = {f"{prefix}{k}": float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out
