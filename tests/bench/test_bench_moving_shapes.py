"""bench/bench_moving_shapes.py, short: both video methods run a whole demo on the tiny Wan and fill the table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_moving_shapes.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_moving_shapes", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_flow_dpo_and_densedpo_and_prints_the_table(tmp_path, capsys):
    rows = load_bench().main([
        "--steps", "2", "--prompts", "8", "--eval-prompts", "3", "--out", str(tmp_path),
        "model.adapter.path=${tiny_model:wan}", "generate.num_inference_steps=2", "generate.images_per_prompt=3", "generate.pairs.keep_fraction=0.5",
        "generate.dense.temporal_compression=4", "generate.dense.segments=2", "data.loader.batch_size=2",
        "evaluate.n_resamples=50",
    ])
    assert [row["method"] for row in rows] == ["flow_dpo", "densedpo"]
    for row in rows:
        assert 0.0 <= row["exact_before"] <= 1.0 and 0.0 <= row["exact_after"] <= 1.0
        assert row["win_low"] <= row["win_rate"] <= row["win_high"] and row["seconds"] > 0
    assert json.loads((tmp_path / "bench_moving_shapes.json").read_text()) == rows
    table = capsys.readouterr().out
    assert "flow_dpo" in table and "densedpo" in table and "win rate vs base" in table
