"""Losses that fail on purpose, for tests of fault handling across processes
(``method.loss._target_=diffusion_align.testing.faults.<name>``, inside the config allow-list)."""

from __future__ import annotations

import dataclasses
import os

from diffusion_align.losses import diffusion_dpo_loss
from diffusion_align.types import LossOutput

_calls = {"n": 0}


def dpo_nan_on_process_1_first_call(*args, **kwargs) -> LossOutput:
    """Diffusion-DPO's loss, NaN on the process of rank 1 the first time it is called, finite everywhere else."""
    out = diffusion_dpo_loss(*args, **kwargs)
    _calls["n"] += 1
    if os.environ.get("RANK") == "1" and _calls["n"] == 1:
        return dataclasses.replace(out, loss=out.loss * float("nan"))
    return out
