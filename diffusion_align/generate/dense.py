"""DenseDPO-style video pairs: two clips with the same motion and different details, labelled per segment.

DenseDPO (Wu et al. 2025, arXiv 2506.03517) builds each pair from one reference clip: it is partly re-noised and
denoised twice with different noise, so both copies keep the reference's layout and motion and differ in detail;
preferences are then given per short temporal segment instead of per clip. Here the reference comes from the
text-to-video pipeline itself; the partial noising and denoising is the family's stock diffusers video-to-video
pipeline (``refiner``, e.g. ``WanVideoToVideoPipeline``, ``CogVideoXVideoToVideoPipeline``) sharing the loaded
components (``from_pipe``), with ``strength`` the fraction of the schedule re-noised.

Labels come from the reward ensemble scoring every frame of both copies (members normalised across the pair's
frames), averaged per segment: ``segment_label_0[s]`` is 1 when ``video_0`` scores higher in segment ``s``, 0 when
lower, 0.5 within ``tie_tolerance``. Segments follow the trainer's split of the **latent** frames
(``torch.tensor_split`` into S parts, :func:`diffusion_align.losses.errors.per_sample_error`), mapped back to
pixel frames through the causal video VAE (latent frame 0 = pixel frame 0; latent ``j`` = pixel frames
``r(j-1)+1 .. rj`` with temporal compression ``r``), so a label covers exactly the frames its loss term sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import Tensor

from diffusion_align.generate.dataset import (
    check_pipelines,
    describe_reward,
    finish,
    run_shards,
)
from diffusion_align.generate.pipelines import PipelineSpec, candidate_seed, generate_media, load_pipeline
from diffusion_align.generate.ranking import combine, member_names, per_frame_raw_scores
from diffusion_align.generate.store import Shard, ShardStore, Worker, plan_shards
from diffusion_align.generate.summary import GenerationSummary, moments
from diffusion_align.generate.tables import encode_media, prompt_id
from diffusion_align.io import prompts_fingerprint
from reward_models.base import RewardModel

DENSE_TABLES = ("dense_pairs",)


@dataclass(frozen=True)
class DenseSettings:
    """How DenseDPO-style pairs are made.

    Attributes:
        refiner: name of the diffusers video-to-video pipeline class of the generator's family.
        strength: fraction of the denoising schedule re-run from the noised reference, in (0, 1].
        refine_call: keyword arguments of the refiner calls (``height``, ``width``, ``num_inference_steps`` ...).
        pairs_per_prompt: pairs (each from its own reference clip) per prompt.
        segments: temporal segments labelled per pair (at most the number of latent frames).
        temporal_compression: the video VAE's frames per latent frame (4 for Wan and CogVideoX).
        tie_tolerance: segment (and clip) score gaps up to this are ties (0.5).
        batch_size: pairs per refiner call (2 clips each).
    """

    refiner: str
    strength: float = 0.6
    refine_call: Mapping[str, Any] = field(default_factory=dict)
    pairs_per_prompt: int = 1
    segments: int = 3
    temporal_compression: int = 4
    tie_tolerance: float = 0.0
    batch_size: int = 2

    def __post_init__(self) -> None:
        pipeline_class = getattr(diffusers, self.refiner, None)
        if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, diffusers.DiffusionPipeline)):
            raise ValueError(f"dense.refiner '{self.refiner}': expected a diffusers pipeline class name, "
                             "e.g. WanVideoToVideoPipeline")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"dense.strength {self.strength}: expected a value in (0, 1]")
        for key in ("pairs_per_prompt", "segments", "temporal_compression", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"dense.{key} {getattr(self, key)}: expected a positive integer")
        if "strength" in self.refine_call:
            raise ValueError("dense.refine_call sets 'strength': set dense.strength instead")
        object.__setattr__(self, "refine_call", dict(self.refine_call))


def segment_frame_ranges(num_frames: int, segments: int, temporal_compression: int) -> list[tuple[int, int]]:
    """Pixel-frame ``[start, stop)`` of each segment, matching the trainer's split of the latent frames.

    Example: 9 frames, r = 4 (3 latent frames), 3 segments -> ``[(0, 1), (1, 5), (5, 9)]``.
    """
    r = temporal_compression
    if num_frames < 1 or (num_frames - 1) % r:
        raise ValueError(f"{num_frames} frames: a causal video VAE with temporal compression {r} needs {r}k + 1")
    latent = (num_frames - 1) // r + 1
    if not 1 <= segments <= latent:
        raise ValueError(f"segments {segments}: expected 1 .. {latent} (the latent frames of {num_frames} frames)")
    ranges = []
    for part in np.array_split(np.arange(latent), segments):
        first, last = int(part[0]), int(part[-1])
        ranges.append((0 if first == 0 else r * (first - 1) + 1, 1 if last == 0 else r * last + 1))
    return ranges


def label(gap: float, tie_tolerance: float) -> float:
    """1 if the first is better by more than the tolerance, 0 if worse, 0.5 otherwise."""
    return 0.5 if abs(gap) <= tie_tolerance else (1.0 if gap > 0 else 0.0)


def pair_labels(reward: RewardModel, frames_0: dict[str, Tensor], frames_1: dict[str, Tensor],
                ranges: list[tuple[int, int]], tie_tolerance: float) -> dict[str, Any]:
    """Clip and segment scores and labels of one pair from its members' per-frame raw scores ``{name: [F]}``."""
    n = len(next(iter(frames_0.values())))
    both = combine(reward, {name: torch.cat([frames_0[name], frames_1[name]]) for name in frames_0})
    first, second = both[:n], both[n:]
    segment_0 = [float(first[a:b].mean()) for a, b in ranges]
    segment_1 = [float(second[a:b].mean()) for a, b in ranges]
    score_0, score_1 = float(first.mean()), float(second.mean())
    return {"label_0": label(score_0 - score_1, tie_tolerance), "score_0": score_0, "score_1": score_1,
            "segment_label_0": [label(a - b, tie_tolerance) for a, b in zip(segment_0, segment_1)],
            "segment_score_0": segment_0, "segment_score_1": segment_1}


def generate_dense_video_pairs(
    prompts: Sequence[str],
    pipeline: PipelineSpec,
    reward: RewardModel,
    out_dir: str | Path,
    settings: DenseSettings,
    *,
    seed: int = 0,
    prompts_per_shard: int = 16,
    reward_batch_size: int = 16,
    device: str | torch.device = "cpu",
    worker: Worker | None = None,
    barrier: Callable[[], None] | None = None,
    row_group_size: int = 64,
    progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> GenerationSummary:
    """Write ``dense_pairs/`` shards (the video-pair layout with ``segment_label_0``); resumable like
    :func:`~diffusion_align.generate.dataset.generate_dataset`, whose arguments these are.

    Seeds per prompt index i and pair p: the reference clip ``candidate_seed(seed, i, name, "reference{p}")``,
    the copies ``"copy{p}.0"`` and ``"copy{p}.1"``.
    """
    worker = worker or Worker()
    if check_pipelines([pipeline]) != "video":
        raise ValueError(f"pipeline '{pipeline.name}': DenseDPO pairs need a video pipeline (media: video)")
    config = {"kind": "dense_video_pairs", "media": "video", "prompts": prompts_fingerprint(prompts), "seed": seed,
              "pipelines": [pipeline.describe()], "dense": asdict(settings), "prompts_per_shard": prompts_per_shard,
              "candidates_per_prompt": 2 * settings.pairs_per_prompt, "reward": describe_reward(reward),
              **(extra_config or {})}
    shards = plan_shards(len(prompts), prompts_per_shard)
    store = ShardStore(out_dir, DENSE_TABLES, row_group_size)
    store.open(config, shards)
    loaded: list[Any] = []

    def build(shard: Shard, advance: Callable[[int], None]) -> tuple[dict, dict]:
        if not loaded:
            text_to_video = load_pipeline(pipeline, device)
            loaded.extend([text_to_video, getattr(diffusers, settings.refiner).from_pipe(text_to_video)])
            loaded[1].set_progress_bar_config(disable=True)
        rows = dense_shard(shard, prompts, pipeline, loaded, reward, settings, seed, reward_batch_size, advance)
        names = member_names(reward)
        return {"dense_pairs": pa.Table.from_pylist(rows, schema=dense_schema(names))}, dense_stats(rows, names)

    run_shards(store, shards, worker, build, 3 * settings.pairs_per_prompt, progress)
    return finish(store, shards, config, barrier)


def reference_clips(pipeline, spec: PipelineSpec, jobs: list[tuple[int, int]], prompts: Sequence[str], seed: int,
                    advance: Callable[[int], None]) -> list[np.ndarray]:
    """One text-to-video clip per job (prompt index, pair slot), ``spec.batch_size`` per call."""
    clips: list[np.ndarray] = []
    for start in range(0, len(jobs), spec.batch_size):
        batch = jobs[start : start + spec.batch_size]
        seeds = [candidate_seed(seed, i, spec.name, f"reference{p}") for i, p in batch]
        clips += generate_media(pipeline, spec, [prompts[i] for i, _ in batch], seeds)
        advance(len(batch))
    return clips


def refined_copies(refiner, spec: PipelineSpec, settings: DenseSettings, jobs: list[tuple[int, int]],
                   references: list[np.ndarray], prompts: Sequence[str], copy_seeds: list[int],
                   advance: Callable[[int], None]) -> list[np.ndarray]:
    """Two partly re-noised and denoised copies of every reference (job-major), ``settings.batch_size`` pairs a call."""
    refine_spec = PipelineSpec(spec.name, spec.path, settings.refine_call, "video", 2 * settings.batch_size, spec.dtype)
    copies: list[np.ndarray] = []
    for start in range(0, len(jobs), settings.batch_size):
        batch = range(start, min(start + settings.batch_size, len(jobs)))
        videos = [[Image.fromarray(frame) for frame in references[j]] for j in batch for _ in (0, 1)]
        copies += generate_media(refiner, refine_spec, [prompts[jobs[j][0]] for j in batch for _ in (0, 1)],
                                 [copy_seeds[2 * j + c] for j in batch for c in (0, 1)],
                                 video=videos, strength=settings.strength)
        advance(2 * len(batch))
    return copies


def dense_shard(shard: Shard, prompts: Sequence[str], spec: PipelineSpec, loaded: list, reward: RewardModel,
                settings: DenseSettings, seed: int, batch_size: int, advance: Callable[[int], None]) -> list[dict]:
    """The pairs of one shard (table rows): references, two refined copies each, per-frame scores, segment labels."""
    jobs = [(i, p) for i in range(shard.start, shard.stop) for p in range(settings.pairs_per_prompt)]
    references = reference_clips(loaded[0], spec, jobs, prompts, seed, advance)
    copy_seeds = [candidate_seed(seed, i, spec.name, f"copy{p}.{c}") for i, p in jobs for c in (0, 1)]
    copies = refined_copies(loaded[1], spec, settings, jobs, references, prompts, copy_seeds, advance)
    per_frame = per_frame_raw_scores(reward, copies, [prompts[i] for i, _ in jobs for _ in (0, 1)], batch_size)
    ranges = segment_frame_ranges(len(copies[0]), settings.segments, settings.temporal_compression)
    rows = []
    for j, (i, p) in enumerate(jobs):
        frames = [{name: clips[2 * j + c] for name, clips in per_frame.items()} for c in (0, 1)]
        labels = pair_labels(reward, frames[0], frames[1], ranges, settings.tie_tolerance)
        rows.append({"caption": prompts[i], "video_0": encode_media(copies[2 * j], "video"),
                     "video_1": encode_media(copies[2 * j + 1], "video"), **labels, "label_1": 1.0 - labels["label_0"],
                     "prompt_id": prompt_id(i), "generator": spec.name,
                     "reference_seed": candidate_seed(seed, i, spec.name, f"reference{p}"),
                     "seed_0": copy_seeds[2 * j], "seed_1": copy_seeds[2 * j + 1],
                     **{f"score_{n}_{c}": float(frames[c][n].mean()) for n in per_frame for c in (0, 1)}})
    return rows


def dense_schema(names: Sequence[str]) -> pa.Schema:
    """The video-pair layout (``caption``, ``video_0``, ``video_1``, ``label_0``, ``label_1``, ``segment_label_0``)
    plus provenance and scores: clip means of the per-frame ensemble (``score_0``/``_1``), per-segment means, and
    clip means of each member's raw frame scores (``score_<member>_0``/``_1``)."""
    floats = pa.list_(pa.float64())
    fields = [("caption", pa.string()), ("video_0", pa.binary()), ("video_1", pa.binary()), ("label_0", pa.float64()),
              ("label_1", pa.float64()), ("segment_label_0", floats), ("prompt_id", pa.string()),
              ("generator", pa.string()), ("reference_seed", pa.int64()), ("seed_0", pa.int64()),
              ("seed_1", pa.int64()), ("score_0", pa.float64()), ("score_1", pa.float64()),
              ("segment_score_0", floats), ("segment_score_1", floats)]
    return pa.schema(fields + [(f"score_{n}_{c}", pa.float64()) for n in names for c in (0, 1)])


def dense_stats(rows: list[dict], names: Sequence[str]) -> dict:
    """Marker statistics: candidates are the refined copies, pairs the rows; ties are whole-clip ties."""
    scores = {"score": moments([row[f"score_{c}"] for row in rows for c in (0, 1)])}
    scores.update({f"score_{n}": moments([row[f"score_{n}_{c}"] for row in rows for c in (0, 1)]) for n in names})
    return {"prompts": len({row["prompt_id"] for row in rows}), "candidates": 2 * len(rows), "pairs": len(rows),
            "ties": sum(row["label_0"] == 0.5 for row in rows), "scores": scores,
            "margins": moments([abs(row["score_0"] - row["score_1"]) for row in rows])}
