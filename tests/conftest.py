"""Session-wide test setup: no network, one thread per parallel worker, tiny pipelines built once per session (once
per worker when the suite runs in parallel).

Every tiny pipeline is a real diffusers architecture with seeded random weights (``diffusion_align.testing``),
built on first request into a session temp dir; later requests reuse the directory. Tests must treat these
directories as read-only: load with ``from_pretrained`` and save anywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Before anything imports huggingface_hub (it reads these once): no test may reach the Hub. The fixtures below
# import diffusion_align.testing (and with it diffusers/transformers) lazily, after this has run.
for _offline_flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_offline_flag] = "1"

MAX_WORKERS = 4  # more workers than this only repeat the session fixtures (tiny pipelines) for little gain

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per subprocess a test starts): N workers on N cores, never N x N threads, which
    # slows every worker down many times over (OpenMP threads spin while they wait).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most :data:`MAX_WORKERS`."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _isolated_tiny_cache(tmp_path_factory: pytest.TempPathFactory):
    """``${tiny_model:...}`` / ``${tiny_data:...}`` build into a session directory, never into the user's cache."""
    previous = os.environ.get("DIFFALIGN_CACHE")
    os.environ["DIFFALIGN_CACHE"] = str(tmp_path_factory.mktemp("diffalign_cache"))
    from diffusion_align.config import register_resolvers

    register_resolvers()
    yield
    if previous is None:
        os.environ.pop("DIFFALIGN_CACHE", None)
    else:
        os.environ["DIFFALIGN_CACHE"] = previous

TinyPipelineFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_pipeline_path(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelineFactory:
    """``tiny_pipeline_path(family, **builder_kwargs) -> Path``: built once per session and arguments.

    Example: ``tiny_pipeline_path("sd15", prediction_type="v_prediction")``.
    """
    from diffusion_align.testing import build_tiny_pipeline

    built: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}

    def get(family: str, **builder_kwargs: Any) -> Path:
        key = (family, tuple(sorted(builder_kwargs.items())))
        if key not in built:
            directory = tmp_path_factory.mktemp(f"tiny_{family}")
            built[key] = build_tiny_pipeline(family, directory, **builder_kwargs)
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_sd15_path(tiny_pipeline_path: TinyPipelineFactory) -> Path:
    return tiny_pipeline_path("sd15")


@pytest.fixture(scope="session")
def tiny_sdxl_path(tiny_pipeline_path: TinyPipelineFactory) -> Path:
    return tiny_pipeline_path("sdxl")


@pytest.fixture(scope="session")
def tiny_sd3_path(tiny_pipeline_path: TinyPipelineFactory) -> Path:
    return tiny_pipeline_path("sd3")


@pytest.fixture(scope="session")
def tiny_flux_path(tiny_pipeline_path: TinyPipelineFactory) -> Path:
    return tiny_pipeline_path("flux")


@pytest.fixture(scope="session")
def tiny_pixart_path(tiny_pipeline_path: TinyPipelineFactory) -> Path:
    return tiny_pipeline_path("pixart")


@pytest.fixture(scope="session")
def tiny_wan_path(tiny_pipeline_path: TinyPipelineFactory) -> Path:
    return tiny_pipeline_path("wan")


@pytest.fixture(scope="session")
def tiny_cogvideox_path(tiny_pipeline_path: TinyPipelineFactory) -> Path:
    return tiny_pipeline_path("cogvideox")


@pytest.fixture(scope="session")
def clip_tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved offline CLIP tokenizer (49,408 tokens, 77 positions) for ``CLIPTokenizer.from_pretrained``."""
    from diffusion_align.testing import build_clip_tokenizer

    directory = tmp_path_factory.mktemp("clip_tokenizer")
    build_clip_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def t5_tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved offline T5 Unigram tokenizer for ``T5Tokenizer.from_pretrained`` / ``AutoTokenizer``."""
    from diffusion_align.testing import build_t5_tokenizer

    directory = tmp_path_factory.mktemp("t5_tokenizer")
    build_t5_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory) -> Path:
    """16 tiny Pick-a-Pic-format pairs (32 px, no ties) for `diffalign train` runs, written once per session."""
    from diffusion_align.testing.data import write_tiny_pairwise_parquet

    directory = tmp_path_factory.mktemp("pairs")
    write_tiny_pairwise_parquet(directory, n_rows=16, resolution=32, seed=0, ties=0)
    return directory
