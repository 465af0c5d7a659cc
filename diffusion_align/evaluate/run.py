"""``diffalign evaluate`` and its Python twin :func:`evaluate_models`: generate, score, compare, report.

Outputs in ``out_dir``::

    images/<model>/<prompt_index>-<sample_index>.png   every sample (clips: a strip of frames)
    images/<model>/samples.json, samples.jsonl          what made them, one line per saved sample (resumption)
    results.parquet, results.json                      every row and score; summary and win rates (json)
    grids/grid-000.png ...                             prompts down, models across, scores under each image
    plots/*.png                                        score distributions per reward, win rates
    report.html                                        self-contained: tables, figures, sortable samples

A killed evaluation resumes: run it again with the same models, prompts and sampling settings into the same
``out_dir`` and each model's saved samples are kept (a sample counts once its PNG and its ``samples.jsonl`` line are
written); only the missing ones are generated, from their own seeds. The batch size may change (after running out
of memory, say) and so may the number of samples per prompt; other settings in that directory are refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_align.adapters.lora import LORA_WEIGHT_NAME
from diffusion_align.config import build
from diffusion_align.evaluate.media import save_sample
from diffusion_align.evaluate.prompts import PromptSet, as_prompt_set
from diffusion_align.evaluate.report import ReportSettings, report_html, write_grids, write_report
from diffusion_align.evaluate.results import EvaluationResults
from diffusion_align.evaluate.sampling import (
    ModelSpec,
    SamplingSettings,
    as_model_spec,
    free_memory,
    generate,
    load_model,
    sample_seed,
)
from diffusion_align.evaluate.scoring import as_rewards, score_results
from diffusion_align.evaluate.stats import StatsSettings
from diffusion_align.io import prompts_fingerprint, read_json, write_text_atomic
from reward_models.base import RewardModel

log = logging.getLogger(__name__)


def generate_samples(
    specs: Mapping[str, ModelSpec],
    prompt_set: PromptSet,
    sampling: SamplingSettings,
    image_dir: Path,
    device: str | torch.device,
    dtype: str,
) -> pd.DataFrame:
    """Sample every prompt with every model (one model in memory at a time); save PNGs; return the rows.

    Samples a previous run saved under ``image_dir`` with the same settings are reused (see the module docstring); a
    model whose samples are all there is not even loaded.
    """
    jobs = [(i, k, prompt) for i, prompt in enumerate(prompt_set.prompts) for k in range(sampling.samples_per_prompt)]
    rows = []
    for name, spec in specs.items():
        model_dir = image_dir / name
        made = {"model": spec.describe(), "weights": weights_fingerprint(spec), "sampling": sample_settings(sampling),
                "dtype": dtype, "prompts": prompts_fingerprint(prompt_set.prompts),
                "categories": None if prompt_set.categories is None else prompts_fingerprint(prompt_set.categories)}
        done = saved_samples(model_dir, made)
        todo = [job for job in jobs if (job[0], job[1]) not in done]
        if done:
            log.info("%s: %d of %d samples already in %s, %d to generate", name, len(jobs) - len(todo), len(jobs),
                     model_dir, len(todo))
        if todo:
            pipeline = load_model(spec, device, dtype)
            with open(model_dir / SAMPLE_LOG, "a", encoding="utf-8") as sample_log:
                if sample_log.tell():  # end a line a kill cut short, or the next row would be glued to it
                    sample_log.write("\n")
                for prompt_index, sample_index, pixels in generate(pipeline, todo, sampling, spec, f"sampling {name}"):
                    path = model_dir / f"{prompt_index:05d}-{sample_index:03d}.png"
                    row = {
                        "model": name, "prompt_index": prompt_index, "sample_index": sample_index,
                        "prompt": prompt_set.prompts[prompt_index],
                        "category": None if prompt_set.categories is None else prompt_set.categories[prompt_index],
                        "seed": sample_seed(sampling.seed, prompt_index, sample_index),
                        "image": str(path.resolve()), "num_frames": save_sample(pixels, path),
                    }
                    sample_log.write(json.dumps(row) + "\n")  # after the PNG: a logged sample is a saved one
                    sample_log.flush()
                    done[(prompt_index, sample_index)] = row
            del pipeline  # one model in memory at a time
            free_memory()
        rows += [done[(prompt_index, sample_index)] for prompt_index, sample_index, _ in jobs]
    return pd.DataFrame(rows)


SAMPLE_SETTINGS, SAMPLE_LOG = "samples.json", "samples.jsonl"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


SKIPPED_FOLDERS = ("checkpoints", "cache")  # a training run's folders that hold no weights the model loads


def sample_settings(sampling: SamplingSettings) -> dict[str, Any]:
    """What makes a sample what it is: the sampling settings without ``batch_size`` (seeds are per sample, whatever
    the batch) and ``samples_per_prompt`` (more or fewer samples leave the saved ones valid)."""
    return {k: v for k, v in asdict(sampling).items() if k not in ("batch_size", "samples_per_prompt")}


def weights_fingerprint(spec: ModelSpec) -> dict[str, list]:
    """What identifies a model's weights on disk, so that samples of retrained weights at the same path are not
    reused: (relative name, size, modification time in ns) of the LoRA file, and of every weight file under a local
    pipeline directory (a training run's ``checkpoints/`` and ``cache/`` left out); a Hub id identifies itself."""
    found = {}
    for role, location in (("pipeline", spec.pipeline), ("lora", spec.lora)):
        path = Path(location) if location else None
        if path is None or not path.exists():
            continue
        if path.is_file():
            files = [path]
        elif role == "lora":
            files = [path / LORA_WEIGHT_NAME] if (path / LORA_WEIGHT_NAME).is_file() else []
        else:
            files = sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES
                           and not set(p.relative_to(path).parts[:-1]) & set(SKIPPED_FOLDERS))
        found[role] = [[str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns]
                       for f in files]
    return found


def saved_samples(model_dir: Path, made: dict[str, Any]) -> dict[tuple[int, int], dict]:
    """The samples an earlier run saved in ``model_dir`` with the settings ``made``, by (prompt, sample) index.

    Records ``made`` in ``samples.json`` on a first run. A last ``samples.jsonl`` line cut short by a kill, and lines
    whose PNG is gone, are left out (those samples are generated again). Each line's image is looked up in
    ``model_dir`` by its file name, so a folder moved or copied elsewhere resumes from its own PNGs.

    Raises:
        ValueError: ``model_dir`` holds samples made with other settings (or a damaged ``samples.json``).
    """
    settings_path, log_path = model_dir / SAMPLE_SETTINGS, model_dir / SAMPLE_LOG
    if not settings_path.exists():
        log_path.unlink(missing_ok=True)  # lines without their settings cannot be trusted
        write_text_atomic(settings_path, json.dumps(made, indent=1, sort_keys=True, default=str))
        return {}
    try:
        recorded = read_json(settings_path)
    except ValueError as error:  # names the file
        raise ValueError(f"{error}: damaged; delete {model_dir} to sample this model again") from error
    current = json.loads(json.dumps(made, default=str))  # tuples as lists, as they were recorded
    if recorded != current:
        differing = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
        raise ValueError(
            f"{model_dir} holds samples made with other {', '.join(differing)} ({settings_path}); resuming would mix "
            "them: use another out_dir, or delete that folder to sample this model again")
    done = {}
    if log_path.exists():
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                key = (int(row["prompt_index"]), int(row["sample_index"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
            image = model_dir / Path(row["image"]).name  # the PNG beside this log, also in a moved or copied folder
            if image.is_file():
                done[key] = {**row, "image": str(image.resolve())}
    return done


def write_outputs(results: EvaluationResults, out_dir: Path, stats: StatsSettings, report: ReportSettings) -> Path:
    """Results files, grids, figures and the HTML report; returns the report's path."""
    summary, win_rates = results.summary(stats), results.win_rates(stats)
    results.save(out_dir, stats, summary, win_rates)
    write_grids(results, out_dir / "grids", report)
    figures: dict[str, bytes] = {}
    if report.plots:
        try:
            from diffusion_align.evaluate.plots import plot_score_distributions, plot_win_rates, save_figure
        except ImportError as error:
            raise ImportError("report.plots=true draws figures with matplotlib: pip install matplotlib, "
                              "or set report.plots=false") from error
        drawn = {f"scores_{reward}": plot_score_distributions(results, reward) for reward in results.reward_names}
        if win_rates:
            drawn["win_rates"] = plot_win_rates(win_rates)
        for name, figure in drawn.items():
            figures[name] = save_figure(figure, out_dir / "plots" / f"{name}.png").read_bytes()
    for w in win_rates:
        log.info("%s vs %s (%s): win rate %.3f [%.3f, %.3f]", w.model, w.opponent, w.reward, w.win_rate, w.low, w.high)
    return write_report(out_dir / "report.html", report_html(results, summary, win_rates, report, figures))


def evaluate_models(
    models: Mapping[str, ModelSpec | str | Mapping[str, Any]],
    prompts: PromptSet | Sequence[str],
    rewards: Mapping[str, RewardModel] | RewardModel,
    out_dir: str | Path,
    *,
    sampling: SamplingSettings | None = None,
    stats: StatsSettings | None = None,
    report: ReportSettings | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    score_batch_size: int = 16,
    video_aggregate: str = "mean",
) -> EvaluationResults:
    """Compare models on the same prompts and seeds, score them, and write results, grids, plots and a report.

    Args:
        models: name -> :class:`ModelSpec`, a pipeline path / Hub id, or a mapping of ModelSpec fields, e.g.
            ``{"base": "path/to/pipeline", "aligned": {"pipeline": "path/to/pipeline", "lora": "outputs/train/x"}}``.
            The first model is the baseline of the report's difference columns; win rates cover every pair.
        prompts: a :class:`PromptSet` (``diffusion_align.evaluate.prompts`` loaders) or a list of prompts.
        rewards: reward models by name (or a single one, named by its ``name``); higher scores are better.
        out_dir: where everything is written (see the module docstring).
        sampling: samples per prompt, seed, steps, guidance, size, batch size; identical for every model.
        stats: interval method and coverage, bootstrap resamples, tie tolerance.
        report: what the grids and the HTML report show.
        device: where pipelines run (reward models stay where they are).
        dtype: pipelines' weight dtype (``float32``, ``float16``, ``bfloat16``).
        score_batch_size: samples per reward-model call.
        video_aggregate: clips' per-frame scores -> one: ``mean``, ``min`` or ``temporal_consistency``.

    Returns:
        The :class:`EvaluationResults` (also saved as ``out_dir/results.json`` and ``results.parquet``).
    """
    sampling, stats, report = sampling or SamplingSettings(), stats or StatsSettings(), report or ReportSettings()
    specs = {name: as_model_spec(name, spec) for name, spec in models.items()}
    if not specs:
        raise ValueError("models: nothing to evaluate; give at least one model")
    prompt_set, named_rewards = as_prompt_set(prompts), as_rewards(rewards)
    out_dir = Path(out_dir)
    table = generate_samples(specs, prompt_set, sampling, out_dir / "images", device, dtype)
    settings = {"prompt_set": prompt_set.name, "sampling": asdict(sampling), "stats": asdict(stats),
                "video_aggregate": video_aggregate, "dtype": dtype}
    results = EvaluationResults(table, {name: spec.describe() for name, spec in specs.items()}, {}, settings)
    results = score_results(results, named_rewards, score_batch_size, video_aggregate)
    report_path = write_outputs(results, out_dir, stats, report)
    log.info("evaluated %d models on %d prompts: %s", len(specs), len(prompt_set), report_path)
    return results


def model_specs(cfg: DictConfig) -> dict[str, ModelSpec]:
    """``cfg.models`` as specs; a model without its own ``pipeline`` uses ``cfg.pipeline``."""
    models = OmegaConf.to_container(cfg.models, resolve=True)
    if not models:
        raise ValueError("models: empty; e.g. models.base={} +models.aligned.lora=<diffalign train output>")
    specs = {}
    for name, spec in models.items():
        spec = dict(spec or {})
        if not spec.get("pipeline"):
            if OmegaConf.is_missing(cfg, "pipeline"):
                raise ValueError(f"models.{name} has no pipeline and `pipeline` (the shared base) is not set")
            spec["pipeline"] = cfg.pipeline
        specs[str(name)] = as_model_spec(str(name), spec)
    return specs


def run(cfg: DictConfig) -> Path:
    """``diffalign evaluate``: the composed ``conf/evaluate.yaml``; returns the output folder."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise RuntimeError(f"diffalign evaluate runs as one process per job, got WORLD_SIZE={world}: launch it "
                           "without accelerate/torchrun (on SLURM: hydra.launcher.gpus_per_node=1)")
    out_dir = Path(cfg.output_dir)
    specs, prompts = model_specs(cfg), build(cfg.prompts)  # cheap checks first, then the reward models load
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("sampling", "stats", "report")}
    rewards = {name: build(node, device=cfg.reward_device) for name, node in cfg.rewards.items()}
    results = evaluate_models(
        specs, prompts, rewards, out_dir,
        sampling=SamplingSettings(**settings["sampling"]), stats=StatsSettings(**settings["stats"]),
        report=ReportSettings(**settings["report"]), device=cfg.device, dtype=cfg.dtype,
        score_batch_size=cfg.score_batch_size, video_aggregate=cfg.video_aggregate,
    )
    write_metrics(results, out_dir)
    return out_dir


def write_metrics(results: EvaluationResults, out_dir: Path) -> Path:
    """``metrics.json``: the per-model means and pairwise win rates of ``results.json`` without its rows."""
    document = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    metrics = {"models": list(results.models), "summary": document["summary"], "win_rates": document["win_rates"]}
    return write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=str))
