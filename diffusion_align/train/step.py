"""The science of one offline preference step: adapter → policy and reference errors → loss.

For each prompt the K candidates (K = 2 for a pair, winner first) share one noise draw and one timestep, as in every
official offline script (Diffusion-DPO, MaPO, SmPO, InPO); a method with ``shared_noise: false`` (RankDPO's
Algorithm 2: one t, one ε_i per image) draws each candidate's noise on its own. Randomness is drawn per *row* from a generator seeded by
(run seed, epoch, dataset row): a row sees the same posterior sample, noise and timestep whatever the batch size, the
gradient accumulation, the number of processes, or an interruption and resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from diffusion_align.adapters.base import DiffusionAdapter
from diffusion_align.losses import per_sample_error
from diffusion_align.noising import InvertedLatents, x0_and_eps
from diffusion_align.types import LossOutput, PreferenceBatch

TimestepSampler = Callable[..., Tensor]


@dataclass
class StepInputs:
    """The method's pieces, built from config by the loop.

    Attributes:
        loss_fn: the method's loss (a ``functools.partial`` from ``conf/method/<name>.yaml``).
        inputs: how the loss consumes errors: ``pairwise`` | ``ranked`` | ``unpaired`` | ``segments``.
        sample_timesteps: ``(n, generator=, device=) -> [n]`` timesteps: ints for discrete schedules, σ for flow.
        weight_fn: optional per-timestep loss weight ``[B] -> [B]`` (timestep-aware training).
        label_fn: optional ``(scores_0, scores_1) -> [B]`` pairwise label from candidate scores (SmPO).
        timesteps_arg: keyword under which the loss receives the per-row timesteps ``[B]`` (Flow-DPO's β(1-σ)²
            schedule takes them as ``sigmas``); ``None`` for losses that do not look at timesteps.
        noising: ``None`` for forward noising, else an inversion ``(eps_fn, x0, t, alphas_cumprod, generator=)`` ->
            :class:`~diffusion_align.noising.InvertedLatents` (SmPO's ReNoise, InPO's DDIM; ``method.noising``).
        shared_noise: forward noising with one noise draw for the K candidates of a row (``True``) or one per
            candidate (``method.shared_noise: false``); the timestep is shared either way.
    """

    loss_fn: Callable[..., LossOutput]
    sample_timesteps: TimestepSampler
    inputs: str = "pairwise"
    weight_fn: Callable[[Tensor], Tensor] | None = None
    label_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    timesteps_arg: str | None = None
    noising: Callable[..., InvertedLatents] | None = None
    shared_noise: bool = True


def row_seeds(indices: Tensor, epoch: int, seed: int) -> list[int]:
    """One 63-bit seed per dataset row, stable across runs, batch sizes and processes."""
    out = []
    for index in indices.tolist():
        digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") >> 1)
    return out


def row_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(s) for s in seeds]


def randn_rows(shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device) -> Tensor:
    """``[B, *shape]`` standard normal, row b drawn from ``generators[b]``."""
    return torch.cat([randn_tensor((1, *shape), generator=g, device=device, dtype=torch.float32) for g in generators])


def training_latents(
    adapter: DiffusionAdapter, batch: PreferenceBatch, generators: list[torch.Generator], device: torch.device
) -> Tensor:
    """``[B, K, ...]`` latents on ``device``: one posterior sample per candidate, from the cache or the VAE."""
    if batch.latent_mean is not None:
        mean, std = batch.latent_mean, batch.latent_std
    else:
        pixels = batch.pixel_values
        mean, std = adapter.vae_posterior(pixels.flatten(0, 1))
        mean, std = mean.unflatten(0, pixels.shape[:2]), std.unflatten(0, pixels.shape[:2])
    mean, std = mean.to(device, torch.float32), std.to(device, torch.float32)
    eps = randn_rows(mean.shape[1:], generators, device)
    return adapter.scale_latents(mean + std * eps)


def conditioning(adapter: DiffusionAdapter, batch: PreferenceBatch, k: int, device: torch.device) -> dict[str, Tensor]:
    """Text conditioning for the ``B·K`` flattened samples (each prompt repeated for its K candidates)."""
    cond = batch.prompt_embeds if batch.prompt_embeds is not None else adapter.encode_prompts(batch.prompts)
    return {name: v.to(device).repeat_interleave(k, dim=0) for name, v in cond.items()}


@dataclass
class NoisedBatch:
    """One batch's model inputs, drawn from each row's generator: ``[B·K, ...]`` noisy latents and targets, the
    per-row timesteps ``t`` ``[B]`` (``flat_t``: one per sample), the flattened conditioning, and the layout."""

    noisy: Tensor
    target: Tensor
    t: Tensor
    flat_t: Tensor
    cond: dict[str, Tensor]
    b: int
    k: int
    segments: int | None

    def errors(self, pred: Tensor) -> Tensor:
        """``[B, K(, S)]`` errors of predictions ``pred`` ``[B·K, ...]`` against these inputs' targets."""
        return per_sample_error(pred, self.target, segments=self.segments).unflatten(0, (self.b, self.k))


def noised_batch(
    adapter: DiffusionAdapter,
    method: StepInputs,
    batch: PreferenceBatch,
    *,
    epoch: int,
    seed: int,
    policy: nn.Module | None = None,
) -> NoisedBatch:
    """Latents, noise, timesteps and noising of one batch: a function of each row's index, ``epoch`` and ``seed``
    (and, for inversion noising, of the policy that inverts)."""
    device = adapter.device  # once: a diffusers model walks its modules to answer (~7 ms for SD1.5's UNet)
    generators = row_generators(row_seeds(batch.index, epoch, seed), device)
    latents = training_latents(adapter, batch, generators, device)  # [B, K, ...]
    b, k = latents.shape[:2]
    if method.shared_noise:  # one draw for the K candidates of a row
        flat_noise = randn_rows(latents.shape[2:], generators, device).repeat_interleave(k, dim=0)
    else:  # one draw per candidate, from the row's generator
        flat_noise = randn_rows(latents.shape[1:], generators, device).flatten(0, 1)
    t = torch.cat([method.sample_timesteps(1, generator=g, device=device) for g in generators])
    flat_t = t.repeat_interleave(k)
    flat_latents = latents.flatten(0, 1)
    cond = conditioning(adapter, batch, k, device)
    if method.noising is None:
        noisy = adapter.add_noise(flat_latents, flat_noise, flat_t)
        target = adapter.target(flat_latents, flat_noise, flat_t)
    else:
        noisy, target = inverted_inputs(adapter, method, latents, t, cond, generators, policy)
    # segment losses (DenseDPO): the latent frames split into as many segments as the data labels
    segments = batch.segment_label.shape[1] if method.inputs == "segments" else None
    return NoisedBatch(noisy, target, t, flat_t, cond, b, k, segments)


def reference_errors(reference, inputs: NoisedBatch) -> Tensor | None:
    """``[B, K(, S)]`` errors of the reference's predictions on ``inputs`` (``None`` without a reference)."""
    ref_pred = reference.predict(inputs.noisy, inputs.flat_t, inputs.cond)
    return None if ref_pred is None else inputs.errors(ref_pred)


def preference_step(
    adapter: DiffusionAdapter,
    reference,
    method: StepInputs,
    batch: PreferenceBatch,
    *,
    epoch: int,
    seed: int,
    policy: nn.Module | None = None,
) -> LossOutput:
    """Compute the method's loss on one batch.

    Args:
        adapter: the model family adapter.
        reference: a reference from :mod:`diffusion_align.reference` (``NoReference`` for reference-free methods;
            a ``PrecomputedReference`` hands over the errors it computed before training for these rows and epoch).
        method: loss and samplers (see :class:`StepInputs`).
        batch: ``B`` prompts × ``K`` candidates.
        epoch, seed: with ``batch.index``, seed every random draw of each row.
        policy: the module to run as the policy (the accelerate-wrapped denoiser); defaults to ``adapter.denoiser``.
    """
    inputs = noised_batch(adapter, method, batch, epoch=epoch, seed=seed, policy=policy)
    pred = adapter.predict(inputs.noisy, inputs.flat_t, inputs.cond, denoiser=policy)
    err = inputs.errors(pred)
    lookup = getattr(reference, "lookup", None)
    ref_err = lookup(batch.index, epoch, err.device) if lookup else reference_errors(reference, inputs)
    weights = None if method.weight_fn is None else method.weight_fn(inputs.t)
    extra = {} if method.timesteps_arg is None else {method.timesteps_arg: inputs.t}
    out = call_loss(method, err, ref_err, batch, weights, extra)
    out.metrics["timesteps/mean"] = inputs.t.detach().float().mean()
    return out


def inverted_inputs(
    adapter: DiffusionAdapter,
    method: StepInputs,
    latents: Tensor,
    t: Tensor,
    cond: dict[str, Tensor],
    generators: list[torch.Generator],
    policy: nn.Module | None,
) -> tuple[Tensor, Tensor]:
    """Flattened ``[B·K, ...]`` noisy latents and targets from inverting each row's K candidates at its timestep.

    The inversion runs on ε (a v-prediction model's output is converted); the target it returns is the noise the
    model should see at ``t``, turned into the model's own target (``adapter.target``: ε itself, or v).

    The policy inverts (adapters on, no gradient, the row's own prompt, no guidance), as SmPO's and InPO's code do;
    a row is inverted on its own, with its own timestep and generator, so the row-seeding contract holds (the
    authors share one timestep per step with one pair per GPU, which this equals).
    """
    b, k = latents.shape[:2]
    alphas = adapter.noise_scheduler.alphas_cumprod
    noisy, target = [], []
    for row in range(b):
        rows = slice(row * k, (row + 1) * k)
        row_cond = {name: value[rows] for name, value in cond.items()}

        def eps_fn(z: Tensor, timesteps: Tensor, row_cond=row_cond) -> Tensor:
            pred = adapter.predict(z, timesteps, row_cond, denoiser=policy)
            # the model sees the authors' t = -199 too; z's noise level there is ā[0], as the inversion takes it
            return x0_and_eps(adapter, pred, z, timesteps.clamp(min=0))[1]

        inverted = method.noising(eps_fn, latents[row], int(t[row]), alphas, generator=generators[row])
        noisy.append(inverted.noisy)
        # the inversion's noise target as the model's own target (itself for ε; v = sqrt(ā)·ε - sqrt(1-ā)·x0)
        row_t = t[row].expand(k)
        target.append(adapter.target(latents[row], inverted.target, row_t).to(inverted.target.dtype))
    return torch.cat(noisy), torch.cat(target)


def call_loss(
    method: StepInputs, err: Tensor, ref_err: Tensor | None, batch: PreferenceBatch, weights, extra: dict
) -> LossOutput:
    """Hand the ``[B, K(, S)]`` errors to the loss in the layout its ``inputs`` kind declares."""
    if method.inputs == "unpaired":
        k = err.shape[1]
        w = None if weights is None else weights.repeat_interleave(k)
        ref_flat = None if ref_err is None else ref_err.flatten()
        return method.loss_fn(err.flatten(), ref_flat, _on(batch.desirable, err).flatten(), weights=w, **extra)
    if method.inputs == "ranked":
        return method.loss_fn(err, ref_err, _on(batch.scores, err), weights=weights, **extra)
    ref = (None, None) if ref_err is None else (ref_err[:, 0], ref_err[:, 1])
    if method.inputs == "pairwise":
        label = batch.label
        if method.label_fn is not None:
            label = method.label_fn(batch.scores[:, 0], batch.scores[:, 1])
        return method.loss_fn(err[:, 0], err[:, 1], ref[0], ref[1], label=_on(label, err), weights=weights, **extra)
    if method.inputs == "segments":
        seg = _on(batch.segment_label, err)
        return method.loss_fn(err[:, 0], err[:, 1], ref[0], ref[1], segment_label=seg, weights=weights, **extra)
    raise ValueError(f"method.inputs '{method.inputs}': expected pairwise, segments, ranked or unpaired")


def _on(value: Tensor | None, like: Tensor) -> Tensor | None:
    return None if value is None else value.to(like.device)
