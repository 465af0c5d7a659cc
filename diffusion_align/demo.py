"""``diffalign demo``: generate, rank, align and evaluate in an embedded world, on a CPU, in minutes.

The loop a user runs on real models, at toy scale and with a ground truth, in one of two worlds (``world=``):
``shapes`` (images, :mod:`diffusion_align.shapes`) or ``moving_shapes`` (video, :mod:`diffusion_align.moving_shapes`).

1. **generate** (:func:`~diffusion_align.generate.generate_dataset`): the shipped pipeline draws K candidates for
   training-split prompts; the learned proxy reward ranks them; the pairs with the largest
   proxy gaps (``generate.pairs``: FiFA-style by default) are written as Pick-a-Pic Parquet. For a method on
   temporal segments (DenseDPO), :func:`~diffusion_align.generate.generate_dense_video_pairs` instead: two re-noised
   copies of one clip per pair, each segment labelled by the proxy.
2. **align** (:func:`diffusion_align.train.loop.run`): the configured method (default DPO-LoRA; Flow-DPO for video)
   on those pairs.
3. **evaluate** (:func:`~diffusion_align.evaluate.evaluate_models`): base and aligned models sample the held-out
   prompts with identical seeds; the exact reward and the proxy score both; win rates and means get bootstrap
   intervals over prompts; grids, plots and an HTML report are written.

The exact reward never labels training data, so its gain measures real improvement, and a proxy gain without an
exact gain would be reward hacking. ``demo_summary.json`` holds every figure the console prints.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from diffusion_align.config import build
from diffusion_align.evaluate import (
    PromptSet,
    SamplingSettings,
    StatsSettings,
    evaluate_models,
    load_moving_shapes_held_out,
    load_shapes_held_out,
)
from diffusion_align.generate import (
    DenseSettings,
    PairSelection,
    PipelineSpec,
    generate_dataset,
    generate_dense_video_pairs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """What the demo needs of an embedded world: its prompts, held-out set, media and size."""

    name: str
    split_prompts: Callable[[str], list]  # "train" | "held_out" -> prompts with a ``text``
    held_out: Callable[[int | None, int | None], PromptSet]  # (limit, subset_seed) -> the held-out PromptSet
    size: int  # image or frame side, pixels
    num_frames: int | None = None  # None: images

    @property
    def media(self) -> str:
        return "image" if self.num_frames is None else "video"

    def call(self) -> dict:
        """The pipeline call's size arguments."""
        size = {"height": self.size, "width": self.size}
        return size if self.num_frames is None else {**size, "num_frames": self.num_frames}


def world_of(cfg: DictConfig) -> World:
    """The world ``cfg.world`` names, with the size and frames it configures.

    Raises:
        ValueError: an unknown world name.
    """
    from diffusion_align.moving_shapes import world as moving_shapes
    from diffusion_align.shapes import world as shapes

    worlds = {"shapes": (shapes.split_prompts, load_shapes_held_out),
              "moving_shapes": (moving_shapes.split_prompts, load_moving_shapes_held_out)}
    name = cfg.world.name
    if name not in worlds:
        raise ValueError(f"world.name={name!r}: expected one of {sorted(worlds)}")
    return World(name, *worlds[name], size=int(cfg.world.size), num_frames=cfg.world.num_frames)


@dataclass(frozen=True)
class Stage:
    """A finished stage: its name, wall time in seconds and the figures it reports."""

    name: str
    seconds: float
    figures: dict


def training_prompts(world: World, count: int, seed: int) -> list[str]:
    """``count`` distinct training-split prompts drawn with ``seed`` (all of them if ``count`` is larger)."""
    prompts = world.split_prompts("train")
    order = np.random.default_rng(seed).permutation(len(prompts))[:count]
    return [prompts[i].text for i in sorted(order.tolist())]


def generate_stage(cfg: DictConfig, out_dir: Path) -> Stage:
    """Candidates from the shipped pipeline, ranked by the proxy reward, into ``out_dir/data``: ranked candidates
    and pairs, or DenseDPO pairs when the method trains on temporal segments."""
    started = time.perf_counter()
    gen, world = cfg.generate, world_of(cfg)
    spec = PipelineSpec(
        name=world.name,
        path=str(cfg.model.adapter.path),
        call={"num_inference_steps": gen.num_inference_steps, "guidance_scale": gen.guidance_scale, **world.call()},
        media=world.media,
        batch_size=gen.batch_size,
    )
    prompts = training_prompts(world, gen.num_prompts, cfg.seed)
    if cfg.method.inputs == "segments":
        if world.media != "video":
            raise ValueError(f"method={cfg.method.name} trains on temporal segments: use world=moving_shapes "
                             f"(world={world.name} makes images)")
        dense = OmegaConf.to_container(gen.dense)
        dense["refine_call"] = {"num_inference_steps": gen.num_inference_steps, "guidance_scale": gen.guidance_scale,
                                "height": world.size, "width": world.size, **dense.get("refine_call", {})}
        summary = generate_dense_video_pairs(prompts, spec, build(cfg.label_reward), out_dir / "data",
                                             DenseSettings(**dense), seed=cfg.seed, device=cfg.device)
    else:
        summary = generate_dataset(
            prompts,
            [spec],
            build(cfg.label_reward),
            out_dir / "data",
            images_per_prompt=gen.images_per_prompt,
            seed=cfg.seed,
            pairs=PairSelection(**OmegaConf.to_container(gen.pairs)),
            device=cfg.device,
        )
    if not summary.complete:
        raise RuntimeError(f"generation into {out_dir / 'data'} did not complete; re-run to resume it")
    figures = {"prompts": summary.prompts, "images": summary.candidates, "pairs": summary.pairs}
    return Stage("generate", time.perf_counter() - started, figures)


# The generated table each dataset class reads: pairs (Pick-a-Pic columns) or the ranked table.
TABLE_OF_DATASET = {
    "diffusion_align.data.PairwiseParquetDataset": "pairs",
    "diffusion_align.data.RankedParquetDataset": "ranked",
    "diffusion_align.data.UnpairedDataset": "pairs",
    "diffusion_align.data.VideoPairDataset": "pairs",
}


def point_data_at(train_cfg: DictConfig, data_dir: Path) -> None:
    """Point ``train_cfg.data`` at the generated table its dataset class reads (``dense_pairs`` for a method on
    temporal segments); horizontal flips off.

    Raises:
        ValueError: the data config's dataset class reads none of the generated tables.
    """
    dataset = train_cfg.data.dataset
    target = dataset._target_
    if target not in TABLE_OF_DATASET:
        raise ValueError(f"data.dataset._target_={target}: the demo generates tables for {sorted(TABLE_OF_DATASET)}")
    reader = dataset.source if target.endswith("UnpairedDataset") else dataset
    table = "dense_pairs" if train_cfg.method.inputs == "segments" else TABLE_OF_DATASET[target]
    reader.paths = str(data_dir / table)
    reader.hflip = False  # a flip would swap "at the left" and "at the right" ("moving left" and "moving right")


def align_stage(cfg: DictConfig, data_dir: Path, out_dir: Path) -> tuple[Stage, Path]:
    """Train with the configured method on the dataset in ``data_dir`` into ``out_dir/train``.

    Returns:
        the stage and the training output directory.
    """
    from diffusion_align.train.loop import run as train

    started = time.perf_counter()
    train_cfg = cfg.copy()
    OmegaConf.update(train_cfg, "output_dir", str(out_dir / "train"), force_add=True)
    point_data_at(train_cfg, data_dir)
    trained = Path(train(train_cfg))
    figures = {"method": cfg.method.name, "steps": cfg.trainer.max_steps, "output": str(trained)}
    return Stage("align", time.perf_counter() - started, figures), trained


def aligned_model_spec(cfg: DictConfig, trained: Path) -> dict:
    """How to load the aligned model: base pipeline + LoRA, or the full fine-tune's pipeline directory."""
    if cfg.model.finetune.mode == "lora":
        return {"pipeline": str(cfg.model.adapter.path), "lora": str(trained)}
    return {"pipeline": str(trained / "pipeline")}


def evaluate_stage(cfg: DictConfig, out_dir: Path, trained: Path) -> Stage:
    """Base vs aligned on held-out prompts with identical seeds, scored by the exact and the proxy reward."""
    started = time.perf_counter()
    ev, world = cfg.evaluate, world_of(cfg)
    rewards = {name: build(node) for name, node in cfg.eval_rewards.items()}
    stats = StatsSettings(confidence=ev.confidence, n_resamples=ev.n_resamples, seed=cfg.seed)
    results = evaluate_models(
        {"base": str(cfg.model.adapter.path), "aligned": aligned_model_spec(cfg, trained)},
        world.held_out(ev.num_prompts, cfg.seed if ev.num_prompts else None),
        rewards,
        out_dir / "evaluate",
        sampling=SamplingSettings(
            samples_per_prompt=ev.samples_per_prompt, seed=cfg.seed + 1, num_inference_steps=ev.num_inference_steps,
            guidance_scale=ev.guidance_scale, height=world.size, width=world.size, batch_size=ev.batch_size,
            pipeline_kwargs={} if world.num_frames is None else {"num_frames": world.num_frames},
        ),
        stats=stats,
        device=cfg.device,
    )
    figures = {"means": results.summary(stats), "win_rates": [w.as_dict() for w in results.win_rates(stats)]}
    return Stage("evaluate", time.perf_counter() - started, figures)


def headline(stages: list[Stage]) -> dict:
    """The figures that answer "did alignment help?": exact and proxy means, aligned-vs-base win rates."""
    evaluation = next(s for s in stages if s.name == "evaluate").figures
    means = {(row["model"], row["reward"]): row for row in evaluation["means"]}
    rewards = sorted({reward for _, reward in means})
    lines = {}
    for reward in rewards:
        win = next(w for w in evaluation["win_rates"] if w["reward"] == reward and w["model"] == "aligned")
        lines[reward] = {
            "base_mean": means[("base", reward)],
            "aligned_mean": means[("aligned", reward)],
            "win_rate": win,
        }
    return lines


def _interval(row: dict, key: str, low: str, high: str) -> str:
    return f"{row[key]:.4f} [{row[low]:.4f}, {row[high]:.4f}]"


def format_report(stages: list[Stage], lines: dict, out_dir: Path, world: str = "shapes") -> str:
    """The console summary."""
    title = {"shapes": "Shapes demo", "moving_shapes": "Moving Shapes demo"}.get(world, f"{world} demo")
    text = ["", title, "-" * len(title)]
    for stage in stages:
        shown = {k: v for k, v in stage.figures.items() if k not in ("means", "win_rates")}
        text.append(f"{stage.name:<9} {stage.seconds:7.1f} s  {json.dumps(shown) if shown else ''}")
    for reward, line in lines.items():
        base, aligned, win = line["base_mean"], line["aligned_mean"], line["win_rate"]
        text.append(f"reward {reward}:")
        text.append(f"  mean base    {_interval(base, 'mean', 'low', 'high')}")
        text.append(f"  mean aligned {_interval(aligned, 'mean', 'low', 'high')}")
        text.append(f"  aligned - base {_interval(win, 'mean_difference', 'difference_low', 'difference_high')}")
        text.append(
            f"  win rate aligned vs base {_interval(win, 'win_rate', 'low', 'high')} "
            f"(wins {win['wins']}, ties {win['ties']}, losses {win['losses']}; sign test p = {win['sign_test_p']:.2g})"
        )
    text.append(f"report: {out_dir / 'evaluate' / 'report.html'}   grids: {out_dir / 'evaluate' / 'grids'}")
    return "\n".join(text)


def run(cfg: DictConfig) -> dict:
    """Run the three stages into ``cfg.output_dir``, print the summary and write ``demo_summary.json``."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = [generate_stage(cfg, out_dir)]
    align, trained = align_stage(cfg, out_dir / "data", out_dir)
    stages += [align, evaluate_stage(cfg, out_dir, trained)]
    lines = headline(stages)
    summary = {
        "stages": {s.name: {"seconds": s.seconds, **s.figures} for s in stages},
        "headline": lines,
        "total_seconds": sum(s.seconds for s in stages),
    }
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(format_report(stages, lines, out_dir, cfg.world.name), flush=True)
    return summary
