"""Fixtures of the robustness suite: tiny data, a finished tiny run to damage, and one torch thread.

Tests that need an untouched finished run copy :func:`finished_run` into their own ``tmp_path`` first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustness.helpers import load_train_cli


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: the machine's cores are shared, and tiny models gain nothing from more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def run_train():
    """``run_train(out_dir, *overrides)``: ``diffalign train debug=tiny`` in this process (tests/train/conftest.py)."""
    return load_train_cli()


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory) -> Path:
    """16 decisive pairs at 32 px in one directory (Pick-a-Pic columns plus ``ps_score_0/1``)."""
    from diffusion_align.testing.data import write_tiny_pairwise_parquet

    directory = tmp_path_factory.mktemp("robust_pairs")
    write_tiny_pairwise_parquet(directory, n_rows=16, resolution=32, seed=0, ties=0)
    return directory


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_pairs, run_train) -> Path:
    """A finished 2-step LoRA run with a checkpoint after each step (read-only: copy it before use)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("finished") / "run"
    return run_train(out, f"data.dataset.paths={tiny_pairs}", "trainer.checkpoint_every=1")
