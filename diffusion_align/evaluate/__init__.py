"""Evaluation: the same prompts and seeds for every model, reward scores, win rates with confidence intervals,
PNG grids and a self-contained HTML report (``diffalign evaluate``; Python: :func:`evaluate_models`)."""

from diffusion_align.evaluate.prompts import (
    PromptSet,
    load_geneval,
    load_hpdv2_test,
    load_moving_shapes_held_out,
    load_partiprompts,
    load_pickapic_test_unique,
    load_prompt_file,
    load_shapes_held_out,
)
from diffusion_align.evaluate.report import ReportSettings
from diffusion_align.evaluate.results import EvaluationResults, load_results, merge_results
from diffusion_align.evaluate.run import evaluate_models
from diffusion_align.evaluate.sampling import ModelSpec, SamplingSettings, sample_seed
from diffusion_align.evaluate.scoring import score_results
from diffusion_align.evaluate.stats import StatsSettings, WinRate, sign_test, wilson_interval, win_rate

__all__ = [
    "EvaluationResults",
    "ModelSpec",
    "PromptSet",
    "ReportSettings",
    "SamplingSettings",
    "StatsSettings",
    "WinRate",
    "evaluate_models",
    "load_geneval",
    "load_hpdv2_test",
    "load_partiprompts",
    "load_pickapic_test_unique",
    "load_prompt_file",
    "load_results",
    "load_moving_shapes_held_out",
    "load_shapes_held_out",
    "merge_results",
    "sample_seed",
    "score_results",
    "sign_test",
    "wilson_interval",
    "win_rate",
]
