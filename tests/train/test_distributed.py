"""DDP through accelerate: 2 CPU processes (gloo) × 2 pairs end with the parameters of 1 process × 4 pairs.

The processes are started by torchrun (the launcher accelerate itself uses for GPUs) with ``ACCELERATE_USE_CPU=true``,
which is what makes accelerate pick gloo on CPU (``accelerate launch --cpu`` sets it too, but starts one process).

Noise, timesteps and posterior samples are seeded per dataset row, and accelerate shards each global batch across the
processes, so the two runs see the same rows with the same randomness; DDP averages the gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def test_ddp_two_processes_equal_one_process_on_the_same_global_batch(run_train, tiny_pairs, tmp_path):
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.optimizer.lr=1e-4",
              "trainer.max_grad_norm=0", "debug=tiny"]
    single = run_train(tmp_path / "single", *common, "data.loader.batch_size=4")
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "diffusion_align.cli", "train", *common, "data.loader.batch_size=2", f"hydra.run.dir={ddp}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"})
    assert done.returncode == 0, done.stderr[-4000:]
    a = load_file(single / "pytorch_lora_weights.safetensors")
    b = load_file(ddp / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
