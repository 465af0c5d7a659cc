"""Unpaired view of pairwise data for Diffusion-KTO (Li et al., NeurIPS'24): each image alone, desirable or not."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class UnpairedDataset(Dataset):
    """Unpaired view of a pairwise dataset for Diffusion-KTO: each image alone, with a ``desirable`` flag.

    Item ``j`` is candidate ``j % 2`` of source item ``j // 2``: the winner is desirable, the loser undesirable
    (Diffusion-KTO's use of Pick-a-Pic). Items have K = 1 and no ``label``. Works over any dataset whose items
    hold two candidates, winner first (a :class:`PairwiseParquetDataset` or a cached one); a tie (label 0.5) has no
    desirable image and raises.
    """

    sliced_fields = ("pixel_values", "latent_mean", "latent_std", "scores")

    def __init__(self, source: Dataset) -> None:
        self.source = source

    def __len__(self) -> int:
        return 2 * len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0 .. {len(self) - 1}")
        pair, candidate = divmod(index, 2)
        item = self.source[pair]
        if float(item["label"]) == 0.5:
            raise ValueError(
                f"source item {pair} is a tie (label 0.5): it has no desirable image; "
                "build the source with tie_policy='drop'"
            )
        out = {"index": index, "prompt": item["prompt"], "desirable": torch.tensor([candidate == 0])}
        out.update(
            {name: item[name][candidate : candidate + 1] for name in self.sliced_fields if name in item}
        )
        if "prompt_embeds" in item:
            out["prompt_embeds"] = item["prompt_embeds"]
        return out
