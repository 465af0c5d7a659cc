"""FSDP2 through accelerate: 2 CPU processes (gloo) with sharded weights, gradients and optimizer states end with
the parameters of 1 unsharded process on the same global batch, and their checkpoints resume under either engine.

accelerate enables FSDP only in its multi-GPU branch, so the processes are started through ``engines_on_cpu.py``
(beside this file), which takes that step on gloo; everything else is the shipped ``conf/accelerate/fsdp.yaml`` and
the unchanged ``diffalign train``. As in the DDP test, noise and timesteps are seeded per dataset row, so the runs
see the same randomness.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from engine_runs import assert_lora_equals_one_process, copy_checkpoint, launch, unet_weights
from safetensors.torch import load_file
from same_weights import ATOL, assert_same_weights, largest_change

from diffusion_align.config import ConfigError
from diffusion_align.train.loop import check_distributed_launch
from diffusion_align.train.sharding import check_optimizer, index_keyed, name_keyed


def launch_fsdp(out_dir: Path, *overrides: str) -> Path:
    launch("fsdp", out_dir, *overrides)
    return out_dir


def test_fsdp_lora_two_processes_equal_one_process(run_train, tiny_pairs, tmp_path):
    """2 processes x 1 pair x 2 accumulated micro-batches against 1 process x 4 pairs."""
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.optimizer.lr=1e-4",
              "trainer.max_grad_norm=0"]
    assert_lora_equals_one_process(run_train, tmp_path, "fsdp", common, ["data.loader.batch_size=4"],
                                   ["data.loader.batch_size=1", "trainer.gradient_accumulation_steps=2"])


def test_fsdp_lora_on_a_transformer_family_equals_one_process(run_train, tiny_pairs, tmp_path):
    """SD3's MMDiT (flow matching): each JointTransformerBlock is an FSDP unit."""
    common = ["model=tiny_sd3", f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=2", "trainer.optimizer.lr=1e-4",
              "trainer.max_grad_norm=0"]
    assert_lora_equals_one_process(run_train, tmp_path, "fsdp", common, ["data.loader.batch_size=4"],
                                   ["data.loader.batch_size=2"])


def test_fsdp_step_level_spo_equals_one_process(run_train, tiny_pairs, tmp_path):
    """SPO's online loop under FSDP: each process samples its prompts' branching trajectories (every forward an
    all-gather of the sharded weights) from the rows' own seeds. With threshold 0 every prompt keeps one pair per
    branching step, so 2 processes x 1 prompt weigh the pairs as 1 process x 2 prompts does. Adam's eps is raised:
    at 1e-8 its first step is about lr x sign(gradient), and one LoRA weight whose gradient is ~1e-8 on both sides
    moved by 8e-5 more on one (float noise of the reductions, magnified); at 1e-4 the largest difference is 4e-7."""
    common = ["method=spo", "trainer.optimizer.eps=1e-4", "reward@method.online.scorer.reward=shapes_proxy", "method.online.threshold.value=0.0",
              "method.online.num_steps=4", "method.online.divert_start_step=1", "method.online.candidates=2",
              f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=2", "trainer.optimizer.lr=1e-3",
              "trainer.max_grad_norm=0"]
    assert_lora_equals_one_process(run_train, tmp_path, "fsdp", common, ["data.loader.batch_size=2"],
                                   ["data.loader.batch_size=1"])


def test_fsdp_full_finetune_trains_checkpoints_and_resumes_like_one_process(run_train, tiny_pairs, tmp_path):
    """Full fine-tune with a moving (EMA) reference copy, an EMA of the weights, clipping and validation samples:
    the sharded run's pipeline equals the unsharded one's; its checkpoints (gathered whole) resume one process and a
    sharded run, and a sharded run resumes one process's checkpoint."""
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.optimizer.lr=1e-4",
              "trainer.max_grad_norm=1.0", "trainer.lr_scheduler.warmup_steps=2",
              "model.finetune.mode=full", "reference=ema", "trainer.ema.enabled=true",
              "trainer.ema.decay=0.9", "trainer.checkpoint_every=1", "trainer.checkpoints_keep=3"]
    single = run_train(tmp_path / "single", *common, "data.loader.batch_size=4")
    expected = unet_weights(single)
    sharded = launch_fsdp(tmp_path / "fsdp", *common, "data.loader.batch_size=2", "trainer.validation.every=2",
                          "trainer.validation.prompts=['a red circle']", "trainer.validation.num_inference_steps=2")
    assert_same_weights(expected, unet_weights(sharded))
    assert (sharded / "validation" / "step-000002.png").is_file()
    at_step_1 = load_file(sharded / "checkpoints" / "checkpoint-1" / "trainable.safetensors")
    assert largest_change(expected, at_step_1) > 10 * ATOL  # steps 2 and 3 moved the weights past the tolerance
    assert_same_weights(load_file(single / "checkpoints" / "checkpoint-2" / "trainable.safetensors"),
                load_file(sharded / "checkpoints" / "checkpoint-2" / "trainable.safetensors"))

    unsharded_resume = tmp_path / "resumed-single"
    copy_checkpoint(sharded, 2, unsharded_resume)
    assert_same_weights(expected, unet_weights(run_train(unsharded_resume, *common, "data.loader.batch_size=4")))

    sharded_resume = tmp_path / "resumed-fsdp"
    copy_checkpoint(sharded, 1, sharded_resume)
    assert_same_weights(expected, unet_weights(launch_fsdp(sharded_resume, *common, "data.loader.batch_size=2")))

    from_unsharded = tmp_path / "fsdp-from-one-process"
    copy_checkpoint(single, 2, from_unsharded)
    assert_same_weights(expected, unet_weights(launch_fsdp(from_unsharded, *common, "data.loader.batch_size=2")))


def test_optimizer_state_layouts_convert_both_ways():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    names = ["0.weight", "1.weight", "1.bias"]
    indexed = optimizer.state_dict()
    by_name = name_keyed(indexed, names)
    assert sorted(by_name["state"]) == sorted(names)
    assert by_name["param_groups"][0]["params"] == names
    back = index_keyed(by_name, names)
    assert back["param_groups"] == indexed["param_groups"]
    assert back["state"].keys() == indexed["state"].keys()
    with pytest.raises(ValueError, match="do not train.*0.bias"):
        index_keyed({"state": {}, "param_groups": [{"params": ["0.bias"]}]}, names)
    with pytest.raises(ValueError, match="does not fit the 3 trainable parameters"):
        name_keyed({"state": {7: {}}, "param_groups": [{"params": [7]}]}, names)


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_optimizers_outside_torch_optim_are_refused_under_sharding_engines(kind):
    for target in ("transformers.optimization.Adafactor", "torch.optim.Adafactor", "bitsandbytes.optim.AdamW8bit"):
        with pytest.raises(ConfigError, match=f"{target} is not supported under {kind.value}.*adamw"):
            check_optimizer(SimpleNamespace(distributed_type=kind), target)
    check_optimizer(SimpleNamespace(distributed_type=kind), "torch.optim.AdamW")
    check_optimizer(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), "transformers.optimization.Adafactor")


def test_megatron_is_refused_before_training():
    with pytest.raises(RuntimeError, match="MEGATRON_LM.*conf/accelerate/fsdp.yaml"):
        check_distributed_launch(SimpleNamespace(num_processes=2, distributed_type=DistributedType.MEGATRON_LM))


def test_fsdp_version_1_is_refused_before_training():
    state = SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1))
    with pytest.raises(RuntimeError, match="FSDP version 1.*fsdp_version: 2"):
        check_distributed_launch(SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP, state=state))
