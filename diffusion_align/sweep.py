"""Sweep summaries: one row per job of a hydra multirun (``diffalign train -m ...``), as CSV and JSON.

:class:`SweepSummary` is a hydra callback (registered under ``hydra.callbacks`` by ``conf/train.yaml``,
``generate.yaml`` and ``evaluate.yaml``). It works the same with every launcher, because it passes through files:

* ``on_job_end`` runs inside the job's own process (the basic launcher's process, a submitit task on a SLURM node)
  and writes ``job_result.json`` into the job's output directory: the job number, its overrides, whether it
  completed (or the error), and its final metrics — the ``metrics.json`` the command wrote (``train``: the last
  logged averages; ``evaluate``: per-model means and win rates) or the returned summary (``generate``).
* ``on_multirun_end`` runs in the launching process once every job is back and gathers those files into
  ``<sweep dir>/sweep_summary.csv`` and ``sweep_summary.json`` (jobs in order; a job that left no result is listed as
  ``missing``). Override values and metrics become columns, so the CSV reads directly into a DataFrame.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from diffusion_align.io import write_text_atomic

log = logging.getLogger(__name__)

JOB_RESULT = "job_result.json"
METRICS = "metrics.json"
SUMMARY_CSV, SUMMARY_JSON = "sweep_summary.csv", "sweep_summary.json"


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths, tuples and non-finite floats as plain JSON values (NaN and inf become ``None``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}``; lists of dicts are indexed (``win_rates.0.rate``)."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(item, dict | list) for item in tree):
        items = ((str(index), item) for index, item in enumerate(tree))
    else:
        return {prefix: json.dumps(tree) if isinstance(tree, list) else tree}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def job_metrics(return_value: Any, output_dir: Path) -> dict:
    """The job's final metrics: its returned summary, or the ``metrics.json`` it wrote (``{}`` when neither)."""
    if dataclasses.is_dataclass(return_value) and not isinstance(return_value, type):
        return to_jsonable(return_value)
    metrics_file = output_dir / METRICS
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text(encoding="utf-8"))
    return {}


def parse_override(override: str) -> tuple[str, str]:
    """``"method.loss.beta=2000"`` -> ``("method.loss.beta", "2000")``; ``+``/``~`` prefixes dropped."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


class SweepSummary(Callback):
    """Hydra callback writing ``job_result.json`` per job and the sweep's ``sweep_summary.{csv,json}``."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode is None or str(config.hydra.mode) != "RunMode.MULTIRUN":
            return  # a single run has no sweep to summarise
        output_dir = Path(config.hydra.runtime.output_dir)
        record = {
            "job": int(config.hydra.job.num),
            "overrides": list(config.hydra.overrides.task),
            "status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
        }
        if job_return.status == JobStatus.COMPLETED:
            record["metrics"] = job_metrics(job_return.return_value, output_dir)
        else:
            record["error"] = f"{type(job_return._return_value).__name__}: {job_return._return_value}"
        write_text_atomic(output_dir / JOB_RESULT, json.dumps(to_jsonable(record), indent=1))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if not rows:
            return
        write_summary(sweep_dir, rows)
        log.info("sweep summary of %d jobs: %s", len(rows), sweep_dir / SUMMARY_CSV)


def collect(sweep_dir: Path) -> list[dict]:
    """One flat row per job directory of ``sweep_dir`` that holds a ``job_result.json`` or a hydra config."""
    rows = []
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        result_file = job_dir / JOB_RESULT
        if not result_file.is_file():
            if (job_dir / ".hydra").is_dir():
                rows.append({"job_dir": job_dir.name, "status": "missing"})
            continue
        record = json.loads(result_file.read_text(encoding="utf-8"))
        row = {"job": record["job"], "job_dir": job_dir.name, "status": record["status"]}
        row.update(parse_override(override) for override in record["overrides"])
        row["overrides"] = " ".join(record["overrides"])
        row.update(flatten(record.get("metrics", {})))
        if "error" in record:
            row["error"] = record["error"]
        rows.append(row)
    return sorted(rows, key=lambda row: (row.get("job", math.inf), row["job_dir"]))


def write_summary(sweep_dir: Path, rows: list[dict]) -> tuple[Path, Path]:
    """``sweep_summary.csv`` (a column per key seen in any row) and ``sweep_summary.json``, written atomically."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_text_atomic(sweep_dir / SUMMARY_CSV, buffer.getvalue())
    json_path = write_text_atomic(sweep_dir / SUMMARY_JSON, json.dumps(to_jsonable(rows), indent=1))
    return csv_path, json_path
