"""The two sides of ``bench_peer.py``: one shared workspace (pipeline + Pick-a-Pic-format data) and the command
lines of our trainer and of diffusers' research DPO script with every training knob matched, run under
``step_probe.py``.

Matched knobs (the script's argparse defaults unless the preset sets them; ours through
``+experiment=dpo_lora_sd15_diffusers``, which pins the same defaults): resolution, pairs per step, LoRA rank (alpha =
rank, gaussian init, ``to_k/to_q/to_v/to_out.0``), precision, steps, seed, AdamW (lr 5e-4, betas 0.9/0.999, wd 1e-2,
eps 1e-8), constant lr, max grad norm 1, β (their ``--beta_dpo 2500`` = our 5000 in the −0.5·β convention), center
crop + random horizontal flip per image, no prompt dropout, data loader workers, and a tensorboard tracker (the script
cannot run without one). The data has no ties, so both sides train on the same pairs.

Left as each side does it: the random draws (the script's global RNG; ours seeded per dataset row), so after step 1
the two runs see different noise, timesteps, flips and order, and their losses differ; the like-for-like loss
comparison recomputes the script's own batches instead (``peer_loss_check.py``). Also: logging cadence (the script
logs every step, ours every ``trainer.log_every`` = 10), our model card beside the LoRA file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PEER_SCRIPT = Path("examples/research_projects/diffusion_dpo/train_diffusion_dpo.py")
PEER_BETA_DPO = 2500  # the script's --beta_dpo default; our experiment's β = 2 × 2500 (no 0.5 factor in theirs)
MODELS = ("tiny", "tiny-small", "sd15-size")


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration, the same for both sides.

    Attributes:
        model: ``tiny`` (SD1.5 architecture, UNet widths (64, 128)), ``tiny-small`` (widths (32, 64), for smoke
            tests) or ``sd15-size`` (SD1.5's UNet, VAE and CLIP-L text encoder configs, random weights).
        resolution: training image side in pixels.
        batch_size: pairs per optimizer step.
        rank: LoRA rank (alpha = rank).
        precision: ``no`` | ``fp16`` | ``bf16`` (accelerate mixed precision, both sides).
        steps: optimizer steps of each process.
        warmup: leading steps left out of the steady-state median.
        rows: pairs in the dataset.
        workers: data loader worker processes (both sides).
        threads: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of both processes; ``None`` leaves the environment's.
        device: ``cpu`` hides every GPU from both processes; ``cuda`` lets accelerate pick it.
    """

    model: str
    resolution: int
    batch_size: int
    rank: int
    precision: str
    steps: int
    warmup: int
    rows: int
    workers: int = 0
    threads: int | None = None
    device: str = "cpu"


@dataclass
class SideResult:
    """What one side's process did, from the probe's record and the wall clock around the process."""

    name: str
    wall_s: float
    step_end_s: list[float]  # since the process was started
    losses: list[float]
    peak_rss_bytes: int  # ru_maxrss of the process (wait4)
    cuda_peak_bytes: int | None
    torch_threads: int
    notes: list[str] = field(default_factory=list)


def build_model(settings: Settings, path: Path) -> Path:
    """Write the benchmark pipeline (random weights, seeded) into ``path``; both sides load it from there."""
    from diffusion_align.testing import build_tiny_sd15

    if settings.model == "tiny":
        return build_tiny_sd15(path, block_out_channels=(64, 128), sample_size=settings.resolution)
    if settings.model == "tiny-small":
        return build_tiny_sd15(path, block_out_channels=(32, 64), sample_size=settings.resolution)
    if settings.model == "sd15-size":
        return build_sd15_size(path, settings.resolution)
    raise ValueError(f"model '{settings.model}': expected one of {MODELS}")


def build_sd15_size(path: Path, resolution: int, seed: int = 0) -> Path:
    """Stable Diffusion 1.5's architecture at full size with seeded random weights (UNet 860M parameters;
    ``full_size_model.py``). Built on the GPU when there is one."""
    import full_size_model

    return full_size_model.build("sd15", path, resolution, seed)


def write_data(settings: Settings, directory: Path) -> Path:
    """``directory/train-00000.parquet``: ``settings.rows`` tie-free Pick-a-Pic-format pairs, images at 1-1.25x
    the resolution (so both sides resize and center-crop)."""
    from diffusion_align.testing.data import write_tiny_pairwise_parquet

    write_tiny_pairwise_parquet(directory, n_rows=settings.rows, resolution=settings.resolution, ties=0)
    return directory


def peer_script(checkout: str | Path) -> Path:
    """The DPO script of a diffusers working tree, or ``checkout`` itself when it is the script's path."""
    checkout = Path(checkout)
    script = checkout if checkout.is_file() else checkout / PEER_SCRIPT
    if not script.is_file():
        raise FileNotFoundError(
            f"--diffusers-checkout {checkout}: expected a diffusers working tree holding {PEER_SCRIPT} or the path "
            f"of that script; {script} does not exist"
        )
    return script


def peer_program(settings: Settings, script: Path, model: Path, data: Path, out: Path) -> list[str]:
    """The script's command line; knobs it leaves at their defaults are the ones ours is pinned to."""
    return [
        str(script),
        f"--pretrained_model_name_or_path={model}",
        f"--dataset_name={data}",
        "--dataset_split_name=train",
        f"--cache_dir={out / 'hf_datasets_cache'}",
        f"--resolution={settings.resolution}",
        f"--train_batch_size={settings.batch_size}",
        f"--rank={settings.rank}",
        f"--mixed_precision={settings.precision}",
        f"--max_train_steps={settings.steps}",
        f"--dataloader_num_workers={settings.workers}",
        f"--beta_dpo={PEER_BETA_DPO}",
        f"--output_dir={out}",
        "--seed=0",
        "--report_to=tensorboard",
    ]


def ours_overrides(settings: Settings, model: Path, data: Path, cache: bool) -> list[str]:
    """Hydra overrides of ``diffalign train``: the experiment that pins the script's defaults, and the sizes."""
    return [
        "+experiment=dpo_lora_sd15_diffusers",
        f"model.adapter.path={model}",
        f"model.resolution={settings.resolution}",
        f"model.finetune.rank={settings.rank}",
        f"model.finetune.alpha={settings.rank}",
        f"data.dataset.paths={data}",
        f"data.loader.batch_size={settings.batch_size}",
        f"data.loader.num_workers={settings.workers}",
        f"data.loader.pin_memory={str(settings.device == 'cuda').lower()}",
        f"data.cache.enabled={str(cache).lower()}",
        f"trainer.mixed_precision={settings.precision}",
        f"trainer.max_steps={settings.steps}",
        f"method.loss.beta={2 * PEER_BETA_DPO}",
        "trainer.report_to=[tensorboard]",
        "trainer.resume_from_checkpoint=null",
        "seed=0",
    ]


def ours_program(settings: Settings, model: Path, data: Path, out: Path, cache: bool) -> list[str]:
    """``python -m diffusion_align.cli train`` (the ``diffalign train`` entry point) writing into ``out``."""
    return ["-m", "diffusion_align.cli", "train", *ours_overrides(settings, model, data, cache), f"hydra.run.dir={out}"]


def child_environment(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONUNBUFFERED"] = "1"
    if settings.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(settings.threads)
    if settings.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_side(name: str, program: list[str], settings: Settings, out: Path, capture: Path | None = None,
             placeholder_wandb: bool = False) -> SideResult:
    """Run ``program`` under the probe in a fresh process; wall time is from spawning it to its exit.

    Raises:
        RuntimeError: the process failed or made another number of optimizer steps than ``settings.steps``
            (the message carries the end of its log).
    """
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: nothing to resume, its latent cache built anew
    out.mkdir(parents=True)
    record, log = out / "probe_record.json", out / "process.log"
    command = [sys.executable, str(BENCH_DIR / "step_probe.py"), f"--record={record}"]
    if capture is not None:
        command.append(f"--capture={capture}")
    if placeholder_wandb:
        command.append("--placeholder-wandb")
    with open(log, "w") as log_file:
        started = time.time()
        process = subprocess.Popen([*command, "--", *program], stdout=log_file, stderr=subprocess.STDOUT,
                                   env=child_environment(settings))
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.time() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text()[-4000:]
    if process.returncode != 0 or not record.exists():
        raise RuntimeError(f"{name} exited with {process.returncode}; end of {log}:\n{tail}")
    probe = json.loads(record.read_text())
    if len(probe["step_end_unix_s"]) != settings.steps:
        raise RuntimeError(f"{name} made {len(probe['step_end_unix_s'])} optimizer steps, expected {settings.steps}; "
                           f"end of {log}:\n{tail}")
    return SideResult(name, wall, [t - started for t in probe["step_end_unix_s"]], probe["losses"],
                      usage.ru_maxrss * 1024, probe["cuda_peak_bytes"], probe["torch_threads"], probe["notes"])
