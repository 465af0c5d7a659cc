"""Resumable and idempotent: a run killed mid-shard and resumed ends with exactly the rows of an uninterrupted run;
a shard whose tables were renamed but whose marker was not is redone; a complete dataset is left alone; a changed
configuration is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

import diffusion_align.generate.dataset as dataset_module
from diffusion_align.generate import ManifestMismatchError, generate_dataset
from generate.helpers import GENERATION, PROMPTS, read_table

# Runs the reference generation in a fresh process; the first pipeline call for `block_prompt` signals and hangs
# (so the kill lands mid-shard, deterministically, after the shards before it are complete).
KILLED_RUN = """
import json, pathlib, sys, time
args = json.loads(sys.argv[1])
import diffusion_align.generate.dataset as dataset
from diffusion_align.generate import PipelineSpec, generate_dataset
from generate.helpers import GENERATION, PROMPTS
from reward_models import ClipScoreReward, PickScoreReward, RewardEnsemble

original = dataset.generate_media
def generate_or_hang(pipeline, spec, prompts, seeds, **extra):
    if args["block_prompt"] in prompts:
        pathlib.Path(args["signal"]).write_text("blocked")
        time.sleep(600)
    return original(pipeline, spec, prompts, seeds, **extra)
dataset.generate_media = generate_or_hang
reward = RewardEnsemble({"pickscore": PickScoreReward(**args["rewards"]["pickscore"]),
                         "clip_score": ClipScoreReward(**args["rewards"]["clip_score"])})
specs = [PipelineSpec(**spec) for spec in args["specs"]]
generate_dataset(PROMPTS, specs, reward, args["out_dir"], **GENERATION)
"""


def assert_same_rows(out_dir: Path, reference: Path) -> None:
    for table in ("ranked", "pairs"):
        resumed, expected = read_table(out_dir, table), read_table(reference, table)
        assert resumed.num_rows == expected.num_rows
        assert resumed.equals(expected), f"{table}: resumed rows differ from the uninterrupted run's"


def wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before blocking:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the run never reached the blocking shard"
        time.sleep(0.2)


def test_killed_run_resumes_to_the_uninterrupted_rows(generated, image_specs, reward_kwargs, tiny_ensemble, tmp_path):
    out_dir, blocked, log = tmp_path / "killed", tmp_path / "blocked", tmp_path / "stderr.txt"
    args = {"out_dir": str(out_dir), "signal": str(blocked), "block_prompt": PROMPTS[2], "rewards": reward_kwargs,
            "specs": [asdict(spec) for spec in image_specs]}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(args)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for(blocked, process, log)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
    assert (out_dir / "shards" / "shard-00000.json").is_file()
    assert not (out_dir / "shards" / "shard-00001.json").exists()  # killed inside shard 1
    summary = generate_dataset(PROMPTS, image_specs, tiny_ensemble, out_dir, **GENERATION)
    assert summary.complete and (summary.prompts, summary.candidates, summary.pairs) == (3, 12, 18)
    assert_same_rows(out_dir, generated)


def test_shard_with_tables_but_no_marker_is_redone_alone(generated, image_specs, tiny_ensemble, tmp_path, monkeypatch):
    """As if killed between renaming shard 1's tables and its marker, with a temporary file left behind."""
    out_dir = tmp_path / "crashed"
    shutil.copytree(generated, out_dir)
    (out_dir / "shards" / "shard-00001.json").unlink()
    (out_dir / "pairs" / "shard-00001.parquet").unlink()
    stale = out_dir / "ranked" / ".shard-00001.parquet.otherhost.4242.tmp"
    stale.write_bytes(b"half a parquet file")
    (out_dir / "README.md").unlink()
    prompts_generated = []
    original = dataset_module.generate_media

    def recording(pipeline, spec, prompts, seeds, **extra):
        prompts_generated.extend(prompts)
        return original(pipeline, spec, prompts, seeds, **extra)

    monkeypatch.setattr(dataset_module, "generate_media", recording)
    summary = generate_dataset(PROMPTS, image_specs, tiny_ensemble, out_dir, **GENERATION)
    assert set(prompts_generated) == {PROMPTS[2]} and len(prompts_generated) == 4  # shard 1 only
    assert summary.complete and not stale.exists() and (out_dir / "README.md").is_file()
    assert_same_rows(out_dir, generated)


def test_complete_dataset_is_left_alone(generated, image_specs, tiny_ensemble, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a complete dataset loaded a pipeline")

    monkeypatch.setattr(dataset_module, "load_pipeline", refuse)
    before = {p: p.stat().st_mtime_ns for p in generated.rglob("*.parquet")}
    summary = generate_dataset(PROMPTS, image_specs, tiny_ensemble, generated, **GENERATION)
    assert summary.complete and summary.candidates == 12
    assert {p: p.stat().st_mtime_ns for p in generated.rglob("*.parquet")} == before


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"images_per_prompt": 3}, "config.images_per_prompt: 2 (manifest) != 3 (now)"),
        ({"prompts": [*PROMPTS, "one more prompt"]}, "config.prompts.count: 3 (manifest) != 4 (now)"),
        ({"seed": 1}, "config.seed: 0 (manifest) != 1 (now)"),
        ({"prompts_per_shard": 1}, "config.prompts_per_shard"),
        ({"specs": "call"}, "config.pipelines"),
    ],
)
def test_changed_config_is_refused_naming_the_key(change, key, generated, image_specs, tiny_ensemble, tmp_path):
    out_dir = tmp_path / "changed"
    out_dir.mkdir()
    shutil.copy(generated / "manifest.json", out_dir / "manifest.json")
    settings = {**GENERATION, **{k: v for k, v in change.items() if k not in ("prompts", "specs")}}
    prompts = change.get("prompts", PROMPTS)
    specs = [image_specs[0], type(image_specs[1])(**{**asdict(image_specs[1]), "call": {"num_inference_steps": 4}})] \
        if "specs" in change else image_specs
    with pytest.raises(ManifestMismatchError, match="another configuration") as error:
        generate_dataset(prompts, specs, tiny_ensemble, out_dir, **settings)
    assert key in str(error.value)
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.json"]  # nothing written, no temporary left
