"""``diffalign`` with accelerate's FSDP engine on CPU processes (gloo), for the FSDP tests.

accelerate selects FSDP only in its multi-GPU branch: with ``ACCELERATE_USE_CPU=true`` it sets up gloo
(``MULTI_CPU``) and keeps the FSDP plugin aside. torch's FSDP2 (``fully_shard``) runs on CPU with gloo, so this
launcher takes the step accelerate takes on GPUs (distributed type FSDP, the plugin, its mixed precision) once the
process group is up, then runs the CLI unchanged. Start it with ``accelerate launch --config_file
conf/accelerate/fsdp.yaml --num_processes 2 tests/train/fsdp_on_cpu.py train ...`` and ``ACCELERATE_USE_CPU=true``.
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from diffusion_align.cli import main

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = self.distributed_type  # as accelerate's own init ends


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
