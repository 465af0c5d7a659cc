"""Sweep summaries (diffusion_align/sweep.py) on hand-made job directories; the real 2 x 2 multirun that writes one
is checked in tests/test_configs.py (test_multirun_over_methods_and_beta_trains_four_jobs)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from diffusion_align.sweep import (
    JOB_RESULT,
    SUMMARY_CSV,
    SUMMARY_JSON,
    collect,
    flatten,
    job_metrics,
    parse_override,
    to_jsonable,
    write_summary,
)


@dataclass
class _Stats:
    mean: float
    path: Path


def test_to_jsonable_handles_dataclasses_paths_and_non_finite_numbers():
    value = {"a": _Stats(mean=math.nan, path=Path("/x")), "b": (1, math.inf), 3: "s"}
    assert to_jsonable(value) == {"a": {"mean": None, "path": "/x"}, "b": [1, None], "3": "s"}


def test_flatten_joins_keys_and_indexes_lists_of_records():
    tree = {"train/loss": 0.5, "summary": [{"model": "base", "mean": 0.3}], "shape": [1, 2]}
    assert flatten(tree) == {"train/loss": 0.5, "summary.0.model": "base", "summary.0.mean": 0.3, "shape": "[1, 2]"}


def test_job_metrics_reads_a_returned_summary_or_the_metrics_file(tmp_path):
    assert job_metrics(_Stats(mean=0.5, path=tmp_path), tmp_path) == {"mean": 0.5, "path": str(tmp_path)}  # generate
    assert job_metrics(tmp_path, tmp_path) == {}
    (tmp_path / "metrics.json").write_text('{"step": 7}')  # train, evaluate
    assert job_metrics(tmp_path, tmp_path) == {"step": 7}


@pytest.mark.parametrize(("override", "expected"), [
    ("method=dpo", ("method", "dpo")),
    ("+experiment=sweep_beta", ("experiment", "sweep_beta")),
    ("trainer.optimizer.lr=1e-4", ("trainer.optimizer.lr", "1e-4")),
])
def test_parse_override(override, expected):
    assert parse_override(override) == expected


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None, status: str = "completed") -> None:
    job_dir = sweep / str(num)
    (job_dir / ".hydra").mkdir(parents=True)
    record = {"job": num, "overrides": overrides, "status": status}
    if metrics is not None:
        record["metrics"] = metrics
    if status == "failed":
        record["error"] = "ValueError: bad beta"
    (job_dir / JOB_RESULT).write_text(json.dumps(record))


def test_collect_orders_jobs_and_lists_failed_and_missing_ones(tmp_path):
    _job(tmp_path, 10, ["method.loss.beta=2000"], {"train/loss": 0.6})
    _job(tmp_path, 2, ["method.loss.beta=5000"], {"train/loss": 0.4, "step": 3})
    _job(tmp_path, 3, ["method.loss.beta=-1"], None, status="failed")
    (tmp_path / "4" / ".hydra").mkdir(parents=True)  # a job that never reported (killed node)
    (tmp_path / ".submitit").mkdir()
    rows = collect(tmp_path)
    assert [row.get("job") for row in rows] == [2, 3, 10, None]
    assert rows[0] == {"job": 2, "job_dir": "2", "status": "completed", "method.loss.beta": "5000",
                       "overrides": "method.loss.beta=5000", "train/loss": 0.4, "step": 3}
    assert rows[1]["status"] == "failed" and rows[1]["error"] == "ValueError: bad beta"
    assert rows[3] == {"job_dir": "4", "status": "missing"}


def test_write_summary_has_a_column_for_every_key_and_reads_back(tmp_path):
    rows = [{"job": 0, "status": "completed", "train/loss": 0.5}, {"job": 1, "status": "failed", "error": "x"}]
    csv_path, json_path = write_summary(tmp_path, rows)
    with csv_path.open() as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["job", "status", "train/loss", "error"]
    assert read[0]["train/loss"] == "0.5" and read[1]["error"] == "x" and read[1]["train/loss"] == ""
    assert json.loads(json_path.read_text()) == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_CSV, SUMMARY_JSON]  # no temporaries left
