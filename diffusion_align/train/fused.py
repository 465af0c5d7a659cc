"""``trainer.fused_backward``: each parameter's optimizer update taken inside backward, its gradient freed at once.

PyTorch's "optimizer step in backward" recipe (``Tensor.register_post_accumulate_grad_hook``; OneTrainer calls it the
"fused back pass"): as soon as backward has finished a parameter's gradient, a hook applies that parameter's update
and drops the gradient. A full fine-tune then never holds the whole gradient, one float32 copy of the trained
weights: with AdamW the steady memory is weights + two moments (3 copies) instead of weights + gradient + moments
(4), or 5 with the official script's frozen reference copy beside them. With ``reference.precompute=true``, which
releases that copy, the frozen-copy design's 5 copies become 3 (0.6x); with Adafactor, whose factored state is
small, about 1 of its 3.

The update is the run's own optimizer (``trainer.optimizer``) stepping a one-parameter view of that parameter's
group: hyperparameters, optimizer state, the LR schedule and the checkpoint format are those of an unfused run, so
the weights are the same (``tests/train/test_fused.py``) and a checkpoint written either way resumes the other way.

What backward cannot give the update is refused before any model loads (:func:`check_fused_backward`):

- accumulation over micro-batches (``trainer.gradient_accumulation_steps`` > 1): a gradient is gone before the next
  micro-batch would add to it;
- a global gradient-norm clip (``trainer.max_grad_norm`` > 0): the norm is known only once every gradient is, by
  when the updates are taken (Adafactor's own ``clip_threshold``, per parameter, still applies);
- fp16 mixed precision: its gradient scaler unscales and tests the whole gradient before stepping (bf16 has none);
- several processes (DDP, FSDP, DeepSpeed): the hooks fire before the gradients are reduced across processes; and
  DeepSpeed or FSDP in one process, whose engines take the step themselves.

A non-finite loss still skips the step (backward is not run). A non-finite gradient is found once backward is over,
when the updates have been taken, so the run stops whatever ``trainer.on_nonfinite`` says (the last checkpoint is
intact), as under DeepSpeed, which also steps inside backward.
"""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from omegaconf import DictConfig
from torch import nn

from diffusion_align.config import ConfigError
from diffusion_align.train.sharding import inner_optimizer


def check_fused_backward(trainer: DictConfig) -> None:
    """Refuse, naming the key to change, a ``trainer`` config whose update cannot be taken inside backward."""
    if not trainer.fused_backward:
        return
    if trainer.gradient_accumulation_steps != 1:
        raise ConfigError(f"trainer.fused_backward=true frees each gradient as soon as it is applied, so it cannot "
                          f"accumulate {trainer.gradient_accumulation_steps} micro-batches: set "
                          "trainer.gradient_accumulation_steps=1 (a larger data.loader.batch_size fits in the memory "
                          "it saves) or trainer.fused_backward=false")
    if trainer.max_grad_norm:
        raise ConfigError(f"trainer.fused_backward=true updates each parameter before the global gradient norm is "
                          f"known, so it cannot clip it to trainer.max_grad_norm={trainer.max_grad_norm}: set "
                          "trainer.max_grad_norm=0 (Adafactor still clips each update: clip_threshold) or "
                          "trainer.fused_backward=false")
    if trainer.mixed_precision == "fp16":
        raise ConfigError("trainer.fused_backward=true cannot run fp16's gradient scaler (it unscales and tests the "
                          "whole gradient before the step): use trainer.mixed_precision=bf16 or no")


def check_fused_processes(trainer: DictConfig, accelerator: Accelerator) -> None:
    """Refuse fused updates under a distributed engine: with several processes each would apply its own gradient
    before the all-reduce, and DeepSpeed or FSDP own the optimizer step even in one process."""
    if not trainer.fused_backward:
        return
    if accelerator.num_processes > 1:
        raise ConfigError(f"trainer.fused_backward=true applies each gradient in backward, before "
                          f"{accelerator.distributed_type.value} reduces it across the {accelerator.num_processes} "
                          "processes: run one process, or set trainer.fused_backward=false")
    if accelerator.distributed_type != DistributedType.NO:
        raise ConfigError(f"trainer.fused_backward=true takes the optimizer step itself, which "
                          f"{accelerator.distributed_type.value} owns: launch without it (one process), or set "
                          "trainer.fused_backward=false")


class BackwardSteps:
    """Hooks that update each of ``params`` inside backward, as soon as its gradient is accumulated, then free it.

    Args:
        optimizer: the run's optimizer (accelerate's wrapper or the torch optimizer inside it) over ``params``.
        params: the trainable parameters; each must be in one of the optimizer's parameter groups.
        check_finite: also sum the squared gradients (on the device, no host sync) for :meth:`fault`.
    """

    def __init__(self, optimizer, params: list[nn.Parameter], check_finite: bool = True):
        self.optimizer = inner_optimizer(optimizer)
        group_of = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
        missing = [i for i, p in enumerate(params) if id(p) not in group_of]
        if missing:
            raise ValueError(f"trainable parameters {missing[:5]} are in none of the optimizer's parameter groups")
        self._group_of = group_of
        self.check_finite = check_finite
        self._squares: torch.Tensor | None = None
        self._handles = [p.register_post_accumulate_grad_hook(self._update) for p in params]

    def _update(self, param: nn.Parameter) -> None:
        if self.check_finite:
            square = torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float32).square()
            self._squares = square if self._squares is None else self._squares + square
        groups = self.optimizer.param_groups
        # the group's hyperparameters as the LR schedule left them, over this parameter alone (the optimizer keeps
        # its state per parameter, so stepping one is the unfused step's share for it)
        self.optimizer.param_groups = [{**self._group_of[id(param)], "params": [param]}]
        try:
            self.optimizer.step()
        finally:
            self.optimizer.param_groups = groups
        param.grad = None

    def fault(self) -> str | None:
        """After backward: ``None`` when every gradient applied was finite (or not tested), else a description
        (``"gradient norm nan"``: the norm of every gradient applied since the last call, which resets it)."""
        squares, self._squares = self._squares, None
        if squares is None:
            return None
        norm = math.sqrt(float(squares))  # one host sync per step, as the unfused loop's norm test
        return None if math.isfinite(norm) else f"gradient norm {norm}"

    def remove(self) -> None:
        """Detach the hooks (the parameters then train as usual)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
