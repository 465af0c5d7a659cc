"""Shared constants and helpers of the generator tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from diffusion_align.generate import PairSelection

PROMPTS = [
    "a red circle on a blue background",
    "a large green square at the left on a white background",
    "a small yellow triangle on a black background",
]
# The session's reference run: 3 prompts x 2 pipelines x K=2 = 12 images in 2 shards (2 + 1 prompts), every pair kept.
GENERATION = {
    "images_per_prompt": 2,
    "prompts_per_shard": 2,
    "pairs": PairSelection("all_pairs"),
    "reward_batch_size": 8,
    "progress": False,
}
SORT_KEYS = {"ranked": ["prompt_id", "candidate"], "pairs": ["prompt_id", "seed_0", "seed_1"],
             "dense_pairs": ["prompt_id", "seed_0"]}


def read_table(out_dir: Path, table: str) -> pa.Table:
    """Every shard of one table, rows in a canonical order."""
    files = sorted((out_dir / table).glob("*.parquet"))
    assert files, f"{out_dir / table}: no shards"
    rows = pa.concat_tables(pq.read_table(f) for f in files)
    return rows.sort_by([(key, "ascending") for key in SORT_KEYS[table]])


def load_train_cli():
    """``train_cli`` of tests/train/conftest.py (a conftest, so imported by path)."""
    path = Path(__file__).parents[1] / "train" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tests_train_conftest_for_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train_cli
