"""Scoring stored samples with reward models: images directly, clips frame by frame then aggregated.

Ensembles are scored member by member over *all* rows and combined once at the end, so their per-call
normalisation (z-scores or ranks) is taken across every model's images together: a model's ensemble score does
not depend on how the rows were batched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from diffusion_align.evaluate.media import load_frames
from diffusion_align.evaluate.results import EvaluationResults, score_column, with_scores
from reward_models.base import RewardModel
from reward_models.ensemble import RewardEnsemble

log = logging.getLogger(__name__)


def as_rewards(rewards: Mapping[str, RewardModel] | RewardModel) -> dict[str, RewardModel]:
    """Reward models by name: a mapping as is, or one model under its ``name``; names must not contain '/'."""
    named = {rewards.name: rewards} if isinstance(rewards, RewardModel) else dict(rewards)
    for name, model in named.items():
        if not isinstance(model, RewardModel):
            raise TypeError(f"rewards[{name!r}]: expected a reward_models.RewardModel, got {type(model).__name__}")
        if "/" in name or not name:
            raise ValueError(f"reward name {name!r}: expected a non-empty name without '/'")
    return named


def raw_scores(model: RewardModel, table: pd.DataFrame, batch_size: int, video_aggregate: str) -> np.ndarray:
    """``[N]`` scores of ``model`` for the rows of ``table`` (in row order), read from the stored PNGs.

    Args:
        batch_size: rows loaded and scored at a time (clips: all their frames at once).
        video_aggregate: how clips' per-frame scores become one (``mean``, ``min``, ``temporal_consistency``).
    """
    scores = np.empty(len(table))
    for num_frames, rows in table.groupby("num_frames", sort=False):
        positions = table.index.get_indexer(rows.index)
        for start in range(0, len(rows), batch_size):
            chunk = rows.iloc[start : start + batch_size]
            frames = [load_frames(path, int(num_frames)) for path in chunk["image"]]
            prompts = list(chunk["prompt"])
            if num_frames == 1:
                values = model.score([clip[0] for clip in frames], prompts, batch_size)
            else:
                values = model.score_video(frames, prompts, video_aggregate, batch_size).scores
            scores[positions[start : start + batch_size]] = values.double().numpy()
    return scores


def reward_record(model: RewardModel) -> dict:
    """What results files say about a reward model."""
    members = list(model.members) if isinstance(model, RewardEnsemble) else []
    return {"class": type(model).__name__, "scale": model.scale, "members": members}


def score_results(
    results: EvaluationResults,
    rewards: Mapping[str, RewardModel] | RewardModel,
    batch_size: int = 16,
    video_aggregate: str = "mean",
) -> EvaluationResults:
    """``results`` with a ``score/<name>`` column per reward (ensembles: also ``score/<name>/<member>``).

    Works on fresh results and on loaded ones (``load_results``): re-score old images with a new reward model.
    """
    table = results.table.reset_index(drop=True)
    columns: dict[str, np.ndarray] = {}
    records = {}
    for name, model in as_rewards(rewards).items():
        log.info("scoring %d samples with %s (%s)", len(table), name, type(model).__name__)
        if isinstance(model, RewardEnsemble):
            members = {m: raw_scores(member, table, batch_size, video_aggregate) for m, member in model.members.items()}
            combined = model.combine({m: torch.from_numpy(values) for m, values in members.items()})
            columns[score_column(name)] = combined.double().numpy()
            columns.update({f"{score_column(name)}/{m}": values for m, values in members.items()})
        else:
            columns[score_column(name)] = raw_scores(model, table, batch_size, video_aggregate)
        records[name] = reward_record(model)
    return with_scores(EvaluationResults(table, results.models, results.rewards, results.settings), columns, records)
