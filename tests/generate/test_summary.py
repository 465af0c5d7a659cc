"""Score moments merged across shards equal the statistics of all values; the summary prints them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffusion_align.generate import GenerationSummary, ScoreStats
from diffusion_align.generate.summary import moments


def test_moments_of_parts_merge_to_the_whole():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=50)
    merged = ScoreStats.merge([moments(values[:7]), moments([]), moments(values[7:])])
    assert merged.count == 50
    assert merged.mean == pytest.approx(values.mean()) and merged.std == pytest.approx(values.std())
    assert (merged.min, merged.max) == (values.min(), values.max())
    assert ScoreStats.merge([moments([])]) is None


def test_summary_from_markers_counts_and_prints():
    stats = [{"prompts": 2, "candidates": 8, "pairs": 3, "ties": 1, "scores": {"score": moments([1.0, 3.0])},
              "margins": moments([0.5])},
             {"prompts": 1, "candidates": 4, "pairs": 1, "ties": 0, "scores": {"score": moments([2.0])},
              "margins": moments([1.5])}]
    summary = GenerationSummary.from_markers(Path("out"), 3, [{"stats": s} for s in stats])
    assert not summary.complete and (summary.prompts, summary.candidates, summary.pairs, summary.ties) == (3, 12, 4, 1)
    assert summary.scores["score"].mean == pytest.approx(2.0) and summary.margins.mean == pytest.approx(1.0)
    text = str(summary)
    assert "2/3 shards complete" in text and "pairs 4 (ties 1)" in text and "pair margin" in text
    assert summary.as_dict()["complete"] is False
