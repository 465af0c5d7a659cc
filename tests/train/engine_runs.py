"""Start ``diffalign train`` as 2 CPU processes (gloo) under one of the shipped accelerate configs.

FSDP and DeepSpeed go through ``engines_on_cpu.py`` (beside this file), which takes the step accelerate takes only
with GPUs; everything else is ``accelerate launch`` with the shipped ``conf/accelerate/<name>.yaml``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from ports import free_port
from safetensors.torch import load_file
from same_weights import ATOL, assert_same_weights, lora_b_change

LAUNCHER = Path(__file__).with_name("engines_on_cpu.py")


ENGINES_NEEDING_THE_LAUNCHER = ("fsdp", "deepspeed_zero2")


def launch(config: str, out_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file conf/accelerate/<config>.yaml --num_processes 2 ... train debug=tiny``:
    FSDP and DeepSpeed through ``engines_on_cpu.py``, any other config (DDP) as users run it, ``-m
    diffusion_align.cli``."""
    config_file = files("diffusion_align.conf") / "accelerate" / f"{config}.yaml"
    program = [str(LAUNCHER)] if config in ENGINES_NEEDING_THE_LAUNCHER else ["-m", "diffusion_align.cli"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), "--num_processes",
           "2", "--main_process_port", str(free_port()), *program, "train", "debug=tiny", *overrides,
           f"hydra.run.dir={out_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert done.returncode == 0, done.stderr[-4000:]
    return done


def unet_weights(run: Path) -> dict[str, torch.Tensor]:
    """The fully fine-tuned UNet a run saved (``pipeline/unet``)."""
    return UNet2DConditionModel.from_pretrained(run / "pipeline" / "unet").state_dict()


def copy_checkpoint(run: Path, step: int, into: Path) -> None:
    shutil.copytree(run / "checkpoints" / f"checkpoint-{step}", into / "checkpoints" / f"checkpoint-{step}")


def assert_lora_equals_one_process(run_train, tmp_path: Path, config: str, common: list[str], single: list[str],
                                   launched: list[str]) -> None:
    """``common + single`` in this process against ``common + launched`` in 2 processes under ``config``: the same
    LoRA weights (within :data:`same_weights.ATOL`), and training moved them well past that tolerance."""
    one = run_train(tmp_path / "single", *common, *single)
    launch(config, tmp_path / config, *common, *launched)
    expected = load_file(one / "pytorch_lora_weights.safetensors")
    assert_same_weights(expected, load_file(tmp_path / config / "pytorch_lora_weights.safetensors"))
    assert lora_b_change(expected) > 20 * ATOL
