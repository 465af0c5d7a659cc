"""Running inside cluster jobs: submitit tasks as accelerate processes, pre-emption, the sbatch script of a preset.

``diffalign <command> -m hydra/launcher=slurm ...`` submits each job of the sweep through hydra's submitit plugin
(``conf/hydra/launcher/slurm.yaml``). Inside a job:

* every SLURM task (``tasks_per_node`` = GPUs per node) runs the same command; :func:`export_distributed_env`
  turns submitit's view of the job (hostnames, ranks) into the ``env://`` variables accelerate reads (``MASTER_ADDR``,
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``...), through ``submitit.helpers.TorchDistributedEnvironment``, so one job
  trains with DDP over all its GPUs and nodes;
* before the time limit, and on pre-emption, submitit's signal (``SIGUSR2`` unless ``SUBMITIT_PREEMPT_SIGNAL`` says
  otherwise) reaches the task. ``diffalign train`` treats it like SIGTERM — it finishes the optimizer step, writes a
  checkpoint — and then hands the signal to submitit, which requeues the job (``max_num_timeout`` times for time
  limits); the requeued job runs the same command in the same directory and resumes from that checkpoint
  (``trainer.resume_from_checkpoint=latest``).

:func:`sbatch_script` renders the batch script a launcher config would submit, through submitit's own SLURM executor,
so a preset can be checked without a cluster (``python -m diffusion_align.cluster train hydra/launcher=slurm ...``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SUBMITIT_EXECUTOR_ENV = "SUBMITIT_EXECUTOR"  # set by submitit in every task of a job ("slurm", "local")
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def in_submitit_job() -> bool:
    """Whether this process is a task of a submitit job."""
    return bool(os.environ.get(SUBMITIT_EXECUTOR_ENV))


def export_distributed_env() -> bool:
    """In a submitit job of several tasks, export ``MASTER_ADDR``/``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    ``CUDA_VISIBLE_DEVICES`` is left alone: accelerate picks ``cuda:<LOCAL_RANK>`` itself. Variables already set (by
    ``torchrun`` inside the job, say) win. Returns whether anything was exported.
    """
    if not in_submitit_job():
        return False
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks <= 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def preemption_signal() -> signal.Signals | None:
    """The signal submitit sends a task before its time limit or on pre-emption; ``None`` outside submitit jobs."""
    if not in_submitit_job():
        return None
    name = os.environ.get(PREEMPT_SIGNAL_ENV, "USR2")
    return signal.Signals[f"SIG{name}" if not name.startswith("SIG") else name]


GENERIC_PARAMETERS = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
                      "stderr_to_stdout")


def sbatch_script(launcher: DictConfig, folder: str | Path) -> str:
    """The sbatch script submitit would write for one job of ``launcher`` (a composed ``hydra.launcher``).

    The parameters take the path they take at submission: hydra's submitit plugin sends ``submitit_folder`` and
    ``max_num_timeout`` to the executor and the rest to ``update_parameters``, where submitit renames the generic
    ones (``timeout_min`` -> ``time``, ``tasks_per_node`` -> ``ntasks_per_node``, ``mem_gb`` -> ``mem``) and
    ignores ``None`` values.
    """
    from submitit.slurm.slurm import SlurmExecutor

    class PreviewExecutor(SlurmExecutor):
        """submitit's SLURM executor on a machine without ``srun``: it only renders the script."""

        @classmethod
        def affinity(cls) -> int:
            return 1

    params = {key: value for key, value in OmegaConf.to_container(launcher, resolve=True).items()
              if value is not None and key not in ("_target_", "submitit_folder")}  # submitit: None = not set
    executor = PreviewExecutor(folder, max_num_timeout=params.pop("max_num_timeout", 0))
    generic = {key: params.pop(key) for key in GENERIC_PARAMETERS if key in params}
    executor._internal_update_parameters(**executor._convert_parameters(generic), **params)
    return executor._make_submission_file_text(executor._submitit_command_str, "preview")


def main(argv: list[str] | None = None) -> None:
    """``python -m diffusion_align.cluster <command> [overrides]``: print the sbatch script of one job."""
    from hydra import compose, initialize_config_module

    from diffusion_align.config import register_resolvers

    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        raise SystemExit("usage: python -m diffusion_align.cluster <train|generate|evaluate> hydra/launcher=slurm ...")
    register_resolvers()
    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        cfg = compose(args[0], overrides=args[1:], return_hydra_config=True)
    if "SlurmLauncher" not in str(cfg.hydra.launcher.get("_target_", "")):
        raise SystemExit(f"hydra.launcher is {cfg.hydra.launcher.get('_target_')}: add hydra/launcher=slurm")
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.sweep.dir = "<sweep dir>"  # the real one is timestamped at submission
    print(sbatch_script(cfg.hydra.launcher, "<sweep dir>/.submitit/%j"))


if __name__ == "__main__":
    main()
