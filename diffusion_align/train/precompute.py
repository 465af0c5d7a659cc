"""Reference errors computed once, before training (``reference.precompute=true``).

A row's posterior sample, noise and timestep are a function of its index, the epoch and the seed alone
(:mod:`diffusion_align.train.step`), so a fixed reference's errors on it can be computed ahead of the step that
uses them. This pass walks exactly the micro-batches the run will train on (from the resume point to
``trainer.max_steps``: the same loader, epochs and accumulation), computes each batch's reference errors under the
run's precision, and keeps them by (epoch, row): ``[K]`` floats per row (``[K, S]`` for DenseDPO's segments), one
tensor per epoch with a row index (a million rows cost 8 MB of index per epoch beside the values).
Training steps then run no reference forward, and a frozen reference copy is released before the first step.

What it buys: each step's reference forward (about a quarter of a DPO step) moves into the pass, which costs the
same forwards, so with the latent cache a run's total compute is unchanged (without it the pass encodes every image
once more, and says so); a full fine-tune's peak memory loses the frozen copy. Only a
reference that never changes can be precomputed: the LoRA-disabled policy or a frozen copy, with forward noising
(SmPO's and InPO's inversions run the policy, which trains; an EMA reference moves; step-level methods sample
online). Checked before any model loads.
"""

from __future__ import annotations

import gc
import logging
import math
import time

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from diffusion_align.config import ConfigError
from diffusion_align.reference import (
    EpochErrors,
    FrozenReference,
    LoraDisabledReference,
    PrecomputedReference,
)
from diffusion_align.train.data import epoch_batches
from diffusion_align.train.sharding import autocast
from diffusion_align.train.step import noised_batch, reference_errors

log = logging.getLogger(__name__)

PRECOMPUTABLE = ("diffusion_align.reference.LoraDisabledReference", "diffusion_align.reference.FrozenReference")


def check_precompute(cfg: DictConfig) -> None:
    """Refuse ``reference.precompute=true`` where the reference errors are not fixed before training."""
    if not cfg.reference.get("precompute", False):
        return
    method, target = cfg.method, cfg.reference.build.get("_target_", "")
    why = None
    if not method.needs_reference:
        why = f"method {method.name} is reference-free: there is nothing to precompute"
    elif method.inputs == "step":
        why = f"method {method.name} samples its pairs online with the current policy"
    elif method.noising != "forward":
        why = (f"method.noising={method.noising} inverts each sample with the policy, which trains, so the inputs "
               "of later steps are not known before training")
    elif target.endswith(".NoReference"):
        why = "reference=none has no reference to precompute"
    elif target not in PRECOMPUTABLE:
        why = f"the reference {target} changes during training (only lora_disabled or frozen_copy stay fixed)"
    if why:
        raise ConfigError(f"reference.precompute=true: {why}; set reference.precompute=false")
    if not cfg.data.cache.enabled:
        log.warning("reference.precompute=true without the latent cache (data.cache.enabled=false): the pass decodes "
                    "and encodes every image and prompt once more than training alone would")


def micro_batches_per_epoch(batches: int, accumulation: int, steps_left: int) -> tuple[int, int]:
    """Of an epoch's remaining ``batches``, how many the run trains on and how many optimizer steps they make.

    accelerate steps every ``accumulation`` micro-batches and at the end of the loader (a shorter last step);
    checkpoints are taken at step boundaries, so an epoch (or its resumed remainder) starts a fresh accumulation.
    """
    steps = math.ceil(batches / accumulation)
    if steps_left >= steps:
        return batches, steps
    return steps_left * accumulation, steps_left


def precompute_reference(
    reference,
    adapter,
    method,
    loader,
    accelerator,
    *,
    seed: int,
    steps: int,
    accumulation: int,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    policy=None,
) -> PrecomputedReference:
    """Run the pass (module docstring) and return the reference that replaces ``reference``.

    Args:
        loader: the prepared training loader, walked as the loop walks it (:func:`~diffusion_align.train.data.epoch_batches`).
        steps: optimizer steps still to train; ``accumulation``: micro-batches per step.
        epoch, batch_in_epoch: where training starts (a resume point).
        policy: the wrapped denoiser (the noising of some methods runs it; forward noising does not).

    Every process covers its own batches.
    """
    if not isinstance(reference, (LoraDisabledReference, FrozenReference)):
        raise TypeError(f"cannot precompute the errors of {type(reference).__name__}")
    if len(loader) == 0:
        raise RuntimeError("the training data loader yields no batch: there is nothing to precompute or train on")
    started, tables, rows, total = time.time(), {}, 0, 0
    progress = tqdm(desc="reference errors", unit="batch", disable=not accelerator.is_local_main_process)
    while steps > 0:
        if batch_in_epoch >= len(loader):  # a checkpoint of an epoch's last step: training goes on with the next
            epoch, batch_in_epoch = epoch + 1, 0
            continue
        take, taken_steps = micro_batches_per_epoch(len(loader) - batch_in_epoch, accumulation, steps)
        index, values = [], []
        for n, batch in enumerate(epoch_batches(accelerator, loader, epoch, batch_in_epoch)):
            if n == take:
                break
            with torch.no_grad(), autocast(accelerator):
                inputs = noised_batch(adapter, method, batch, epoch=epoch, seed=seed, policy=policy)
                values.append(reference_errors(reference, inputs).float().cpu())
            index.append(batch.index.cpu())
            total += 1
            progress.update(1)
        tables[epoch] = EpochErrors.build(torch.cat(index), torch.cat(values), len(loader.dataset))
        rows += len(tables[epoch].values)
        steps -= taken_steps
        epoch, batch_in_epoch = epoch + 1, 0
    progress.close()
    source, released = type(reference).__name__, isinstance(reference, FrozenReference)
    if released:  # the copy is no longer needed: its memory goes back
        reference.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    seconds = time.time() - started
    log.info("reference errors precomputed for %d rows in %d micro-batches (%.1f s); the %s is no longer run%s",
             rows, total, seconds, source, " and its copy was released" if released else "")
    summary = {"reference/precomputed_rows": rows, "reference/precomputed_batches": total,
               "reference/precompute_s": round(seconds, 3), "reference/copy_released": released}
    return PrecomputedReference(tables, source, summary)
