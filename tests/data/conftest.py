"""Session fixtures for the data tests: the tiny synthetic datasets, written once and read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion_align.testing.data import (
    write_tiny_pairwise_parquet,
    write_tiny_ranked_parquet,
    write_tiny_video_pairs_parquet,
)


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """16 rows (2 ties, the other rows alternating label 1 and 0) in 2 files."""
    return write_tiny_pairwise_parquet(tmp_path_factory.mktemp("tiny_pairs"), n_rows=16, ties=2, n_files=2)


@pytest.fixture(scope="session")
def tiny_ranked(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """4 prompts x 4 candidates, rows shuffled across 2 files."""
    return write_tiny_ranked_parquet(tmp_path_factory.mktemp("tiny_ranked"), n_prompts=4, k=4, n_files=2)


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """6 video pairs (1 tie) of 4 frames and 2 segments each."""
    return write_tiny_video_pairs_parquet(
        tmp_path_factory.mktemp("tiny_videos"), n_rows=6, num_frames=4, ties=1
    )
