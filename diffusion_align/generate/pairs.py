"""Choosing training pairs from ranked candidates.

Strategies (``PairSelection.strategy``):

* ``best_vs_worst``: one pair per prompt, its best and its worst candidate (the usual Syn-Pic -> DPO reduction);
* ``all_pairs``: every unordered pair of a prompt's candidates, ``K(K-1)/2`` per prompt;
* ``margin``: the pairs of ``all_pairs`` whose ensemble-score gap is at least ``min_margin``;
* ``fifa``: the pairs of ``all_pairs`` with the largest gaps, the top ``keep_fraction`` of each shard, after FiFA
  (Yang et al. 2024, "Automated Filtering of Human Feedback Data for Aligning Text-to-Image Diffusion Models"),
  which keeps the pairs a proxy reward separates most clearly; FiFA's text-diversity term is not included.

A pair keeps candidate order (the lower candidate index is ``jpg_0``), so ``label_0`` is 1 or 0 as the scores
fall; a gap of at most ``tie_tolerance`` is a tie (0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

from torch import Tensor

STRATEGIES = ("best_vs_worst", "all_pairs", "margin", "fifa")


@dataclass(frozen=True)
class PairSelection:
    """How pairs are drawn from each prompt's ranked candidates.

    Attributes:
        strategy: one of :data:`STRATEGIES`.
        min_margin: ``margin``: the smallest ensemble-score gap kept (in the ensemble's units).
        keep_fraction: ``fifa``: the fraction of a shard's candidate pairs kept, largest gaps first, in (0, 1].
        tie_tolerance: gaps up to this are ties (label 0.5); 0 = only equal scores.
    """

    strategy: str = "best_vs_worst"
    min_margin: float = 0.0
    keep_fraction: float = 0.5
    tie_tolerance: float = 0.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"pairs.strategy '{self.strategy}': expected one of {STRATEGIES}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"pairs.keep_fraction {self.keep_fraction}: expected a value in (0, 1]")
        if self.min_margin < 0 or self.tie_tolerance < 0:
            raise ValueError(
                f"pairs.min_margin {self.min_margin} / tie_tolerance {self.tie_tolerance}: expected >= 0"
            )


@dataclass(frozen=True)
class Pair:
    """Candidates ``first`` and ``second`` (indices within group ``group``) and ``label_0`` (1: first better)."""

    group: int
    first: int
    second: int
    label_0: float
    margin: float


def make_pair(group: int, i: int, j: int, score: Tensor, tie_tolerance: float) -> Pair:
    """The pair (i, j) in candidate order, labelled by the scores."""
    first, second = min(i, j), max(i, j)
    gap = float(score[first] - score[second])
    label = 0.5 if abs(gap) <= tie_tolerance else (1.0 if gap > 0 else 0.0)
    return Pair(group, first, second, label, abs(gap))


def group_pairs(group: int, score: Tensor, rank: Tensor, selection: PairSelection) -> list[Pair]:
    """The candidate pairs of one prompt group before any shard-level filtering."""
    if len(score) < 2:
        raise ValueError(f"group {group}: {len(score)} candidate(s), pairs need at least 2")
    if selection.strategy == "best_vs_worst":
        ranks = rank.tolist()
        best, worst = ranks.index(0), ranks.index(len(ranks) - 1)
        return [make_pair(group, best, worst, score, selection.tie_tolerance)]
    pairs = [make_pair(group, i, j, score, selection.tie_tolerance) for i, j in combinations(range(len(score)), 2)]
    if selection.strategy == "margin":
        pairs = [pair for pair in pairs if pair.margin >= selection.min_margin]
    return pairs


def select_pairs(groups: list[tuple[Tensor, Tensor]], selection: PairSelection) -> list[Pair]:
    """The pairs of a shard's groups (``(score [K], rank [K])`` each), in group then candidate order."""
    pairs = [pair for g, (score, rank) in enumerate(groups) for pair in group_pairs(g, score, rank, selection)]
    if selection.strategy != "fifa" or not pairs:
        return pairs
    keep = math.ceil(selection.keep_fraction * len(pairs))
    by_margin = sorted(range(len(pairs)), key=lambda i: -pairs[i].margin)  # stable: ties keep pair order
    kept = sorted(by_margin[:keep])
    return [pairs[i] for i in kept]
