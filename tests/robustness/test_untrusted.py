"""Untrusted files: weights load only through safetensors or ``torch.load(weights_only=True)``, no remote code runs
unless a user sets it, a pickled payload in a checkpoint is refused before it runs, and paths inside a dataset are
never opened or written to."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import diffusion_align
import reward_models
from diffusion_align.train.checkpoint import CheckpointError, list_checkpoints
from robustness.helpers import copy_run, good_row, snapshot

SOURCES = sorted(Path(diffusion_align.__file__).parent.rglob("*.py")) + sorted(
    Path(reward_models.__file__).parent.rglob("*.py"))


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def constant(node: ast.AST | None):
    return node.value if isinstance(node, ast.Constant) else node


def test_source_loads_weights_safely_and_never_trusts_remote_code():
    problems = []
    for source in SOURCES:
        for node, name, keywords in calls(ast.parse(source.read_text(), filename=str(source))):
            where = f"{source}:{node.lineno} {ast.unparse(node)[:80]}"
            if name.endswith("torch.load") and constant(keywords.get("weights_only")) is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
            if "trust_remote_code" in keywords and constant(keywords["trust_remote_code"]) is not False:
                problems.append(f"{where}: trust_remote_code not literally False")
            if re.fullmatch(r"(pickle|cPickle|dill|joblib)\.loads?", name):
                problems.append(f"{where}: unpickling")
            if name in ("np.load", "numpy.load") and constant(keywords.get("allow_pickle")) is not False:
                problems.append(f"{where}: np.load without allow_pickle=False")
            if name in ("eval", "exec"):
                problems.append(f"{where}: eval/exec")
    assert not problems, "\n".join(problems)


def test_source_scan_sees_the_calls_it_checks():
    """The scan above is not vacuous: it meets the loaders it is about."""
    found = [name for source in SOURCES for _, name, _ in calls(ast.parse(source.read_text()))]
    assert "torch.load" in found and any(name.endswith("from_pretrained") for name in found)


class Payload:
    """Unpickling it would create ``marker``: what an attacker's checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_pickled_payload_in_a_checkpoint_is_refused_before_it_runs(finished_run, run_train, tiny_pairs, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    newest = list_checkpoints(out / "checkpoints")[-1]
    marker = tmp_path / "payload-ran"
    state = torch.load(newest / "optimizer.pt", weights_only=True)
    torch.save({**state, "payload": Payload(marker)}, newest / "optimizer.pt")
    before = snapshot(out)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(newest / 'optimizer.pt'))}: cannot be read "
                                              r"\(Weights only load failed"):
        run_train(out, f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=4",
                  f"trainer.resume_from_checkpoint={newest}")
    assert not marker.exists(), "the pickled payload ran"
    assert snapshot(out) == before


def test_paths_inside_a_dataset_are_neither_read_nor_written(run_train, tmp_path):
    """Image cells as ``struct<bytes, path>`` with hostile paths: only the bytes are used; training (with the
    latent cache, which writes files) creates nothing outside its output directory."""
    data_dir, out = tmp_path / "data", tmp_path / "run"
    rows = [good_row(i) for i in range(8)]
    for i, row in enumerate(rows):
        row["jpg_0"] = {"bytes": row["jpg_0"], "path": f"../../escaped-{i}.png"}
        row["jpg_1"] = {"bytes": row["jpg_1"], "path": "/etc/passwd"}
    data_dir.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), data_dir / "train.parquet")
    outside_before = {p for p in tmp_path.parent.rglob("*") if out not in p.parents}
    run_train(out, f"data.dataset.paths={data_dir}", "trainer.max_steps=1", "data.cache.enabled=true")
    assert (out / "cache").is_dir() and "1 optimizer steps" in (out / "README.md").read_text()
    created_outside = {p for p in tmp_path.parent.rglob("*") if out not in p.parents and p != out} - outside_before
    assert not created_outside, sorted(created_outside)
