"""The science of one online step-level preference step (SPO, LPO): sample, score, pick pairs, step-DPO loss.

For each prompt of the batch (SPO's ``multi_sample_pipeline`` / LPO's ``train_lpo.py``):

1. start from noise and follow one trajectory of the stochastic sampler (:class:`~diffusion_align.sampling.StepKernel`,
   DDIM η > 0 or the flow SDE) with the current policy and classifier-free guidance;
2. from step ``divert_start_step`` on, draw ``K`` candidates ``x_{t-1}`` from the shared ``x_t``, score them with the
   **step-aware scorer** (LPO: the latent reward model on ``x_{t-1}`` at timestep ``t``; SPO-style: the ``x̂0`` the
   policy predicts from each candidate, decoded and scored by an image reward — ``x_{t-1}`` itself on the last
   step), take the best as winner and the worst as loser, and keep the pair only if
   ``softmax([s_best, s_worst])`` differs by more than the threshold (SPO: 0.3 fixed; LPO: from the step's noise
   level); the trajectory continues from a candidate chosen uniformly at random;
3. train with :func:`~diffusion_align.losses.step_dpo_loss` on ``log p(x_w | x_t)`` and ``log p(x_l | x_t)`` under the
   policy and the reference (guided, as SPO's ``train.cfg``), at most ``pairs_per_prompt`` kept pairs per prompt.

The authors sample a whole epoch of trajectories and then train on the collected pairs; here every optimizer step
samples its own batch of prompts with the current weights (fully on-policy), so the loop, its checkpoints and its
exact resume are those of ``diffalign train``. Randomness is drawn per dataset row from (seed, epoch, row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffusion_align.adapters.base import DiffusionAdapter
from diffusion_align.sampling import (
    StepKernel,
    StepPoint,
    decode_latents,
    gaussian_logprob,
    guided_predict,
    latent_shape,
)
from diffusion_align.train.step import conditioning, randn_rows, row_generators, row_seeds
from diffusion_align.types import LossOutput, PreferenceBatch, metric_dict


# -- thresholds ------------------------------------------------------------------------------------------------------
class StaticThreshold:
    """SPO's rule: one threshold on ``p_best - p_worst`` at every step (0.3 for SD1.5, 0.4 for SDXL)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, kernel: StepKernel, point: StepPoint) -> float:
        return self.value


class DynamicThreshold:
    """LPO's ``dynamic_threshold_sigma``: the step's std, mapped linearly from [min std, max std] over the sampler's
    steps to [``low``, ``high``] (SD1.5: [0.35, 0.5]; SDXL: [0.45, 0.6]): noisier steps need a clearer preference.

    LPO hard-codes the std of SD1.5's 20-step η = 1 DDIM schedule (0.0206 at t = 1 ... 0.6444 at t = 951); the
    table here is computed from the adapter's own schedule and sampler, which reproduces LPO's for SD1.5.
    """

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self._table: dict[int, float] | None = None

    def table(self, kernel: StepKernel) -> dict[int, float]:
        if self._table is None:
            stds = {p.index: kernel.step_std(p) for p in kernel.points}
            positive = [s for s in stds.values() if s > 0]
            lo, hi = min(positive), max(positive)
            span = (hi - lo) or 1.0
            self._table = {i: self.low + (s - lo) / span * (self.high - self.low) for i, s in stds.items()}
        return self._table

    def __call__(self, kernel: StepKernel, point: StepPoint) -> float:
        return self.table(kernel)[point.index]


# -- step-aware scorers ----------------------------------------------------------------------------------------------
@dataclass
class ScoringContext:
    """What a step-aware scorer may use: the adapter, the sampler, the policy's guided prediction, the step."""

    adapter: DiffusionAdapter
    kernel: StepKernel
    point: StepPoint
    predict: Callable[[Tensor, Tensor], Tensor]  # (latents, level [N]) -> guided policy prediction for the prompts


class DecodedX0Scorer:
    """SPO-style step-aware preference with any image reward: each candidate's ``x̂0`` as the policy predicts it at
    the candidate's own level, decoded by the VAE and scored (the final step's candidates are decoded directly).

    SPO trains a timestep-conditioned PickScore (its SPM) for this; with an ordinary reward model the ``x̂0`` of an
    early, noisy step is blurry and scored as an image. Rewards are on their own scale: PickScore-like
    ``logit_scale × cos`` suits SPO's softmax thresholds; ``scale`` multiplies other rewards (e.g. 20 for [0, 1]
    rewards such as the Shapes ``shapes`` reward).
    """

    def __init__(self, reward, scale: float = 1.0, batch_size: int = 64) -> None:
        self.reward, self.scale, self.batch_size = reward, scale, batch_size

    @torch.no_grad()
    def __call__(self, candidates: Tensor, prompts: Sequence[str], ctx: ScoringContext) -> Tensor:
        n = candidates.shape[0]
        level = ctx.kernel.levels(ctx.point, n, candidates.device)[1]
        if float(ctx.point.t_prev) == 0.0:
            x0 = candidates
        else:
            x0 = ctx.kernel.predicted_x0(ctx.predict(candidates, level), candidates, level)
        pixels = decode_latents(ctx.adapter, x0)
        scores = self.reward.score((pixels + 1.0) / 2.0, list(prompts), batch_size=self.batch_size)
        return scores.float().to(candidates.device) * self.scale


class LatentRewardScorer:
    """LPO: the latent reward model scores each candidate ``x_{t-1}`` on the latent itself, at timestep ``t``."""

    def __init__(self, model, batch_size: int = 64) -> None:
        self.model, self.batch_size = model, batch_size

    @torch.no_grad()
    def __call__(self, candidates: Tensor, prompts: Sequence[str], ctx: ScoringContext) -> Tensor:
        level = ctx.kernel.levels(ctx.point, candidates.shape[0], candidates.device)[0]
        if self.model.device != candidates.device:
            self.model.to(candidates.device)
        return self.model.score_latents(candidates, level, list(prompts), self.batch_size).to(candidates.device)


def load_latent_reward_scorer(directory: str, batch_size: int = 64) -> LatentRewardScorer:
    """A :class:`LatentRewardScorer` over an LRM saved by ``diffalign train-lrm`` (``conf/method/lpo.yaml``)."""
    from reward_models.latent import LatentRewardModel

    return LatentRewardScorer(LatentRewardModel.from_pretrained(directory), batch_size)


# -- the online step -------------------------------------------------------------------------------------------------
@dataclass
class OnlineInputs:
    """The method's pieces, built from ``conf/method/{spo,lpo}.yaml`` by the loop.

    Attributes:
        loss_fn: :func:`~diffusion_align.losses.step_dpo_loss` with the method's β and clip.
        kernel: the stochastic sampler (steps, η).
        scorer: the step-aware scorer ``(candidates, prompts, ctx) -> [N]``.
        threshold: ``(kernel, point) -> float`` on ``p_best - p_worst``.
        candidates: K candidates per step (SPO SD1.5: 4, SDXL: 2; LPO: 4).
        divert_start_step: steps followed as a single trajectory before branching (SPO: 4; LPO: 0).
        guidance: CFG scale of sampling and (with ``train_guidance``) of the trained log-probs (SPO: 5.0).
        train_guidance: log-probs of the guided step (SPO's ``train.cfg=True``) rather than the conditional one.
        pairs_per_prompt: kept pairs trained per prompt and step (a random subset; 0: all).
    """

    loss_fn: Callable[..., LossOutput]
    kernel: StepKernel
    scorer: Callable[[Tensor, Sequence[str], ScoringContext], Tensor]
    threshold: Callable[[StepKernel, StepPoint], float]
    candidates: int = 4
    divert_start_step: int = 0
    guidance: float = 5.0
    train_guidance: bool = True
    pairs_per_prompt: int = 0


@dataclass
class StepPairs:
    """Kept step-level pairs ``[P, ...]``: shared ``x_t``, its levels, winner and loser ``x_{t-1}``, source row."""

    x_t: Tensor
    t: Tensor
    t_prev: Tensor
    winner: Tensor
    loser: Tensor
    row: Tensor
    steps_scored: int = 0
    probability_gaps: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.row.numel())


def uncond_embeds(adapter: DiffusionAdapter, n: int, device: torch.device) -> dict[str, Tensor]:
    """The empty prompt's conditioning repeated ``n`` times (classifier-free guidance's unconditional branch)."""
    return {k: v.to(device).expand(n, *v.shape[1:]).contiguous() for k, v in adapter.encode_prompts([""]).items()}


@torch.no_grad()
def collect_step_pairs(
    adapter: DiffusionAdapter,
    online: OnlineInputs,
    prompts: Sequence[str],
    cond: dict[str, Tensor],
    uncond: dict[str, Tensor],
    generators: list[torch.Generator],
    policy: nn.Module | None = None,
) -> StepPairs:
    """Run one branching trajectory per prompt and return the pairs that pass the threshold (module docstring)."""
    device, kernel, k = adapter.device, online.kernel, online.candidates
    b = len(prompts)
    x = randn_rows(latent_shape(adapter), generators, device)
    kept: dict[str, list[Tensor]] = {name: [] for name in ("x_t", "t", "t_prev", "winner", "loser", "row")}
    steps_scored, gaps = 0, []

    def predict(latents: Tensor, level: Tensor, n_rep: int = 1) -> Tensor:
        c = {name: v.repeat(n_rep, *[1] * (v.ndim - 1)) for name, v in cond.items()}
        u = {name: v.repeat(n_rep, *[1] * (v.ndim - 1)) for name, v in uncond.items()}
        return guided_predict(adapter, latents, level, c, u, online.guidance,
                              predict=lambda z, t, c_: adapter.predict(z, t, c_, denoiser=policy))

    for point in kernel.points:
        t, t_prev = kernel.levels(point, b, device)
        mean, std = kernel.stats(predict(x, t), x, t, t_prev)
        branch = point.index >= online.divert_start_step and float(std.max()) > 0.0
        draws = kernel.sample(mean, std, generators, k=k if branch else 1)  # [B, k, ...]
        if branch:
            flat = draws.transpose(0, 1).flatten(0, 1)  # candidate-major [k·B, ...]: rows j·B + b
            ctx = ScoringContext(adapter, kernel, point,
                                 lambda z, level: predict(z, level, n_rep=z.shape[0] // b))
            scores = online.scorer(flat, [p for _ in range(k) for p in prompts], ctx).view(k, b)
            ordered, order = scores.sort(dim=0, descending=True)
            probs = torch.softmax(torch.stack([ordered[0], ordered[-1]]), dim=0)
            gap = probs[0] - probs[1]
            keep = gap > online.threshold(kernel, point)
            steps_scored += b
            gaps.extend(gap.tolist())
            rows = torch.nonzero(keep).flatten()
            if len(rows):
                kept["x_t"].append(x[rows])
                kept["t"].append(t[rows])
                kept["t_prev"].append(t_prev[rows])
                kept["winner"].append(draws[rows, order[0, rows]])
                kept["loser"].append(draws[rows, order[-1, rows]])
                kept["row"].append(rows)
            pick = torch.stack([torch.randint(0, k, (1,), generator=g, device=g.device) for g in generators])
            x = draws[torch.arange(b), pick.flatten().to(device)]
        else:
            x = draws[:, 0]
    if not kept["row"]:
        return StepPairs(*[torch.empty(0)] * 5, row=torch.empty(0, dtype=torch.long), steps_scored=steps_scored,
                         probability_gaps=gaps)
    return StepPairs(**{name: torch.cat(values) for name, values in kept.items()}, steps_scored=steps_scored,
                     probability_gaps=gaps)


def subsample_pairs(pairs: StepPairs, per_prompt: int, generator: torch.Generator) -> StepPairs:
    """At most ``per_prompt`` pairs per prompt, chosen at random (all when ``per_prompt`` is 0)."""
    if per_prompt <= 0 or len(pairs) == 0:
        return pairs
    chosen = []
    for row in pairs.row.unique().tolist():
        index = torch.nonzero(pairs.row == row).flatten()
        perm = torch.randperm(len(index), generator=generator)[:per_prompt]
        chosen.append(index[perm.to(index.device)])
    keep = torch.cat(chosen).sort().values
    return StepPairs(pairs.x_t[keep], pairs.t[keep], pairs.t_prev[keep], pairs.winner[keep], pairs.loser[keep],
                     pairs.row[keep], pairs.steps_scored, pairs.probability_gaps)


def step_logprobs(adapter: DiffusionAdapter, online: OnlineInputs, pairs: StepPairs, cond: dict[str, Tensor],
                  uncond: dict[str, Tensor], predict) -> tuple[Tensor, Tensor]:
    """``log p(winner | x_t)`` and ``log p(loser | x_t)`` ``[P]`` under ``predict`` (policy or reference)."""
    guidance = online.guidance if online.train_guidance else 1.0
    pred = guided_predict(adapter, pairs.x_t, pairs.t, cond, uncond, guidance, predict=predict)
    mean, std = online.kernel.stats(pred, pairs.x_t, pairs.t, pairs.t_prev)
    return gaussian_logprob(pairs.winner, mean, std), gaussian_logprob(pairs.loser, mean, std)


def placeholder_pair(adapter: DiffusionAdapter, online: OnlineInputs, device: torch.device) -> StepPairs:
    """One pair of zero latents on the first prompt at the first branching step (a step with noise, so its
    log-probabilities are finite): what a batch with no kept pair trains on, with weight zero."""
    kernel = online.kernel
    point = next((p for p in kernel.points if p.index >= online.divert_start_step and kernel.step_std(p) > 0.0),
                 kernel.points[-1])
    t, t_prev = kernel.levels(point, 1, device)
    zeros = torch.zeros((1, *latent_shape(adapter)), device=device)
    return StepPairs(zeros, t, t_prev, zeros, zeros, torch.zeros(1, dtype=torch.long, device=device))


def step_level_step(
    adapter: DiffusionAdapter,
    reference,
    online: OnlineInputs,
    batch: PreferenceBatch,
    *,
    epoch: int,
    seed: int,
    policy: nn.Module | None = None,
) -> LossOutput:
    """Sample and keep step-level pairs for the batch's prompts, then the step-DPO loss on them.

    Only the prompts of ``batch`` are used (any ``conf/data`` dataset serves as a prompt source). A batch whose
    steps all fall under the threshold gives a zero loss and zero gradients (``pairs/kept`` 0 in the metrics) through
    the same forwards as a kept pair (:func:`placeholder_pair`), so that several processes still run in step.
    """
    device = adapter.device
    generators = row_generators(row_seeds(batch.index, epoch, seed), device)
    prompts = list(batch.prompts)
    cond = conditioning(adapter, batch, 1, device)
    uncond = uncond_embeds(adapter, len(prompts), device)
    pairs = collect_step_pairs(adapter, online, prompts, cond, uncond, generators, policy)
    pairs = subsample_pairs(pairs, online.pairs_per_prompt, generators[0])
    gaps = torch.tensor(pairs.probability_gaps or [0.0])
    stats = {"pairs/kept": torch.tensor(float(len(pairs))),
             "pairs/kept_fraction": torch.tensor(len(pairs) / max(pairs.steps_scored, 1)),
             "pairs/probability_gap": gaps.mean()}
    placeholder = len(pairs) == 0
    if placeholder:
        # no pair kept: the same forwards (policy with gradients, then reference) on a placeholder pair, times zero.
        # With several processes every one must run the same sequence of forwards and a backward, whether or not its
        # prompts kept a pair: FSDP all-gathers the weights in each forward, DDP all-reduces the gradients in backward
        pairs = placeholder_pair(adapter, online, device)
    pair_cond = {name: v[pairs.row] for name, v in cond.items()}
    pair_uncond = {name: v[pairs.row] for name, v in uncond.items()}
    logp_w, logp_l = step_logprobs(adapter, online, pairs, pair_cond, pair_uncond,
                                   lambda z, t, c: adapter.predict(z, t, c, denoiser=policy))
    with torch.no_grad():
        ref_w, ref_l = step_logprobs(adapter, online, pairs, pair_cond, pair_uncond, reference.predict)
    out = online.loss_fn(logp_w, logp_l, ref_w, ref_l)
    if placeholder:
        zero = 0.0 * out.loss
        return LossOutput(loss=zero, losses=zero.reshape(1), metrics=metric_dict(**stats))
    out.metrics.update(stats)
    out.metrics["timesteps/mean"] = pairs.t.float().mean()
    return out
