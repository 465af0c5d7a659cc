"""Figures: score distributions, differences and win rates from results; training curves from event files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffusion_align.evaluate.plots import (
    plot_score_differences,
    plot_score_distributions,
    plot_training_curves,
    plot_win_rates,
    read_scalars,
    save_figure,
)


def test_result_figures_save_as_png(evaluation, tmp_path):
    results, _ = evaluation
    figures = {
        "distributions": plot_score_distributions(results, "clip"),
        "differences": plot_score_differences(results, "clip", "aligned", "base"),
        "win_rates": plot_win_rates(results.win_rates()),
    }
    for name, figure in figures.items():
        path = save_figure(figure, tmp_path / f"{name}.png")
        assert Image.open(path).size[0] >= 400
    legend = [text.get_text() for text in figures["distributions"].axes[0].get_legend().get_texts()]
    assert [label.split()[0] for label in legend] == ["base", "aligned"]
    assert len(figures["win_rates"].axes[0].get_yticklabels()) == 2
    with pytest.raises(ValueError, match="no comparisons"):
        plot_win_rates([])


def write_events(directory, steps: range, offset: float = 0.0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    for step in steps:
        writer.add_scalar("train/loss", 1.0 / step + offset, step)
        writer.add_scalar("train/rewards/accuracies", 0.5 + step / 100, step)
    writer.close()


def test_training_curves_read_every_event_file(tmp_path):
    write_events(tmp_path / "run" / "diffusion-align", range(1, 6))
    write_events(tmp_path / "run" / "resumed", range(5, 9), offset=1.0)  # a resumed run: later values win
    scalars = read_scalars(tmp_path / "run")
    steps, losses = scalars["train/loss"]
    np.testing.assert_array_equal(steps, np.arange(1, 9))
    assert losses[0] == pytest.approx(1.0) and losses[4] == pytest.approx(1.0 / 5 + 1.0)
    figure = plot_training_curves(tmp_path / "run")
    assert [axes.get_title() for axes in figure.axes] == ["train/loss", "train/rewards/accuracies"]
    assert Image.open(save_figure(figure, tmp_path / "curves.png")).size[0] >= 400


def test_training_curves_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tensorboard event files"):
        read_scalars(tmp_path)
    write_events(tmp_path / "run", range(1, 3))
    with pytest.raises(KeyError, match=r"no scalar\(s\) \['val/loss'\]"):
        plot_training_curves(tmp_path / "run", tags=["val/loss"])
