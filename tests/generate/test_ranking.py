"""Scoring for ranking: raw member scores, per-group ensemble combination, ranks, per-frame video aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_align.generate.ranking import (
    aggregate_clips,
    combine,
    descending_ranks,
    group_scores,
    member_names,
    per_frame_raw_scores,
    raw_scores,
)


def test_descending_ranks_best_first_ties_in_order():
    assert descending_ranks(torch.tensor([0.1, 0.9, 0.5, 0.9])).tolist() == [3, 0, 2, 1]


def test_ensemble_is_combined_within_each_group(tiny_ensemble):
    raw = {"pickscore": torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0]), "clip_score": torch.tensor([3.0, 2.0, 1.0, 5.0, 5.0])}
    (score_a, rank_a), (score_b, rank_b) = group_scores(tiny_ensemble, raw, [3, 2])
    torch.testing.assert_close(score_a, tiny_ensemble.combine({k: v[:3] for k, v in raw.items()}))
    torch.testing.assert_close(score_b, torch.tensor([-0.5, 0.5]))  # z-scores (-1, 1) and (0, 0), averaged
    assert rank_b.tolist() == [1, 0]
    with pytest.raises(ValueError, match="group sizes sum to 4, but 5 candidates"):
        group_scores(tiny_ensemble, raw, [2, 2])
    assert member_names(tiny_ensemble) == ["pickscore", "clip_score"]


def test_single_model_scores_are_its_own(tiny_ensemble):
    model = tiny_ensemble.members["pickscore"]
    images = [np.full((32, 32, 3), c, dtype=np.uint8) for c in (0, 120, 250)]
    raw = raw_scores(model, [Image.fromarray(i) for i in images], ["a", "b", "c"], 2)
    assert list(raw) == ["pickscore"] and member_names(model) == ["pickscore"]
    torch.testing.assert_close(combine(model, raw), raw["pickscore"])


def test_videos_are_scored_per_frame_then_aggregated_per_clip(tiny_ensemble):
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, size=(frames, 32, 32, 3), dtype=np.uint8) for frames in (3, 2)]
    per_frame = per_frame_raw_scores(tiny_ensemble, clips, ["a cat", "a dog"], batch_size=4)
    assert [len(v) for v in per_frame["pickscore"]] == [3, 2]
    direct = tiny_ensemble.score_all([Image.fromarray(f) for f in clips[1]], ["a dog"] * 2)
    torch.testing.assert_close(per_frame["clip_score"][1], direct["clip_score"])
    mean, low = aggregate_clips(per_frame, "mean"), aggregate_clips(per_frame, "min")
    torch.testing.assert_close(mean["pickscore"][0], per_frame["pickscore"][0].mean())
    torch.testing.assert_close(low["clip_score"][1], per_frame["clip_score"][1].min())
    with pytest.raises(ValueError, match="frame aggregate 'max'"):
        aggregate_clips(per_frame, "max")
