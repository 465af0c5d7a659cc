"""Non-finite values in training: NaN or inf in a loss or in the gradients.

With ``trainer.check_finite`` (default on; one host sync per micro-batch and per optimizer step) a non-finite loss in
any micro-batch, or a non-finite global gradient norm (NaN/inf in any gradient, even under a finite loss), makes the
loop drop the whole optimizer step: ``trainer.on_nonfinite=skip`` counts it (``LoopState.skipped_nonfinite``, the
model card) and warns; ``stop`` raises :class:`FloatingPointError`, leaving the last checkpoint as it was.
"""

from __future__ import annotations

import logging
import math

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from torch import nn

from diffusion_align.train.checkpoint import LoopState
from diffusion_align.train.sharding import engine_grad_norm, engine_scales_loss, steps_inside_backward
from diffusion_align.types import LossOutput

log = logging.getLogger(__name__)


def clip_and_check_gradients(trainer: DictConfig, accelerator: Accelerator, policy: nn.Module,
                             params: list[nn.Parameter]) -> str | None:
    """Clip the global gradient norm to ``trainer.max_grad_norm`` (0: no clipping); describe a non-finite norm.

    With ``trainer.check_finite`` the norm (before clipping) is tested: NaN or inf in any gradient makes it
    non-finite, even when the loss was finite (an overflow in backward). Under fp16 the gradient scaler owns
    overflows (it skips the step and lowers the scale, as it must), so no norm is tested there, nor under DeepSpeed's
    fp16, whose own loss scaler does the same. Under DeepSpeed
    the engine clips (to ``trainer.max_grad_norm``, set in its config) and steps inside backward; the norm it
    computed is tested afterwards (the loop then stops: the step cannot be dropped).

    Args:
        trainer: the ``trainer`` config (``max_grad_norm``, ``check_finite``).
        accelerator: the run's accelerator (clipping across processes; its fp16 gradient scaler, if any).
        policy: the (wrapped) network whose gradients are clipped.
        params: its trainable parameters.

    Returns:
        ``None`` for finite gradients (or no test), else e.g. ``"gradient norm nan"``.
    """
    test = trainer.check_finite and accelerator.scaler is None and not engine_scales_loss(accelerator)
    if steps_inside_backward(accelerator):  # DeepSpeed clipped (to trainer.max_grad_norm) and stepped in backward
        norm = engine_grad_norm(policy) if test else None
        if norm is None:
            return None
        return None if math.isfinite(float(norm)) else f"gradient norm {float(norm)}"
    if trainer.max_grad_norm:
        norm = accelerator.clip_grad_norm_(policy.parameters(), trainer.max_grad_norm)
    elif test:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    else:
        return None
    return f"gradient norm {float(norm)}" if test and not bool(torch.isfinite(norm)) else None


def handle_nonfinite(trainer: DictConfig, state: LoopState, out: LossOutput, fault: str) -> None:
    """A non-finite loss or gradient norm (``fault``): skip the step (counted) or stop (``trainer.on_nonfinite``)."""
    state.skipped_nonfinite += 1
    detail = {k: float(v) for k, v in out.metrics.items()}
    if trainer.on_nonfinite == "stop":
        raise FloatingPointError(
            f"non-finite {fault} at step {state.step + 1} (metrics {detail}); the last checkpoint is intact"
        )
    log.warning("non-finite %s at step %d: step skipped (%d so far); metrics %s", fault, state.step + 1,
                state.skipped_nonfinite, detail)
