"""DDP through accelerate: 2 CPU processes (gloo) × 2 pairs end with the parameters of 1 process × 4 pairs.

The processes are started by ``accelerate launch --config_file conf/accelerate/multi_gpu.yaml --num_processes 2``
(the shipped multi-GPU config; accelerate starts them through torchrun) with ``ACCELERATE_USE_CPU=true``, which is
what makes accelerate use gloo on CPU (``accelerate launch --cpu`` sets it too, but starts one process).

Noise, timesteps and posterior samples are seeded per dataset row, and accelerate shards each global batch across the
processes, so the two runs see the same rows with the same randomness; DDP averages the gradients.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType
from engine_runs import assert_lora_equals_one_process, launch

from diffusion_align.train.loop import check_distributed_launch


def test_ddp_two_processes_equal_one_process_on_the_same_global_batch(run_train, tiny_pairs, tmp_path):
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.optimizer.lr=1e-4",
              "trainer.max_grad_norm=0"]
    assert_lora_equals_one_process(run_train, tmp_path, "multi_gpu", common, ["data.loader.batch_size=4"],
                                   ["data.loader.batch_size=2"])


def test_processes_that_did_not_form_a_group_are_refused(monkeypatch):
    """torchrun / accelerate on a machine without GPUs and without ACCELERATE_USE_CPU: independent copies."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2.*ACCELERATE_USE_CPU=true"):
        check_distributed_launch(alone)


def test_a_loss_non_finite_on_one_process_makes_every_process_skip_the_step(tiny_pairs, tmp_path):
    """Rank 1's first loss is NaN, rank 0's is finite: both skip that step together (had rank 0 gone on to
    backward alone, it would wait forever in the gradient all-reduce), and the run finishes."""
    done = launch("multi_gpu", tmp_path / "ddp", f"data.dataset.paths={tiny_pairs}", "data.loader.batch_size=2",
                  "trainer.max_steps=2", "method.loss._target_=diffusion_align.testing.faults.dpo_nan_on_process_1_first_call")
    assert "non-finite loss on another process (here 0.69" in done.stdout + done.stderr
    assert "Non-finite steps skipped: 1." in (tmp_path / "ddp" / "README.md").read_text()
