"""`diffalign generate` through hydra: config composition, pipeline specs, and a multirun split over worker jobs
(what SLURM array jobs do through the submitit launcher, here with hydra's basic launcher)."""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose, initialize_config_module
from omegaconf.errors import MissingMandatoryValue

from diffusion_align.cli import main
from diffusion_align.generate.prompts import load_prompts
from diffusion_align.generate.run import pipeline_specs, reward_fingerprint
from generate.helpers import read_table


def compose_generate(overrides: list[str]):
    with initialize_config_module(config_module="diffusion_align.conf", version_base="1.3"):
        return compose(config_name="generate", overrides=overrides)


def pickscore_overrides(reward_kwargs) -> list[str]:
    kwargs = reward_kwargs["pickscore"]
    return ["reward=pickscore", f"reward.model={kwargs['model']}", f"reward.processor={kwargs['processor']}"]


def test_pipelines_merge_over_the_defaults():
    cfg = compose_generate(["+pipelines.base.path=/models/sd15", "+pipelines.turbo.path=/models/turbo",
                            "+pipelines.turbo.call={num_inference_steps: 1, guidance_scale: 0.0}",
                            "+pipelines.turbo.batch_size=16", "++pipeline_defaults.call={num_inference_steps: 30}"])
    base, turbo = pipeline_specs(cfg)
    assert (base.name, base.path, base.call, base.batch_size) == ("base", "/models/sd15", {"num_inference_steps": 30}, 4)
    assert (turbo.name, turbo.call, turbo.batch_size) == ("turbo", {"num_inference_steps": 1, "guidance_scale": 0.0}, 16)
    with pytest.raises(ValueError, match=r"pipelines: none given; add one with \+pipelines.<name>.path="):
        pipeline_specs(compose_generate([]))
    with pytest.raises(MissingMandatoryValue, match="path"):
        pipeline_specs(compose_generate(["+pipelines.x.call={num_inference_steps: 2}"]))


def test_reward_fingerprint_leaves_out_where_and_how_fast_it_runs():
    config = {"_target_": "E", "device": "cuda", "batch_size": 8, "models": {"a": {"model": "p", "device": "cpu"}}}
    assert reward_fingerprint(config) == {"_target_": "E", "models": {"a": {"model": "p"}}}


def test_multirun_over_worker_index_splits_the_shards(tiny_pipeline_path, reward_kwargs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    out_dir = tmp_path / "synpic"
    main(["generate", "-m", f"out_dir={out_dir}", "prompts.source=shapes_held_out", "prompts.limit=3",
          f"+pipelines.tiny.path={tiny_pipeline_path('sd15')}",
          "+pipelines.tiny.call={num_inference_steps: 1, guidance_scale: 1.0}", "images_per_prompt=2",
          "prompts_per_shard=1", "pairs.strategy=all_pairs", *pickscore_overrides(reward_kwargs), "reward_device=cpu", "progress=false",
          "worker.count=2", "worker.index=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
          "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"])
    markers = [json.loads(p.read_text()) for p in sorted((out_dir / "shards").glob("*.json"))]
    assert [(m["shard"], m["worker"]) for m in markers] == [(0, [0, 2]), (1, [1, 2]), (2, [0, 2])]
    ranked = read_table(out_dir, "ranked").to_pylist()
    assert [row["prompt"] for row in ranked] == [p for p in load_prompts("shapes_held_out", limit=3) for _ in (0, 1)]
    assert read_table(out_dir, "pairs").num_rows == 3
    assert (out_dir / "README.md").is_file()
    assert "3/3 shards complete" in capsys.readouterr().out  # the second job found every shard done
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert "device" not in manifest["config"]["reward_config"] and manifest["config"]["kind"] == "ranked"
    assert not os.path.exists(out_dir / "dense_pairs")
