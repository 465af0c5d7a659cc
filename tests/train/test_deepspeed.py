"""DeepSpeed ZeRO-2 through accelerate: 2 CPU processes (gloo, DeepSpeed's CPU accelerator) with partitioned
optimizer states and gradients end with the parameters of 1 process on the same global batch, and resume from their
own checkpoints (DeepSpeed's partitioned optimizer files inside ours).

accelerate sets DeepSpeed up only without ``cpu``, so the processes are started through ``engines_on_cpu.py``
(beside this file), which takes that step on gloo; everything else is the shipped
``conf/accelerate/deepspeed_zero2.yaml`` and the unchanged ``diffalign train``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from engine_runs import assert_lora_equals_one_process, copy_checkpoint, launch, unet_weights
from safetensors.torch import load_file
from same_weights import ATOL, assert_same_weights, largest_change

from diffusion_align.train.checkpoint import CheckpointError
from diffusion_align.train.loop import check_distributed_launch

pytest.importorskip("deepspeed")


def test_deepspeed_lora_two_processes_equal_one_process(run_train, tiny_pairs, tmp_path):
    """2 processes x 1 pair x 2 accumulated micro-batches against 1 process x 4 pairs; DeepSpeed clips."""
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.optimizer.lr=1e-4",
              "trainer.max_grad_norm=0.05"]
    assert_lora_equals_one_process(run_train, tmp_path, "deepspeed_zero2", common, ["data.loader.batch_size=4"],
                                   ["data.loader.batch_size=1", "trainer.gradient_accumulation_steps=2"])


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_deepspeed_bf16_saves_the_float32_master_weights(mode, tiny_pairs, tmp_path):
    """With bf16 DeepSpeed trains bf16 copies of the weights and keeps their float32 masters in its optimizer
    partitions: the saved LoRA / pipeline holds the gathered masters (float32 values no bf16 number equals), as a
    DDP or FSDP run saves its float32 weights."""
    overrides = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=2", "trainer.optimizer.lr=1e-3",
                 "data.loader.batch_size=1", "trainer.mixed_precision=bf16"]
    if mode == "full":
        overrides += ["model.finetune.mode=full", "reference=frozen_copy", "trainer.optimizer.lr=1e-4"]
    launch("deepspeed_zero2", tmp_path / "ds", *overrides)
    if mode == "lora":
        trained = [v for k, v in load_file(tmp_path / "ds" / "pytorch_lora_weights.safetensors").items()
                   if "lora_B" in k]
    else:
        trained = list(unet_weights(tmp_path / "ds").values())
    assert trained and all(v.dtype == torch.float32 for v in trained)
    assert any(bool((v != v.to(torch.bfloat16).float()).any()) for v in trained)


def test_deepspeed_full_finetune_checkpoints_and_resumes_like_one_process(run_train, tiny_pairs, tmp_path):
    """Full fine-tune with a frozen reference copy, an EMA of the weights and clipping: the pipeline equals one
    process's; a run resumed from its step-1 checkpoint ends the same; checkpoints do not cross engines."""
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.optimizer.lr=1e-4",
              "trainer.max_grad_norm=1.0", "trainer.lr_scheduler.warmup_steps=2",
              "model.finetune.mode=full", "reference=frozen_copy",
              "trainer.ema.enabled=true", "trainer.ema.decay=0.9", "trainer.checkpoint_every=1",
              "trainer.checkpoints_keep=3"]
    single = run_train(tmp_path / "single", *common, "data.loader.batch_size=4")
    expected = unet_weights(single)
    ds = tmp_path / "ds"
    launch("deepspeed_zero2", ds, *common, "data.loader.batch_size=2")
    assert_same_weights(expected, unet_weights(ds))
    at_step_1 = load_file(ds / "checkpoints" / "checkpoint-1" / "trainable.safetensors")
    assert largest_change(expected, at_step_1) > 10 * ATOL
    assert (ds / "checkpoints" / "checkpoint-1" / "deepspeed" / "state").is_dir()

    resumed = tmp_path / "resumed"
    copy_checkpoint(ds, 1, resumed)
    launch("deepspeed_zero2", resumed, *common, "data.loader.batch_size=2")
    assert_same_weights(expected, unet_weights(resumed))

    unsharded = tmp_path / "unsharded"
    copy_checkpoint(ds, 1, unsharded)
    with pytest.raises(CheckpointError, match="written by DeepSpeed.*resume it under DeepSpeed"):
        run_train(unsharded, *common, "data.loader.batch_size=4")

    plain = tmp_path / "plain"
    copy_checkpoint(single, 1, plain)
    done = launch("deepspeed_zero2", plain, *common, "data.loader.batch_size=2", check=False)
    assert done.returncode != 0 and "written without DeepSpeed" in done.stdout + done.stderr


@pytest.mark.parametrize("stage", [3])
def test_zero_3_is_refused_before_training(stage):
    plugin = SimpleNamespace(deepspeed_config={"zero_optimization": {"stage": stage}})
    accelerator = SimpleNamespace(num_processes=2, distributed_type=DistributedType.DEEPSPEED,
                                  state=SimpleNamespace(deepspeed_plugin=plugin))
    with pytest.raises(RuntimeError, match="ZeRO stage 3.*deepspeed_zero2.yaml.*fsdp.yaml"):
        check_distributed_launch(accelerator)


def test_a_non_finite_loss_stops_a_deepspeed_run(tiny_pairs, tmp_path):
    """β = inf makes the first loss NaN (inf · 0): elsewhere the step is skipped; DeepSpeed steps inside backward,
    so the run stops with the reason instead of skipping."""
    done = launch("deepspeed_zero2", tmp_path / "ds", f"data.dataset.paths={tiny_pairs}", "method.loss.beta=inf",
                  "data.loader.batch_size=2", check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "non-finite loss nan at step 1: under DeepSpeed the optimizer step is taken inside backward" in output


@pytest.mark.parametrize(("precision", "fault"), [("fp16", None), ("bf16", "gradient norm inf"), ("no", "gradient norm inf")])
def test_an_fp16_overflow_is_left_to_deepspeeds_loss_scaler(precision, fault):
    """Under fp16 DeepSpeed's loss scaler drops an overflowing step and lowers the scale (as GradScaler does under
    the other engines): its infinite gradient norm is no fault of ours; in bf16 or float32 it is one."""
    from omegaconf import OmegaConf

    from diffusion_align.train.nonfinite import clip_and_check_gradients

    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, mixed_precision=precision, scaler=None)
    engine = SimpleNamespace(get_global_grad_norm=lambda: float("inf"))
    trainer = OmegaConf.create({"check_finite": True, "max_grad_norm": 1.0})
    assert clip_and_check_gradients(trainer, accelerator, engine, []) == fault
