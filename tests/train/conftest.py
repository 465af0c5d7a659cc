"""Helpers for training tests: run `diffalign train` in-process with hydra overrides, into a test directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from diffusion_align.cli import main


def train_cli(out_dir: Path, *overrides: str) -> Path:
    """``diffalign train debug=tiny <overrides>`` with outputs in ``out_dir``; returns ``out_dir``.

    ``HYDRA_FULL_ERROR=1`` makes hydra re-raise the job's own exception, so tests can assert on it.
    """
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # accelerate keeps one process-wide state (precision, device); each `diffalign train` is a fresh process in real
    # use, so runs in one test process start from a cleared state, as accelerate's own tests do.
    AcceleratorState._reset_state(reset_partial_state=True)
    main(["train", "debug=tiny", f"hydra.run.dir={out_dir}", "hydra/job_logging=disabled",
          "hydra/hydra_logging=disabled", *overrides])
    return out_dir


@pytest.fixture
def run_train():
    return train_cli
