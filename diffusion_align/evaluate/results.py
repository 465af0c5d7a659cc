"""The results of an evaluation: one row per (model, prompt, sample), saved as Parquet and JSON, reloadable.

Table columns: ``model``, ``prompt_index``, ``sample_index``, ``prompt``, ``category`` (or null), ``seed``,
``image`` (path of the PNG; clips are frame strips), ``num_frames`` (1 for images), and one ``score/<reward>``
column per reward model (ensembles add ``score/<reward>/<member>``: each member's raw score). In memory, image
paths are absolute; on disk they are relative to the results file's folder when inside it.

``results.json`` holds everything (rows, models, rewards, settings, per-model means and pairwise win rates);
``results.parquet`` holds the rows, for pandas / pyarrow users.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from diffusion_align.evaluate.stats import StatsSettings, WinRate, mean_interval, win_rate
from diffusion_align.io import read_json, write_atomic
from reward_models.scoring import write_table_atomic

SCORE_PREFIX = "score/"
RESULTS_FORMAT = "diffalign-evaluate/1"
DOCUMENT_KEYS = ("models", "rewards", "settings", "rows")  # besides "format"; all objects but rows (a list)
KEY_COLUMNS = ["prompt_index", "sample_index"]
ROW_COLUMNS = ["model", "prompt_index", "sample_index", "prompt", "category", "seed", "image", "num_frames"]


def score_column(reward: str) -> str:
    """The table column of a reward's scores (``score/<reward>``; ensemble members: ``score/<reward>/<member>``)."""
    return f"{SCORE_PREFIX}{reward}"


def is_score_of(column: str, reward: str) -> bool:
    """Whether ``column`` holds ``reward``'s scores or one of its members' raw scores."""
    return column == score_column(reward) or column.startswith(f"{score_column(reward)}/")


@dataclass
class EvaluationResults:
    """Rows, and what produced them.

    Attributes:
        table: one row per (model, prompt_index, sample_index); columns in the module docstring.
        models: model name -> its spec as a dict (pipeline, lora, ...), in evaluation order (the first is the
            baseline of reports).
        rewards: reward name -> ``{"class", "scale", "members"}``.
        settings: how the images were made and scored (sampling settings, prompt set name, ...).
    """

    table: pd.DataFrame
    models: dict[str, dict]
    rewards: dict[str, dict] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    @property
    def reward_names(self) -> list[str]:
        return list(self.rewards)

    def rows_of(self, model: str) -> pd.DataFrame:
        """``model``'s rows sorted by (prompt_index, sample_index)."""
        if model not in self.models:
            raise KeyError(f"model {model!r}: not in these results; models are {self.model_names}")
        return self.table[self.table["model"] == model].sort_values(KEY_COLUMNS).reset_index(drop=True)

    def score_matrix(self, model: str, reward: str) -> np.ndarray:
        """``[P, S]`` scores of ``model`` under ``reward`` (prompts by index, samples by index)."""
        column = score_column(reward)
        if column not in self.table:
            raise KeyError(f"reward {reward!r}: no column {column!r}; rewards are {self.reward_names}")
        rows = self.rows_of(model)
        n_prompts = rows["prompt_index"].nunique()
        if len(rows) % n_prompts:
            raise ValueError(f"model {model!r}: prompts have unequal numbers of samples ({len(rows)} rows)")
        return rows[column].to_numpy(dtype=np.float64).reshape(n_prompts, len(rows) // n_prompts)

    def check_paired(self, model: str, opponent: str) -> None:
        """Raise unless both models have the same (prompt, sample) keys, prompts and seeds."""
        columns = [*KEY_COLUMNS, "prompt", "seed"]
        mine, theirs = self.rows_of(model)[columns], self.rows_of(opponent)[columns]
        if not mine.equals(theirs):
            raise ValueError(
                f"models {model!r} and {opponent!r} were not sampled on the same prompts and seeds: "
                "pairwise statistics need identical (prompt_index, sample_index, prompt, seed) rows"
            )

    def paired_samples(self, model: str, opponent: str, reward: str) -> pd.DataFrame:
        """One row per (prompt, sample) with both models' images and scores, largest ``model - opponent`` first.

        Columns: ``prompt_index, sample_index, prompt, category, seed, image_<model>, image_<opponent>,
        score_<model>, score_<opponent>, difference``.
        """
        self.check_paired(model, opponent)
        column = score_column(reward)
        mine, theirs = self.rows_of(model), self.rows_of(opponent)
        self.score_matrix(model, reward)  # checks the reward exists
        paired = mine[[*KEY_COLUMNS, "prompt", "category", "seed"]].copy()
        for name, rows in ((model, mine), (opponent, theirs)):
            paired[f"image_{name}"] = rows["image"].to_numpy()
            paired[f"score_{name}"] = rows[column].to_numpy()
        paired["difference"] = paired[f"score_{model}"] - paired[f"score_{opponent}"]
        return paired.sort_values("difference", ascending=False, kind="stable").reset_index(drop=True)

    def summary(self, settings: StatsSettings | None = None) -> list[dict]:
        """Per model and reward: mean score with its bootstrap-over-prompts interval, std and count."""
        settings = settings or StatsSettings()
        out = []
        for reward in self.reward_names:
            for model in self.model_names:
                scores = self.score_matrix(model, reward)
                mean, low, high = mean_interval(scores, settings)
                out.append({"model": model, "reward": reward, "mean": mean, "low": low, "high": high,
                            "std": float(scores.std()), "n": int(scores.size), "confidence": settings.confidence})
        return out

    def win_rates(self, settings: StatsSettings | None = None) -> list[WinRate]:
        """Every pair of models (later against earlier: ``aligned`` vs ``base`` when listed base first), every reward."""
        settings = settings or StatsSettings()
        out = []
        names = self.model_names
        for reward in self.reward_names:
            for j, model in enumerate(names):
                for opponent in names[:j]:
                    self.check_paired(model, opponent)
                    scores = (self.score_matrix(model, reward), self.score_matrix(opponent, reward))
                    out.append(win_rate(*scores, settings, names=(model, opponent, reward)))
        return out

    def save(
        self,
        directory: str | Path,
        settings: StatsSettings | None = None,
        summary: list[dict] | None = None,
        win_rates: list[WinRate] | None = None,
    ) -> tuple[Path, Path]:
        """Write ``results.parquet`` and ``results.json`` into ``directory``.

        The JSON includes :meth:`summary` and :meth:`win_rates` under ``settings`` (pass them when already computed).
        """
        directory = Path(directory)
        summary = self.summary(settings) if summary is None else summary
        win_rates = self.win_rates(settings) if win_rates is None else win_rates
        table = self.table.copy()
        table["image"] = [_relative(Path(path), directory) for path in table["image"]]
        parquet = write_table_atomic(pa.Table.from_pandas(table, preserve_index=False), directory / "results.parquet")
        document = {
            "format": RESULTS_FORMAT, "models": self.models, "rewards": self.rewards, "settings": self.settings,
            "summary": summary, "win_rates": [w.as_dict() for w in win_rates],
            "rows": json.loads(table.to_json(orient="records")),
        }
        text = json.dumps(document, indent=1, default=str)  # a record: non-JSON values (a torch dtype) as text
        json_path = write_atomic(directory / "results.json", lambda path: path.write_text(text, encoding="utf-8"))
        return parquet, json_path


def _relative(path: Path, directory: Path) -> str:
    resolved, root = path.resolve(), directory.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def _read_document(json_path: Path) -> dict:
    """The parsed ``results.json``, checked for the keys and types :meth:`EvaluationResults.save` writes."""
    expected = "expected the results.json of `diffalign evaluate`"
    try:
        document = read_json(json_path)
    except ValueError as error:  # not UTF-8, or not JSON: the message names the file and line
        raise ValueError(f"{error}; {expected}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{json_path}: a JSON {type(document).__name__}; {expected} (a JSON object)")
    if document.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{json_path}: format {document.get('format')!r}; expected {RESULTS_FORMAT!r}")
    for key in DOCUMENT_KEYS:
        wanted = list if key == "rows" else dict
        if not isinstance(document.get(key), wanted):
            found = "missing" if key not in document else f"a JSON {type(document[key]).__name__}"
            raise ValueError(f"{json_path}: key {key!r} is {found}; expected a JSON {wanted.__name__} ({expected})")
    for i, row in enumerate(document["rows"]):
        missing = [column for column in ROW_COLUMNS if column not in row] if isinstance(row, dict) else ROW_COLUMNS
        if missing:
            raise ValueError(f"{json_path}: rows[{i}]: expected an object with the columns {ROW_COLUMNS}, missing {missing}")
    return document


def load_results(path: str | Path) -> EvaluationResults:
    """Results written by :meth:`EvaluationResults.save` (``diffalign evaluate``): a folder or its ``results.json``.

    Raises:
        FileNotFoundError: no results file.
        ValueError: the file is not UTF-8 JSON, or lacks a key or row column ``save`` writes (named in the message).
    """
    path = Path(path).expanduser()
    json_path = path / "results.json" if path.is_dir() else path
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: no results file (expected the results.json of `diffalign evaluate`)")
    document = _read_document(json_path)
    table = pd.DataFrame(document["rows"])
    table["image"] = [str((json_path.parent / image).resolve()) for image in table["image"]]
    return EvaluationResults(table, document["models"], document["rewards"], document["settings"])


def merge_results(parts: Sequence[EvaluationResults]) -> EvaluationResults:
    """Several evaluations of different models as one, for side-by-side statistics.

    Every part must use the same prompts and seeds (checked pairwise when statistics are computed); only the
    rewards every part has are kept, and at least one must be shared.
    """
    if not parts:
        raise ValueError("merge_results: no results given")
    models: dict[str, dict] = {}
    for part in parts:
        if clash := set(part.models) & set(models):
            raise ValueError(f"merge_results: model name(s) {sorted(clash)} appear in two results; rename one")
        models.update(part.models)
    shared = [reward for reward in parts[0].reward_names if all(reward in part.rewards for part in parts)]
    if not shared:
        raise ValueError(f"merge_results: no reward shared by all results ({[p.reward_names for p in parts]})")
    columns = [*ROW_COLUMNS, *(c for c in parts[0].table if any(is_score_of(c, r) for r in shared))]
    table = pd.concat([part.table[columns] for part in parts], ignore_index=True)
    merged = EvaluationResults(table, models, {r: parts[0].rewards[r] for r in shared}, dict(parts[0].settings))
    for model in merged.model_names[1:]:
        merged.check_paired(model, merged.model_names[0])
    return merged


def with_scores(results: EvaluationResults, columns: dict[str, np.ndarray], rewards: dict[str, dict]) -> EvaluationResults:
    """A copy of ``results`` with score columns (aligned with ``results.table``'s rows) and reward records added."""
    table = results.table.copy()
    for name, values in columns.items():
        table[name] = values
    return replace(results, table=table, rewards={**results.rewards, **rewards})
