"""Scale-out: `diffalign generate` under 2 CPU processes (torchrun, the launcher accelerate uses; gloo) splits the
shards between them, and together the shards hold every prompt exactly once; the same split over submitit jobs
(SLURM arrays on a cluster, local processes here; opt-in: ``-m slow``).

``ACCELERATE_USE_CPU=true`` makes accelerate's PartialState pick gloo on CPU; each process takes the shards with
``index % 2 == rank`` and records itself in their markers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ports import free_port

from generate.helpers import read_table

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a white circle", "a black square"]


def generate_command(out_dir, prompts, sd15, pickscore) -> list[str]:
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return ["generate", f"out_dir={out_dir}", f"prompts.source={prompts}", f"+pipelines.tiny.path={sd15}",
            "+pipelines.tiny.call={num_inference_steps: 1, guidance_scale: 1.0}", "images_per_prompt=2",
            "prompts_per_shard=1", "reward=pickscore", f"reward.model={pickscore['model']}",
            f"reward.processor={pickscore['processor']}", "progress=false"]


def assert_every_prompt_once(out_dir) -> None:
    ranked = read_table(out_dir, "ranked").to_pylist()
    assert [(row["prompt_index"], row["prompt"]) for row in ranked] == [(i, p) for i, p in enumerate(PROMPTS) for _ in (0, 1)]
    assert len({(row["prompt_id"], row["candidate"]) for row in ranked}) == len(ranked)
    assert read_table(out_dir, "pairs").num_rows == len(PROMPTS)
    assert (out_dir / "README.md").is_file()


def test_two_processes_split_the_shards_and_cover_every_prompt_once(tiny_pipeline_path, reward_kwargs, tmp_path):
    out_dir = tmp_path / "synpic"
    command = generate_command(out_dir, tmp_path / "prompts.txt", tiny_pipeline_path("sd15"), reward_kwargs["pickscore"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "diffusion_align.cli", *command, f"hydra.run.dir={tmp_path / 'run'}", "hydra/job_logging=disabled",
           "hydra/hydra_logging=disabled"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    markers = [json.loads(p.read_text()) for p in sorted((out_dir / "shards").glob("*.json"))]
    assert [m["worker"] for m in markers] == [[0, 2], [1, 2], [0, 2], [1, 2], [0, 2]]
    assert_every_prompt_once(out_dir)
    assert "5/5 shards complete" in done.stdout and done.stdout.count("shards complete") == 1  # main process only


@pytest.mark.slow
def test_submitit_jobs_split_the_shards_like_an_array(tiny_pipeline_path, reward_kwargs, tmp_path):
    """`-m hydra/launcher=submitit_local worker.count=2 'worker.index=range(0,2)'`: submitit_slurm on a cluster."""
    out_dir = tmp_path / "synpic"
    command = generate_command(out_dir, tmp_path / "prompts.txt", tiny_pipeline_path("sd15"), reward_kwargs["pickscore"])
    cmd = [sys.executable, "-m", "diffusion_align.cli", "generate", "-m", *command[1:], "hydra/launcher=submitit_local",
           "worker.count=2", "worker.index=range(0,2)", f"hydra.sweep.dir={tmp_path / 'sweep'}",
           "hydra.launcher.timeout_min=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    markers = [json.loads(p.read_text()) for p in sorted((out_dir / "shards").glob("*.json"))]
    assert [m["worker"] for m in markers] == [[0, 2], [1, 2], [0, 2], [1, 2], [0, 2]]
    assert_every_prompt_once(out_dir)
