"""Every notebook executes top to bottom (nbclient) on the tiny models and writes its figures."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
FIGURES = {
    "quickstart.ipynb": ["renders.png", "side_by_side.png", "evaluate/report.html"],
    "side_by_side.ipynb": [
        "training_curves.png", "side_by_side.png", "score_distributions.png", "score_differences.png",
        "win_rates.png", "eval/report.html", "eval/grids/grid-000.png", "eval_half/results.json",
    ],
}


def test_every_notebook_is_listed():
    assert [p.name for p in NOTEBOOKS] == sorted(FIGURES)


def side_by_side_environment(request) -> dict[str, str]:
    """side_by_side.ipynb runs on the shipped Shapes pipeline; until that ships, on a random-weight SD1.5-architecture
    pipeline of the same 64 px size (the exact Shapes reward scores any 64 px image)."""
    from diffusion_align.shapes import PIPELINE_DIR

    if (PIPELINE_DIR / "model_index.json").is_file():
        return {}
    stand_in = request.getfixturevalue("tiny_pipeline_path")("sd15", sample_size=64)
    return {"SIDE_BY_SIDE_PIPELINE": str(stand_in)}


NOTEBOOK_ENVIRONMENTS = {"side_by_side.ipynb": side_by_side_environment}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch, request):
    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("DIFFALIGN_CACHE", os.environ["DIFFALIGN_CACHE"])
    for name, value in NOTEBOOK_ENVIRONMENTS.get(path.name, lambda _: {})(request).items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    for figure in FIGURES[path.name]:
        assert (tmp_path / figure).is_file(), f"{path.name} did not write {figure}"
