"""``diffalign`` under accelerate's FSDP or DeepSpeed engine on CPU processes (gloo), for the engine tests.

accelerate selects FSDP only in its multi-GPU branch and DeepSpeed only without ``cpu``: with
``ACCELERATE_USE_CPU=true`` it sets up gloo (``MULTI_CPU``) and keeps the engine's plugin aside. torch's FSDP2
(``fully_shard``) and DeepSpeed's CPU accelerator both run on gloo, so this launcher takes the step accelerate takes
on GPUs (distributed type, the plugin, its mixed precision; the same lines as ``AcceleratorState.__init__``) once the
process group is up, then runs the CLI unchanged. Start it with ``accelerate launch --config_file
conf/accelerate/<fsdp|deepspeed_zero2>.yaml --num_processes 2 tests/train/engines_on_cpu.py train ...`` and
``ACCELERATE_USE_CPU=true``.
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from diffusion_align.cli import main

_init = AcceleratorState.__init__


def _init_with_engines_on_cpu(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
    elif deepspeed_plugin is not None:
        self.distributed_type = DistributedType.DEEPSPEED
        deepspeed_plugin.set_mixed_precision(self._mixed_precision)
        deepspeed_plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = deepspeed_plugin
    else:
        return
    PartialState._shared_state["distributed_type"] = self.distributed_type  # as accelerate's own init ends


AcceleratorState.__init__ = _init_with_engines_on_cpu

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
