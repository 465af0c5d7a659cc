"""Synthetic preference data, Syn-Pic style: prompts -> candidates from diffusers pipelines -> reward ensemble ->
ranked table and Pick-a-Pic pairs as sharded, resumable Parquet (``diffalign generate``).

Python use, without hydra::

    from diffusion_align.generate import PipelineSpec, generate_dataset, load_prompts
    summary = generate_dataset(load_prompts("prompts.txt"), [PipelineSpec("sd15", "path/to/sd15")], reward,
                               "out/synpic", images_per_prompt=4)
"""

from diffusion_align.generate.dataset import generate_dataset
from diffusion_align.generate.dense import DenseSettings, generate_dense_video_pairs, segment_frame_ranges
from diffusion_align.generate.pairs import STRATEGIES, Pair, PairSelection, select_pairs
from diffusion_align.generate.pipelines import PipelineSpec, candidate_seed, generate_media, load_pipeline
from diffusion_align.generate.prompts import NAMED_PROMPT_SETS, load_prompts
from diffusion_align.generate.store import ManifestMismatchError, Shard, ShardStore, Worker, plan_shards
from diffusion_align.generate.summary import GenerationSummary, ScoreStats
from diffusion_align.generate.tables import prompt_id

__all__ = [
    "NAMED_PROMPT_SETS",
    "STRATEGIES",
    "DenseSettings",
    "GenerationSummary",
    "ManifestMismatchError",
    "Pair",
    "PairSelection",
    "PipelineSpec",
    "ScoreStats",
    "Shard",
    "ShardStore",
    "Worker",
    "candidate_seed",
    "generate_dataset",
    "generate_dense_video_pairs",
    "generate_media",
    "load_pipeline",
    "load_prompts",
    "plan_shards",
    "prompt_id",
    "segment_frame_ranges",
    "select_pairs",
]
