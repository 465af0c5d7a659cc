"""Cluster runs (diffusion_align/cluster.py): the SLURM preset's sbatch script, submitit tasks as accelerate
processes, and real submitit-local jobs — one end to end, one pre-empted by submitit's signal and requeued.

The submitit *local* executor runs the same code path as SLURM (pickled job, ``submitit.core._submit`` tasks, the
signal handler that requeues) with processes on this machine, so the requeue is real; only ``sbatch`` is not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file

from diffusion_align.cluster import export_distributed_env, preemption_signal, sbatch_script
from diffusion_align.sweep import SUMMARY_CSV

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
LORA = "pytorch_lora_weights.safetensors"


def _launcher(*overrides: str):
    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_slurm_preset_sbatch_script_has_the_requested_resources_and_the_requeue_signal(tmp_path):
    launcher = _launcher("hydra.launcher.partition=gpu", "hydra.launcher.account=vision", "hydra.launcher.nodes=2",
                         "hydra.launcher.gpus_per_node=4", "hydra.launcher.timeout_min=120",
                         "hydra.launcher.mem_gb=256", "hydra.launcher.setup=[module load cuda]")
    script = sbatch_script(launcher, tmp_path / "%j")
    lines = script.splitlines()
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --account=vision", "#SBATCH --nodes=2",
                     "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4", "#SBATCH --time=120",
                     "#SBATCH --mem=256GB", "#SBATCH --cpus-per-task=10", "#SBATCH --signal=USR2@180",
                     "#SBATCH --open-mode=append", "#SBATCH --job-name=train", "module load cuda",
                     "export SUBMITIT_EXECUTOR=slurm"):
        assert expected in lines, f"{expected!r} not in:\n{script}"
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1 and "-m submitit.core._submit" in srun[0]
    assert not any("--qos" in line or "--constraint" in line for line in lines)  # None = not set


def test_slurm_preset_defaults_one_task_per_gpu(tmp_path):
    launcher = _launcher("hydra.launcher.gpus_per_node=2")
    assert launcher.tasks_per_node == 2 and launcher.max_num_timeout == 20
    assert launcher._target_.endswith("SlurmLauncher")


def _submitit_task_env(monkeypatch, rank: int, tasks: int) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        # set, then delete: monkeypatch records the variable and removes what export() writes at teardown
        # (a WORLD_SIZE left behind would make every later in-process training wait for a process group)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", str(tasks))
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_NUM_NODES", "1")
    monkeypatch.setenv("SUBMITIT_LOCAL_NODEID", "0")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", str(rank))
    monkeypatch.setenv("SUBMITIT_LOCAL_LOCALID", str(rank))


def test_a_task_of_a_multi_task_job_exports_the_env_accelerate_reads(monkeypatch):
    _submitit_task_env(monkeypatch, rank=1, tasks=2)
    assert export_distributed_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["MASTER_ADDR"] and int(os.environ["MASTER_PORT"]) > 0
    assert preemption_signal() == signal.SIGUSR2
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert preemption_signal() == signal.SIGUSR1


def test_single_task_jobs_and_plain_processes_export_nothing(monkeypatch):
    _submitit_task_env(monkeypatch, rank=0, tasks=1)
    assert not export_distributed_env() and "WORLD_SIZE" not in os.environ
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert not export_distributed_env() and preemption_signal() is None


def _submitit_train(sweep: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "diffusion_align.cli", "train", "-m", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", "debug=tiny", *overrides]


def test_submitit_local_launcher_runs_a_real_training_job_end_to_end(tiny_pairs, tmp_path):
    sweep = tmp_path / "sweep"
    done = subprocess.run(_submitit_train(sweep, f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=2"),
                          capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (sweep / "0" / LORA).is_file()
    assert json.loads((sweep / "0" / "metrics.json").read_text())["step"] == 2
    assert list((sweep / ".submitit").glob("*/*_0_result.pkl")), "submitit did not run the job"
    assert "completed" in (sweep / SUMMARY_CSV).read_text()


def _task_pid(sweep: Path) -> int | None:
    """The submitit task process of the sweep (the one running the training), if it is up."""
    found = subprocess.run(["pgrep", "-f", f"submitit.core._submit {sweep}"], capture_output=True, text=True)
    pids = [int(pid) for pid in found.stdout.split()]
    return pids[0] if pids else None


def test_a_preempted_job_checkpoints_is_requeued_and_resumes_to_the_uninterrupted_result(tiny_pairs, tmp_path):
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=40", "trainer.checkpoint_every=2",
              "trainer.max_grad_norm=0", "data.loader.batch_size=4"]
    reference = tmp_path / "reference"
    plain = [sys.executable, "-m", "diffusion_align.cli", "train", "debug=tiny", *common, f"hydra.run.dir={reference}"]
    sweep = tmp_path / "sweep"
    job = subprocess.Popen(_submitit_train(sweep, *common), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=ENV)
    deadline = time.time() + 300
    while not (sweep / "0" / "checkpoints" / "checkpoint-2").is_dir():
        assert job.poll() is None and time.time() < deadline, "the job ended before its first checkpoint"
        time.sleep(0.05)
    pid = _task_pid(sweep)
    assert pid is not None
    os.kill(pid, signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit, or on pre-emption
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-4000:]
    log = (sweep / "0" / "train.log").read_text()
    assert "stopped by SIGUSR2" in log and "resumed from" in log, log[-3000:]
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_0_log.out"))
    assert "Requeued job" in submitit_log, submitit_log[-3000:]
    assert "completed" in (sweep / SUMMARY_CSV).read_text()
    done = subprocess.run(plain, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-4000:]
    a, b = load_file(reference / LORA), load_file(sweep / "0" / LORA)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.fixture(autouse=True)
def _no_stray_tasks(tmp_path):
    yield
    leftover = _task_pid(tmp_path / "sweep")
    if leftover is not None:
        os.kill(leftover, signal.SIGKILL)
