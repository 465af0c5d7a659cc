"""A seeded epoch sampler: the order of epoch e is a permutation fixed by (seed, e), so a resumed run can skip the
batches already consumed at the sampler level, without decoding a single image."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochPermutationSampler(Sampler[int]):
    """Yields a fresh seeded permutation of ``range(length)`` each epoch (``set_epoch`` before iterating)."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())
