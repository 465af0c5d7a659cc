"""``diffalign train-lrm``: train LPO's Latent Reward Model (:mod:`reward_models.latent`) on pairwise data.

The recipe of ``Kwai-Kolors/LPO`` (``lrm/``): both images of a pair are encoded to latents, noised with **one shared
noise draw to one random timestep** ``t ~ U{0, ..., largest_timestep}`` (951 in LPO), scored by the LRM at ``t``, and
trained with PickScore's pairwise cross-entropy::

    p = softmax([s_0, s_1]);   loss = -[y·log p_0 + (1-y)·log p_1]        # y = P(candidate 0 preferred)

LPO trains the whole backbone and heads with AdamW at lr 1e-5 for 4,000 steps on Pick-a-Pic; its pseudo-label
filtering (aesthetic / CLIP / VQA gaps) is a property of the data and belongs to ``diffalign generate``'s ranking.
Data comes through the same ``conf/data`` configs and latent cache as ``diffalign train``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_align.config import build
from diffusion_align.io import write_text_atomic
from diffusion_align.train.step import randn_rows, row_generators, row_seeds, training_latents
from diffusion_align.types import LossOutput, PreferenceBatch, metric_dict
from reward_models.latent import LatentRewardModel, from_adapter

log = logging.getLogger(__name__)


def lrm_pair_loss(scores_0: Tensor, scores_1: Tensor, label: Tensor) -> LossOutput:
    """PickScore's pairwise cross-entropy over ``[B]`` scores of candidates 0 and 1.

    Worked example: ``s_0 = 2, s_1 = 0, y = 1``: ``p_0 = σ(2) = 0.880797``, loss ``-log 0.880797 = 0.126928``;
    ``y = 0.5`` (a tie) gives ``0.5·(0.126928 + 2.126928) = 1.126928``.

    Returns:
        ``LossOutput``; metrics ``lrm/accuracy`` (the higher score is the preferred one, ties excluded as 0.5) and
        ``lrm/margin`` (``s_0 - s_1``).
    """
    logits = torch.stack([scores_0, scores_1], dim=-1).float()
    logp = torch.log_softmax(logits, dim=-1)
    label = label.to(logits.device, torch.float32)
    losses = -(label * logp[:, 0] + (1.0 - label) * logp[:, 1])
    margin = scores_0.float() - scores_1.float()
    correct = torch.where(label == 0.5, torch.full_like(label, 0.5), ((margin > 0) == (label > 0.5)).float())
    return LossOutput(loss=losses.mean(), losses=losses,
                      metrics=metric_dict(**{"lrm/accuracy": correct, "lrm/margin": margin}))


@dataclass
class LrmSettings:
    """The recipe's knobs (``conf/train-lrm.yaml``: ``lrm``)."""

    max_steps: int = 4000
    learning_rate: float = 1e-5
    weight_decay: float = 1e-2
    largest_timestep: int = 951
    projection_dim: int = 768
    guidance: float = 7.5
    log_every: int = 50


def pair_scores(lrm: LatentRewardModel, adapter, batch: PreferenceBatch, generators, timesteps: Tensor) -> Tensor:
    """``[B, 2]`` LRM scores of a batch's two candidates, noised with one shared draw to the row's timestep."""
    device = lrm.device
    latents = training_latents(adapter, batch, generators, device)  # [B, 2, C, h, w]
    b, k = latents.shape[:2]
    noise = randn_rows(latents.shape[2:], generators, device).repeat_interleave(k, dim=0)
    flat_t = timesteps.to(device).repeat_interleave(k)
    noisy = adapter.add_noise(latents.flatten(0, 1), noise, flat_t)
    prompts = [p for p in batch.prompts for _ in range(k)]
    return lrm(noisy, flat_t, prompts).view(b, k)


def train_lrm(lrm: LatentRewardModel, adapter, batches: Iterable[PreferenceBatch], settings: LrmSettings,
              seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``lrm`` in place on pairwise ``batches`` (cycled until ``settings.max_steps``); returns the losses.

    Randomness (posterior sample, noise, timestep) is drawn per dataset row from ``(seed, step, row)``.
    """
    params = [p for p in lrm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    lrm.train()
    losses: list[float] = []
    bar = tqdm(total=settings.max_steps, disable=not progress, desc="train-lrm")
    step = 0
    while step < settings.max_steps:
        seen = False
        for batch in batches:
            seen = True
            if batch.num_candidates != 2:
                raise ValueError(f"train-lrm needs pairwise data (2 candidates per row), got {batch.num_candidates}")
            generators = row_generators(row_seeds(batch.index, step, seed), lrm.device)
            t = torch.cat([torch.randint(0, settings.largest_timestep + 1, (1,), generator=g, device=g.device)
                           for g in generators])
            scores = pair_scores(lrm, adapter, batch, generators, t)
            out = lrm_pair_loss(scores[:, 0], scores[:, 1], batch.label)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(out.loss.detach()))
            step += 1
            bar.update(1)
            if step % settings.log_every == 0 or step == settings.max_steps:
                accuracy = float(out.metrics["lrm/accuracy"])
                bar.set_postfix(loss=f"{losses[-1]:.4f}", acc=f"{accuracy:.2f}")
                log.info("train-lrm step %d: loss %.4f accuracy %.2f", step, losses[-1], accuracy)
            if step >= settings.max_steps:
                break
        if not seen:
            raise ValueError("train-lrm: the data yielded no batch")
    bar.close()
    return losses


@torch.no_grad()
def pair_accuracy(lrm: LatentRewardModel, adapter, batches: Iterable[PreferenceBatch], timesteps: Iterable[int],
                  seed: int = 1) -> dict[int, float]:
    """Fraction of pairs (ties excluded) where the preferred candidate scores higher, per timestep."""
    lrm.eval()
    out = {}
    batches = list(batches)
    for t in timesteps:
        correct = total = 0
        for batch in batches:
            generators = row_generators(row_seeds(batch.index, t, seed), lrm.device)
            scores = pair_scores(lrm, adapter, batch, generators, torch.full((len(batch.prompts),), int(t)))
            decided = batch.label != 0.5
            won = (scores[:, 0] > scores[:, 1]).cpu() == (batch.label > 0.5)
            correct += int((won & decided).sum())
            total += int(decided.sum())
        out[int(t)] = correct / max(total, 1)
    return out


def run(cfg: DictConfig) -> Path:
    """``diffalign train-lrm``: build the adapter and data as ``diffalign train`` does, train, save to
    ``output_dir/lrm`` (loadable with ``LatentRewardModel.from_pretrained``) with ``metrics.json``."""
    from diffusion_align.train.data import (
        make_loader,  # the training data path, cache and seeded order included
    )

    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    settings = LrmSettings(**cfg.lrm)
    adapter = build(cfg.model.adapter)
    device = torch.device(cfg.device)
    for module in adapter.frozen_modules.values():
        module.requires_grad_(False).to(device)
    adapter.denoiser.to(device)
    loader = make_loader(cfg, adapter)
    lrm = from_adapter(adapter, projection_dim=settings.projection_dim, guidance=settings.guidance).to(device)
    started = time.time()
    losses = train_lrm(lrm, adapter, loader, settings, seed=cfg.seed)
    lrm.save_pretrained(out_dir / "lrm")
    tail = losses[-settings.log_every:]
    metrics = {"steps": len(losses), "final_loss": sum(tail) / len(tail), "wall_time_s": round(time.time() - started, 3)}
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1, sort_keys=True))
    log.info("latent reward model saved to %s", out_dir / "lrm")
    return out_dir / "lrm"
