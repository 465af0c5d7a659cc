"""Figures people would rather look at than read: score distributions, win rates, training curves.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global backend state, so it works
in scripts, servers and notebooks alike); :func:`save_figure` writes one as PNG. Training curves read the
tensorboard event files ``diffalign train`` writes with ``trainer.report_to=[tensorboard]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from diffusion_align.evaluate.media import load_frames
from diffusion_align.evaluate.results import EvaluationResults
from diffusion_align.evaluate.stats import WinRate
from diffusion_align.io import write_atomic

EVENT_FILE_GLOB = "events.out.tfevents.*"


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG (through a temporary file)."""
    return write_atomic(Path(path), lambda temporary: figure.savefig(temporary, format="png", dpi=dpi))


def plot_score_distributions(results: EvaluationResults, reward: str, models: Sequence[str] | None = None) -> Figure:
    """Histograms of every model's scores under ``reward`` on shared bins, with each model's mean as a line.

    Base against aligned is the "reward distribution before / after" picture.
    """
    models = list(models or results.model_names)
    scores = {model: results.score_matrix(model, reward).ravel() for model in models}
    everything = np.concatenate(list(scores.values()))
    bins = np.histogram_bin_edges(everything, bins=min(30, max(5, everything.size // 4)))
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.add_subplot()
    for index, (model, values) in enumerate(scores.items()):
        colour = f"C{index}"
        axes.hist(values, bins=bins, histtype="stepfilled", alpha=0.35, color=colour, label=f"{model} (mean {values.mean():.3g})")
        axes.axvline(values.mean(), color=colour, linestyle="--", linewidth=1.5)
    axes.set_xlabel(f"{reward} score")
    axes.set_ylabel("samples")
    axes.set_title(f"{reward}: score distribution per model")
    axes.legend(fontsize="small")
    return figure


def plot_score_differences(results: EvaluationResults, reward: str, model: str, opponent: str) -> Figure:
    """Histogram of ``model - opponent`` score differences over paired samples (same prompt, same seed)."""
    results.check_paired(model, opponent)
    differences = (results.score_matrix(model, reward) - results.score_matrix(opponent, reward)).ravel()
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.add_subplot()
    axes.hist(differences, bins=min(30, max(5, differences.size // 4)), color="C2", alpha=0.7)
    axes.axvline(0.0, color="black", linewidth=1)
    axes.axvline(differences.mean(), color="C3", linestyle="--", label=f"mean {differences.mean():.3g}")
    axes.set_xlabel(f"{reward}: {model} - {opponent}")
    axes.set_ylabel("paired samples")
    axes.legend(fontsize="small")
    return figure


def plot_side_by_side(
    results: EvaluationResults, reward: str, model: str, opponent: str, rows: int = 6, largest: bool = True
) -> Figure:
    """The ``rows`` samples where ``model`` beats ``opponent`` by most (``largest=False``: loses by most), side by side.

    Each row: the opponent's image, the model's image (same prompt, same seed), scores in the titles.
    """
    paired = results.paired_samples(model, opponent, reward)
    chosen = paired.head(rows) if largest else paired.tail(rows).iloc[::-1]
    figure = Figure(figsize=(5, 2.8 * len(chosen)), layout="constrained")
    for row_figure, (_, row) in zip(np.atleast_1d(figure.subfigures(len(chosen), 1)), chosen.iterrows()):
        row_figure.suptitle(f"{row['prompt']}\n(seed {row['seed']}, difference {row['difference']:+.3g})", fontsize="small")
        for axes, name in zip(row_figure.subplots(1, 2), (opponent, model)):
            frames = load_frames(Path(row[f"image_{name}"]), 1)  # clips: the whole frame strip
            axes.imshow(np.asarray(frames[0]), interpolation="nearest")
            axes.set_title(f"{name}: {row[f'score_{name}']:.4g}", fontsize="small")
            axes.axis("off")
    return figure


def plot_win_rates(win_rates: Sequence[WinRate]) -> Figure:
    """Each comparison's win rate as a point with its interval as an error bar; 0.5 (no difference) marked."""
    if not win_rates:
        raise ValueError("plot_win_rates: no comparisons (a win rate needs two models)")
    labels = [f"{w.model} vs {w.opponent} ({w.reward})" for w in win_rates]
    rates = np.array([w.win_rate for w in win_rates])
    errors = np.array([[w.win_rate - w.low for w in win_rates], [w.high - w.win_rate for w in win_rates]])
    figure = Figure(figsize=(6, 1.2 + 0.45 * len(win_rates)), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(win_rates))[::-1]
    axes.errorbar(rates, positions, xerr=errors, fmt="o", color="C0", capsize=4)
    axes.axvline(0.5, color="grey", linestyle=":")
    axes.set_yticks(positions, labels)
    axes.set_xlim(0.0, 1.0)
    w = win_rates[0]
    axes.set_xlabel(f"win rate (ties count half), {w.confidence:.0%} {w.interval} interval")
    return figure


def read_scalars(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar a training run logged to tensorboard: ``{tag: (steps [T], values [T])}``, sorted by step.

    All event files under ``run_dir`` are read (a resumed run writes several); a later value at the same step
    replaces an earlier one.
    """
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:
        raise ImportError("reading training logs needs tensorboard: pip install tensorboard") from error
    folders = sorted({path.parent for path in Path(run_dir).rglob(EVENT_FILE_GLOB)})
    if not folders:
        raise FileNotFoundError(f"{run_dir}: no tensorboard event files ({EVENT_FILE_GLOB}); train with "
                                "trainer.report_to=[tensorboard]")
    by_tag: dict[str, dict[int, float]] = {}
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            by_tag.setdefault(tag, {}).update({event.step: event.value for event in accumulator.Scalars(tag)})
    return {tag: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)])) for tag, points in by_tag.items()}


def plot_training_curves(run_dir: str | Path, tags: Sequence[str] | None = None, columns: int = 2) -> Figure:
    """One panel per logged scalar (``train/loss``, ``train/rewards/accuracies``, ...) against optimizer steps.

    Args:
        run_dir: a ``diffalign train`` output folder (or any folder holding tensorboard event files).
        tags: which scalars to draw, in order; all of them, sorted, when ``None``.
        columns: panels per row.
    """
    scalars = read_scalars(run_dir)
    tags = list(tags) if tags is not None else sorted(scalars)
    if missing := [tag for tag in tags if tag not in scalars]:
        raise KeyError(f"{run_dir}: no scalar(s) {missing}; logged scalars are {sorted(scalars)}")
    rows = -(-len(tags) // columns)
    figure = Figure(figsize=(4 * columns, 2.6 * rows), layout="constrained")
    for index, tag in enumerate(tags):
        axes = figure.add_subplot(rows, columns, index + 1)
        steps, values = scalars[tag]
        axes.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
        axes.set_title(tag, fontsize="small")
        axes.set_xlabel("step")
    return figure
