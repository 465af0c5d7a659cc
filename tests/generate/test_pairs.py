"""Pair selection: best vs worst, all pairs, margin threshold, FiFA top fraction; labels and ties by hand."""

from __future__ import annotations

import pytest
import torch

from diffusion_align.generate import PairSelection, select_pairs
from diffusion_align.generate.ranking import descending_ranks


def group(*scores: float) -> tuple[torch.Tensor, torch.Tensor]:
    score = torch.tensor(scores)
    return score, descending_ranks(score)


def as_tuples(pairs) -> list[tuple]:
    return [(p.group, p.first, p.second, p.label_0, round(p.margin, 6)) for p in pairs]


GROUPS = [group(0.2, 1.0, -0.5), group(3.0, 3.0, 1.0)]


def test_best_vs_worst_one_pair_per_prompt_in_candidate_order():
    pairs = select_pairs(GROUPS, PairSelection("best_vs_worst"))
    # group 0: best is candidate 1, worst candidate 2 -> (1, 2), label 1; group 1: best 0 (tie kept in order), worst 2
    assert as_tuples(pairs) == [(0, 1, 2, 1.0, 1.5), (1, 0, 2, 1.0, 2.0)]


def test_all_pairs_label_by_score_and_ties_are_half():
    pairs = select_pairs(GROUPS, PairSelection("all_pairs"))
    assert as_tuples(pairs) == [
        (0, 0, 1, 0.0, 0.8), (0, 0, 2, 1.0, 0.7), (0, 1, 2, 1.0, 1.5),
        (1, 0, 1, 0.5, 0.0), (1, 0, 2, 1.0, 2.0), (1, 1, 2, 1.0, 2.0),
    ]
    tolerant = select_pairs(GROUPS, PairSelection("all_pairs", tie_tolerance=0.75))
    assert [p.label_0 for p in tolerant] == [0.0, 0.5, 1.0, 0.5, 1.0, 1.0]


def test_margin_keeps_pairs_with_a_gap_at_least_the_threshold():
    pairs = select_pairs(GROUPS, PairSelection("margin", min_margin=0.75))
    assert [(p.group, p.first, p.second) for p in pairs] == [(0, 0, 1), (0, 1, 2), (1, 0, 2), (1, 1, 2)]


def test_fifa_keeps_the_largest_gaps_of_the_shard():
    pairs = select_pairs(GROUPS, PairSelection("fifa", keep_fraction=0.5))
    # margins 0.8 0.7 1.5 0 2 2 -> the top 3 are 2, 2, 1.5, returned in pair order
    assert [(p.group, p.first, p.second) for p in pairs] == [(0, 1, 2), (1, 0, 2), (1, 1, 2)]
    assert len(select_pairs(GROUPS, PairSelection("fifa", keep_fraction=0.1))) == 1  # ceil(0.6)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="pairs.strategy 'random'"):
        PairSelection("random")
    with pytest.raises(ValueError, match=r"keep_fraction 0: expected a value in \(0, 1\]"):
        PairSelection("fifa", keep_fraction=0)
    with pytest.raises(ValueError, match="expected >= 0"):
        PairSelection("margin", min_margin=-1)
    with pytest.raises(ValueError, match="group 0: 1 candidate"):
        select_pairs([group(1.0)], PairSelection())
