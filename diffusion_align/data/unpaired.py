"""Unpaired view of pairwise data for Diffusion-KTO (Li et al., NeurIPS'24): each image alone, desirable or not."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import Dataset

from diffusion_align.data.datasets import PairwiseParquetDataset

LABELLINGS = ("per_image", "per_pair")


def _tie_error(pair: int) -> ValueError:
    return ValueError(
        f"source item {pair} is a tie (label 0.5): it has no desirable image; build the source with tie_policy='drop'"
    )


class UnpairedDataset(Dataset):
    """Unpaired view of a pairwise dataset for Diffusion-KTO: each image alone, with a ``desirable`` flag.

    Items have K = 1 (``pixel_values`` or ``latent_mean``/``latent_std`` ``[1, ...]``, ``scores`` ``[1]``) and
    ``desirable`` ``[1]`` bool, no ``label``; ``index`` is the item's position in this view.

    Args:
        source: a dataset whose items hold two candidates, winner first (a :class:`PairwiseParquetDataset`, or,
            with ``labelling="per_pair"``, a cached one). Ties (label 0.5) have no desirable image and raise: build
            the source with ``tie_policy="drop"``.
        labelling: ``per_image`` (the authors': diffusion-kto ``train_kto_sd_v1.5.py``, ``--policy
            gt_label_wi_l``): every distinct image once, desirable if it won at least one of its pairs (their
            'exclusive_win' and 'intersections'), undesirable if it only lost; images are told apart by Pick-a-Pic's
            ``image_0_uid``/``image_1_uid``, else by a hash of their bytes (:meth:`PairwiseParquetDataset.image_keys`),
            and an image takes the caption and augmentation of the first pair it appears in. ``per_pair``: item
            ``j`` is candidate ``j % 2`` of source item ``j // 2``, every pair's winner desirable and its loser
            undesirable, so an image that wins one pair and loses another appears twice, once with each label.
    """

    sliced_fields = ("pixel_values", "latent_mean", "latent_std", "scores")

    def __init__(self, source: Dataset, labelling: str = "per_image") -> None:
        if labelling not in LABELLINGS:
            raise ValueError(f"labelling '{labelling}': expected one of {', '.join(LABELLINGS)}")
        self.source, self.labelling = source, labelling
        # per image: (source item, candidate, desirable) of every distinct image; per pair: computed per index
        self._plan = self._per_image_plan(source) if labelling == "per_image" else None

    @staticmethod
    def _per_image_plan(source: Dataset) -> np.ndarray:
        """``[M, 3]`` int64 rows (source item, candidate, desirable) for the M distinct images, by first appearance."""
        if not isinstance(source, PairwiseParquetDataset):
            raise TypeError(
                f"UnpairedDataset(labelling='per_image') needs the image identities of a PairwiseParquetDataset, "
                f"got {type(source).__name__}: build the view over the Parquet pairs (UnpairedDataset.over moves it "
                "onto their latent cache), or use labelling='per_pair'"
            )
        ties = np.flatnonzero(source.item_labels() == 0.5)
        if len(ties):
            raise _tie_error(int(ties[0]))
        first: dict[str, tuple[int, int]] = {}  # image -> (source item, candidate) where it first appears
        won: dict[str, bool] = {}
        for item, pair in enumerate(source.image_keys().tolist()):
            for candidate, key in enumerate(pair):
                first.setdefault(key, (item, candidate))
                won[key] = won.get(key, False) or candidate == 0
        return np.array([(*first[key], won[key]) for key in first], dtype=np.int64).reshape(len(first), 3)

    def over(self, source: Dataset) -> UnpairedDataset:
        """This view (labelling, images and their order) over ``source``, a dataset with the same items as
        :attr:`source`, such as the latent cache of those pairs (a cache keeps no image identities)."""
        if len(source) != len(self.source):
            raise ValueError(
                f"UnpairedDataset.over: the new source has {len(source)} items, expected {len(self.source)} "
                "(the same items as the current source)"
            )
        view = copy.copy(self)
        view.source = source
        return view

    def __len__(self) -> int:
        return 2 * len(self.source) if self._plan is None else len(self._plan)

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0 .. {len(self) - 1}")
        if self._plan is None:
            pair, candidate = divmod(index, 2)
            desirable = candidate == 0
        else:
            pair, candidate, desirable = (int(v) for v in self._plan[index])
        item = self.source[pair]
        if float(item["label"]) == 0.5:
            raise _tie_error(pair)
        out = {"index": index, "prompt": item["prompt"], "desirable": torch.tensor([bool(desirable)])}
        out.update(
            {name: item[name][candidate : candidate + 1] for name in self.sliced_fields if name in item}
        )
        if "prompt_embeds" in item:
            out["prompt_embeds"] = item["prompt_embeds"]
        return out
