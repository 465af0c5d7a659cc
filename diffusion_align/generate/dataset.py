"""``generate_dataset``: prompts -> K candidates per prompt and generator -> reward scores -> ranked table + pairs.

The Syn-Pic recipe (RankDPO, Karthik et al. 2024): several images per prompt from one or more pipelines, scored
by several reward models, scores averaged (:class:`reward_models.RewardEnsemble`), candidates ranked. Usable from
Python without hydra::

    from diffusion_align.generate import PipelineSpec, generate_dataset
    summary = generate_dataset(prompts, [PipelineSpec("sd15", "path/to/sd15", {"num_inference_steps": 30})],
                               reward, "out/synpic", images_per_prompt=4)

A candidate's seed is :func:`~diffusion_align.generate.pipelines.candidate_seed` of (``seed``, prompt index,
generator name, slot k): a re-run, a resumed run or a run split over other workers produces the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from diffusion_align.generate.pairs import Pair, PairSelection, select_pairs
from diffusion_align.generate.pipelines import PipelineSpec, candidate_seed, generate_media, load_pipeline
from diffusion_align.generate.ranking import (
    FRAME_AGGREGATES,
    aggregate_clips,
    group_scores,
    per_frame_raw_scores,
    raw_scores,
)
from diffusion_align.generate.store import Shard, ShardStore, Worker, plan_shards
from diffusion_align.generate.summary import GenerationSummary, moments, write_card
from diffusion_align.generate.tables import Candidate, Group, encode_media, pairs_table, ranked_table
from diffusion_align.io import prompts_fingerprint
from reward_models.base import RewardModel
from reward_models.ensemble import RewardEnsemble

log = logging.getLogger(__name__)

RANKED_TABLES = ("ranked", "pairs")
BuildShard = Callable[[Shard, Callable[[int], None]], tuple[dict, dict]]


def describe_reward(reward: RewardModel) -> dict[str, Any]:
    """The reward's identity for the manifest: class, members (name -> class), weights, normalisation."""
    if isinstance(reward, RewardEnsemble):
        return {"class": type(reward).__name__, "members": {n: type(m).__name__ for n, m in reward.members.items()},
                "weights": dict(reward.weights), "normalize": reward.normalize}
    return {"class": type(reward).__name__, "members": {reward.name: type(reward).__name__}}


def check_pipelines(pipelines: Sequence[PipelineSpec]) -> str:
    """Validate the generator list (non-empty, unique names, one media); return the media."""
    if not pipelines:
        raise ValueError("pipelines: expected at least one pipeline")
    names = [spec.name for spec in pipelines]
    if len(set(names)) != len(names):
        raise ValueError(f"pipelines: names must be unique, got {names}")
    media = {spec.media for spec in pipelines}
    if len(media) != 1:
        raise ValueError(f"pipelines: all must produce the same media, got {sorted(media)} ({names})")
    return media.pop()


def shard_stats(groups: Sequence[Group], pairs: Sequence[Pair]) -> dict:
    """Counts and score moments of one shard (stored in its marker)."""
    columns = {"score": [float(v) for g in groups for v in g.score]}
    for name in groups[0].raw:
        columns[f"score_{name}"] = [float(v) for g in groups for v in g.raw[name]]
    return {"prompts": len(groups), "candidates": sum(len(g.candidates) for g in groups), "pairs": len(pairs),
            "ties": sum(p.label_0 == 0.5 for p in pairs), "scores": {k: moments(v) for k, v in columns.items()},
            "margins": moments([p.margin for p in pairs])}


def run_shards(store: ShardStore, shards: list[Shard], worker: Worker, build: BuildShard, units_per_prompt: int,
               progress: bool) -> int:
    """Build and write this worker's incomplete shards; returns how many were written."""
    todo = [s for s in shards if worker.owns(s) and not store.is_complete(s)]
    done_before = sum(worker.owns(s) for s in shards) - len(todo)
    if done_before:
        log.info("worker %d/%d: %d shard(s) already complete, skipped", worker.index, worker.count, done_before)
    total = sum(s.stop - s.start for s in todo) * units_per_prompt
    with tqdm(total=total, desc=f"generate {worker.index}/{worker.count}", unit="cand", disable=not progress) as bar:
        for shard in todo:
            store.remove_stale(shard)
            tables, stats = build(shard, bar.update)
            store.write(shard, tables, stats, worker)
    return len(todo)


def finish(store: ShardStore, shards: list[Shard], config: dict, barrier: Callable[[], None] | None) -> GenerationSummary:
    """Wait for the other processes (``barrier``), summarise the complete shards; write the card when all are."""
    if barrier is not None:
        barrier()
    summary = GenerationSummary.from_markers(store.out_dir, len(shards), list(store.markers(shards)))
    if summary.complete:
        write_card(store.out_dir, store.tables, config, summary)
    return summary


def generate_dataset(
    prompts: Sequence[str],
    pipelines: Sequence[PipelineSpec],
    reward: RewardModel,
    out_dir: str | Path,
    images_per_prompt: int = 4,
    *,
    seed: int = 0,
    prompts_per_shard: int = 16,
    pairs: PairSelection | None = None,
    frame_aggregate: str = "mean",
    reward_batch_size: int = 16,
    device: str | torch.device = "cpu",
    worker: Worker | None = None,
    barrier: Callable[[], None] | None = None,
    row_group_size: int = 64,
    progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> GenerationSummary:
    """Generate, score and rank candidates for every prompt; write ``ranked/`` and ``pairs/`` shards.

    Args:
        prompts: the prompt list (a prompt's position is its ``prompt_index``).
        pipelines: the generators, all of one media (images, or videos scored per frame).
        reward: a reward model or :class:`~reward_models.RewardEnsemble` (already on its device).
        out_dir: the dataset directory (see :mod:`diffusion_align.generate.store`); a re-run resumes it.
        images_per_prompt: K, candidates per prompt and generator (a prompt's group has K x generators).
        seed: base seed of every candidate seed.
        prompts_per_shard: prompts per shard, the unit of work and of resumption.
        pairs: how pairs are drawn (default best vs worst).
        frame_aggregate: videos: ``mean`` or ``min`` of each member's frame scores.
        reward_batch_size: images (or frames) per reward forward pass.
        device: where the pipelines run.
        worker: this worker's shard slice (default: the only worker).
        barrier: called after this worker's shards (e.g. ``PartialState().wait_for_everyone``).
        row_group_size: rows per Parquet row group.
        progress: show a progress bar.
        extra_config: more settings recorded in (and checked against) the manifest.

    Returns:
        the summary over the complete shards (``summary.complete`` once every worker is done).

    Raises:
        ManifestMismatchError: ``out_dir`` was generated with another configuration.
    """
    pairs = pairs or PairSelection()
    worker = worker or Worker()
    media = check_pipelines(pipelines)
    per_prompt = images_per_prompt * len(pipelines)
    if images_per_prompt < 1 or per_prompt < 2:
        raise ValueError(f"images_per_prompt {images_per_prompt} x {len(pipelines)} pipeline(s): need >= 2 candidates per prompt")
    if frame_aggregate not in FRAME_AGGREGATES:
        raise ValueError(f"frame_aggregate '{frame_aggregate}': expected one of {FRAME_AGGREGATES}")
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    config = {"kind": "ranked", "media": media, "prompts": prompts_fingerprint(prompts), "seed": seed,
              "pipelines": [spec.describe() for spec in pipelines], "images_per_prompt": images_per_prompt,
              "candidates_per_prompt": per_prompt, "prompts_per_shard": prompts_per_shard, "pairs": asdict(pairs),
              "frame_aggregate": frame_aggregate if media == "video" else None, "reward": describe_reward(reward),
              **(extra_config or {})}
    shards = plan_shards(len(prompts), prompts_per_shard)
    store = ShardStore(out_dir, RANKED_TABLES, row_group_size)
    store.open(config, shards)
    loaded: list[tuple[PipelineSpec, Any]] = []

    def build(shard: Shard, advance: Callable[[int], None]) -> tuple[dict, dict]:
        if not loaded:
            loaded.extend((spec, load_pipeline(spec, device)) for spec in pipelines)
        candidates, pixels = generate_shard(shard, prompts, loaded, images_per_prompt, seed, advance)
        groups = score_shard(candidates, pixels, per_prompt, reward, reward_batch_size, media, frame_aggregate)
        selected = select_pairs([(g.score, g.rank) for g in groups], pairs)
        tables = {"ranked": ranked_table(groups, media), "pairs": pairs_table(groups, selected, media)}
        return tables, shard_stats(groups, selected)

    run_shards(store, shards, worker, build, per_prompt, progress)
    return finish(store, shards, config, barrier)


def generate_shard(shard: Shard, prompts: Sequence[str], loaded: Sequence[tuple[PipelineSpec, Any]], k: int,
                   seed: int, advance: Callable[[int], None]) -> tuple[list[Candidate], list[np.ndarray]]:
    """Every candidate of a shard, in group order (prompt, then generator, then slot), with its pixels."""
    by_prompt: dict[int, list[tuple[Candidate, np.ndarray]]] = {i: [] for i in range(shard.start, shard.stop)}
    for spec, pipeline in loaded:
        jobs = [(i, slot) for i in range(shard.start, shard.stop) for slot in range(k)]
        for start in range(0, len(jobs), spec.batch_size):
            batch = jobs[start : start + spec.batch_size]
            seeds = [candidate_seed(seed, i, spec.name, slot) for i, slot in batch]
            outputs = generate_media(pipeline, spec, [prompts[i] for i, _ in batch], seeds)
            for (i, slot), s, pixels in zip(batch, seeds, outputs):
                encoded = encode_media(pixels, spec.media)
                by_prompt[i].append((Candidate(i, prompts[i], spec.name, slot, s, encoded), pixels))
            advance(len(batch))
    flat = [item for i in range(shard.start, shard.stop) for item in by_prompt[i]]
    return [c for c, _ in flat], [p for _, p in flat]


def score_shard(candidates: list[Candidate], pixels: list[np.ndarray], per_prompt: int, reward: RewardModel,
                batch_size: int, media: str, frame_aggregate: str) -> list[Group]:
    """Raw member scores of all candidates in big batches, then ensemble score and rank per prompt group."""
    prompts = [c.prompt for c in candidates]
    frame_raw = None
    if media == "image":
        raw = raw_scores(reward, [Image.fromarray(p) for p in pixels], prompts, batch_size)
    else:
        frame_raw = per_frame_raw_scores(reward, pixels, prompts, batch_size)
        raw = aggregate_clips(frame_raw, frame_aggregate)
    sizes = [per_prompt] * (len(candidates) // per_prompt)
    groups = []
    for g, (score, rank) in enumerate(group_scores(reward, raw, sizes)):
        part = slice(g * per_prompt, (g + 1) * per_prompt)
        groups.append(Group(candidates[part], {n: v[part] for n, v in raw.items()}, score, rank,
                            None if frame_raw is None else {n: v[part] for n, v in frame_raw.items()}))
    return groups
