"""Every notebook executes top to bottom (nbclient) on the tiny models and writes its figures."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
FIGURES = {"quickstart.ipynb": ["side_by_side.png"]}


def test_every_notebook_is_listed():
    assert [p.name for p in NOTEBOOKS] == sorted(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("DIFFALIGN_CACHE", os.environ["DIFFALIGN_CACHE"])
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    for figure in FIGURES[path.name]:
        assert (tmp_path / figure).is_file(), f"{path.name} did not write {figure}"
