"""``diffalign generate``: the hydra entry (``conf/generate.yaml``) over :func:`generate_dataset` and
:func:`generate_dense_video_pairs`.

Scale-out: every process of ``accelerate launch diffalign generate ...`` (or ``torchrun``) takes its own shards
and runs on its own device (``device=auto``); SLURM array jobs (``-m hydra/launcher=submitit_slurm
worker.count=8 'worker.index=range(0,8)'``) each take ``1/worker.count`` of the shards, and their processes split
that again. All write into one ``out_dir``; a re-run of the same command resumes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion_align.config import build
from diffusion_align.generate.dataset import generate_dataset
from diffusion_align.generate.dense import DenseSettings, generate_dense_video_pairs
from diffusion_align.generate.pairs import PairSelection
from diffusion_align.generate.pipelines import PipelineSpec
from diffusion_align.generate.prompts import load_prompts
from diffusion_align.generate.store import Worker
from diffusion_align.generate.summary import GenerationSummary

log = logging.getLogger(__name__)

RUNTIME_KEYS = ("device", "batch_size")  # how a reward runs, not what it computes: left out of the manifest


def pipeline_specs(cfg: DictConfig) -> list[PipelineSpec]:
    """``cfg.pipelines`` (name -> fields), each merged over ``cfg.pipeline_defaults``."""
    if not cfg.pipelines:
        raise ValueError("pipelines: none given; add one with +pipelines.<name>.path=<hub id or directory>")
    specs = []
    for name, entry in cfg.pipelines.items():
        with open_dict(cfg.pipeline_defaults):  # an entry may set call keys the defaults do not have
            merged = OmegaConf.merge(cfg.pipeline_defaults, entry)
        fields = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
        specs.append(PipelineSpec(name=str(name), **fields))
    return specs


def reward_fingerprint(node: Any) -> Any:
    """The reward config without :data:`RUNTIME_KEYS`, at any depth."""
    if isinstance(node, dict):
        return {k: reward_fingerprint(v) for k, v in node.items() if k not in RUNTIME_KEYS}
    return node


def run_ranked(cfg: DictConfig, prompts: list[str], reward, common: dict) -> GenerationSummary:
    return generate_dataset(
        prompts, pipeline_specs(cfg), reward, cfg.out_dir, cfg.images_per_prompt,
        pairs=PairSelection(**OmegaConf.to_container(cfg.pairs)), frame_aggregate=cfg.frame_aggregate, **common,
    )


def run_dense(cfg: DictConfig, prompts: list[str], reward, common: dict) -> GenerationSummary:
    specs = pipeline_specs(cfg)
    if len(specs) != 1:
        raise ValueError(f"mode=dense_video_pairs takes one video pipeline, got {[s.name for s in specs]}")
    settings = DenseSettings(**OmegaConf.to_container(cfg.dense, resolve=True))
    return generate_dense_video_pairs(prompts, specs[0], reward, cfg.out_dir, settings, **common)


MODES: dict[str, Callable[[DictConfig, list[str], Any, dict], GenerationSummary]] = {
    "ranked": run_ranked,
    "dense_video_pairs": run_dense,
}


def run(cfg: DictConfig) -> GenerationSummary:
    """Generate (or resume) the dataset in ``cfg.out_dir``; print the summary on the main process."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode '{cfg.mode}': expected one of {sorted(MODES)}")
    # PartialState, unlike AcceleratorState, distributes CPU processes only when told to (gloo): by device=cpu or
    # ACCELERATE_USE_CPU (which `accelerate launch --cpu` sets).
    state = PartialState(cpu=cfg.device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"))
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    worker = Worker(cfg.worker.index * state.num_processes + state.process_index,
                    cfg.worker.count * state.num_processes)
    prompts = load_prompts(cfg.prompts.source, cfg.prompts.column, cfg.prompts.limit)
    reward_device = device if cfg.reward_device == "auto" else torch.device(cfg.reward_device)
    reward = build(cfg.reward, device=str(reward_device))
    common = {
        "seed": cfg.seed, "prompts_per_shard": cfg.prompts_per_shard, "reward_batch_size": cfg.reward_batch_size,
        "device": device, "worker": worker, "row_group_size": cfg.row_group_size, "progress": cfg.progress,
        "barrier": state.wait_for_everyone if state.num_processes > 1 else None,
        "extra_config": {"reward_config": reward_fingerprint(OmegaConf.to_container(cfg.reward, resolve=True))},
    }
    summary = MODES[cfg.mode](cfg, prompts, reward, common)
    if state.is_main_process:
        print(summary)
        if not summary.complete:
            log.info("other workers still hold shards of %s; re-run the same command to finish it", Path(cfg.out_dir))
    return summary
