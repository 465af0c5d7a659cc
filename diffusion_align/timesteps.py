"""Timestep samplers and per-timestep loss weights, for discrete DDPM schedules and continuous flow schedules.

Both kinds follow :class:`diffusion_align.adapters.base.NoiseSchedule`: ``discrete`` timesteps are int64 in
``[0, num_train_timesteps)``; ``flow`` timesteps are noise levels σ ∈ (0, 1) with ``x_σ = (1-σ)·x0 + σ·ε``.
The density of non-uniform samplers and the SD3 weights come from ``diffusers.training_utils``; the SNR of discrete
schedules from ``diffusers.training_utils.compute_snr``.

Configs name these functions with ``_partial_: true``; the trainer binds ``schedule`` (and ``noise_scheduler`` for
SNR-based weights on discrete schedules) and calls ``sampler(n, generator=, device=)`` / ``weight_fn(timesteps)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.training_utils import (
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
    compute_snr,
)
from torch import Tensor

from diffusion_align.adapters.base import NoiseSchedule

SamplingScheme = Literal["uniform", "logit_normal", "mode"]
WeightScheme = Literal["none", "min_snr", "sd3_sigma_sqrt", "sd3_cosmap", "timestep_aware"]


def sample_timesteps(
    n: int,
    *,
    schedule: NoiseSchedule,
    scheme: SamplingScheme = "uniform",
    t_min: float | None = None,
    t_max: float | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw ``n`` training timesteps.

    Discrete: ``uniform`` is ``torch.randint(t_min, t_max + 1)`` (the Salesforce script's draw when the range is
    the full ``[0, 999]``); ``logit_normal`` / ``mode`` map diffusers' density ``u ∈ (0, 1)`` to
    ``t_min + floor(u·(t_max - t_min + 1))``. Flow: ``σ = σ_min + (σ_max - σ_min)·shift(u)`` with the
    ``FlowMatchEulerDiscreteScheduler`` shift ``shift(u) = s·u / (1 + (s - 1)·u)`` (SD3 uses s = 3).

    Args:
        n: number of timesteps.
        schedule: the adapter's noise schedule (kind and ``num_train_timesteps``).
        scheme: ``uniform`` | ``logit_normal`` | ``mode`` (diffusers' ``compute_density_for_timestep_sampling``).
        t_min: lower bound of the range, inclusive: an int timestep (discrete; default 0) or σ (flow; default 0).
        t_max: upper bound, inclusive: an int timestep (discrete; default T - 1) or σ (flow; default 1).
        logit_mean: mean of the logit-normal (SD3: 0.0).
        logit_std: standard deviation of the logit-normal (SD3: 1.0).
        mode_scale: scale of the ``mode`` density (SD3 script default 1.29).
        shift: flow timestep shift s (1: none); must be 1 for discrete schedules.
        generator: torch generator for reproducible draws.
        device: device of the result.

    Returns:
        ``[n]`` int64 timesteps (discrete) or float32 σ (flow).
    """
    if scheme not in ("uniform", "logit_normal", "mode"):
        raise ValueError(f"sample_timesteps: scheme '{scheme}' is not 'uniform', 'logit_normal' or 'mode'")
    if schedule.kind == "discrete":
        return _sample_discrete(
            n, schedule, scheme, t_min, t_max, shift, generator, device, logit_mean, logit_std, mode_scale
        )
    if schedule.kind == "flow":
        low, high = 0.0 if t_min is None else float(t_min), 1.0 if t_max is None else float(t_max)
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(
                f"sample_timesteps: flow range needs 0 <= t_min < t_max <= 1, got [{low}, {high}]"
            )
        u = _unit_draws(n, scheme, generator, device, logit_mean, logit_std, mode_scale)
        shifted = shift * u / (1.0 + (shift - 1.0) * u)
        return (low + (high - low) * shifted).float()
    raise ValueError(f"sample_timesteps: schedule.kind '{schedule.kind}' is not 'discrete' or 'flow'")


def _unit_draws(n, scheme, generator, device, logit_mean, logit_std, mode_scale) -> Tensor:
    """``u ∈ (0, 1)`` from diffusers' SD3 density (``uniform`` falls through to ``torch.rand``)."""
    return compute_density_for_timestep_sampling(
        weighting_scheme=scheme if scheme != "uniform" else "none",
        batch_size=n,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        device=device,
        generator=generator,
    )


def _sample_discrete(n, schedule, scheme, t_min, t_max, shift, generator, device, *density) -> Tensor:
    """Discrete draws in ``[t_min, t_max]`` (inclusive ints)."""
    last = schedule.num_train_timesteps - 1
    low, high = 0 if t_min is None else int(t_min), last if t_max is None else int(t_max)
    if not 0 <= low <= high <= last:
        raise ValueError(
            f"sample_timesteps: discrete range needs 0 <= t_min <= t_max <= {last}, got [{low}, {high}]"
        )
    if shift != 1.0:
        raise ValueError(
            f"sample_timesteps: shift={shift} applies to flow schedules only (this one is discrete)"
        )
    if scheme == "uniform":
        return torch.randint(low, high + 1, (n,), generator=generator, device=device, dtype=torch.long)
    u = _unit_draws(n, scheme, generator, device, *density)
    return (low + torch.floor(u * (high - low + 1))).long().clamp(max=high)


def signal_to_noise_ratio(timesteps: Tensor, *, schedule: NoiseSchedule, noise_scheduler=None) -> Tensor:
    """SNR per timestep, float32 ``[B]``: ``ā_t/(1 - ā_t)`` (discrete, via ``compute_snr``) or ``((1-σ)/σ)²`` (flow).

    Args:
        timesteps: ``[B]`` int64 timesteps (discrete) or σ (flow).
        schedule: the adapter's noise schedule.
        noise_scheduler: a diffusers scheduler with ``alphas_cumprod`` (``DDPMScheduler``...); discrete only.
    """
    if schedule.kind == "discrete":
        if noise_scheduler is None:
            raise ValueError(
                "signal_to_noise_ratio: a discrete schedule needs 'noise_scheduler' (a diffusers scheduler with "
                "alphas_cumprod, e.g. the adapter's DDPMScheduler) bound by the trainer"
            )
        return compute_snr(noise_scheduler, timesteps).float()
    sigmas = timesteps.float()
    return ((1.0 - sigmas) / sigmas) ** 2


def min_snr_weights(snr: Tensor, *, gamma: float = 5.0, prediction_type: str = "epsilon") -> Tensor:
    """Min-SNR-γ (Hang et al. 2023) as diffusers' text-to-image scripts: ``min(SNR, γ)/SNR`` for ε prediction,
    ``min(SNR, γ)/(SNR + 1)`` for v prediction. ``snr`` float32 ``[B]``; γ = 5 is the paper's recommendation."""
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    raise ValueError(
        f"min_snr_weights: prediction_type '{prediction_type}' is not 'epsilon' or 'v_prediction'"
    )


def timestep_aware_weights(snr: Tensor, *, reference_snr: Tensor, exponent: float = 0.25) -> Tensor:
    """Timestep-aware weights for preference losses ("Rethinking DPO in Diffusion Models", Kang et al. 2025).

    ``w(t) = SNR(t)^(-γ) / mean_{t' in schedule} SNR(t')^(-γ)``: larger at high-noise timesteps, mean 1 over the
    schedule (so a uniform sampler keeps the loss scale).

    [paper-recalled] The authors' code (``kaist-cvml/RethinkingDPO_Diffusion_Models``) could not be read. What is
    known from summaries: the implicit-reward scale differs strongly across timesteps and the method reweights the
    per-timestep losses with normalised weights ``w(t)/Σ_t w(t)``, emphasising the early (high-noise) steps. The
    functional form ``SNR^(-γ)`` and the default γ = 0.25 are OUR assumptions: for ε prediction the error of a
    sample scales roughly with the noise-prediction residual, which is largest at low noise; γ = 0.25 spans about
    22× between t = 0 and t = 999 on the SD1.5 schedule. Treat results as a variant, not a reproduction.

    Args:
        snr: ``[B]`` SNR of the sampled timesteps.
        reference_snr: SNR of every timestep of the schedule (the normalisation set).
        exponent: γ ≥ 0 (0 gives weights of 1).
    """
    if exponent < 0:
        raise ValueError(f"timestep_aware_weights: exponent must be >= 0, got {exponent}")
    return snr ** (-exponent) / (reference_snr.float() ** (-exponent)).mean()


def schedule_snr(*, schedule: NoiseSchedule, noise_scheduler=None) -> Tensor:
    """SNR of every timestep of the schedule: ``t = 0..T-1`` (discrete) or σ at the midpoints ``(k + 0.5)/T`` (flow)."""
    steps = schedule.num_train_timesteps
    if schedule.kind == "discrete":
        grid = torch.arange(steps, dtype=torch.long)
    else:
        grid = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    return signal_to_noise_ratio(grid, schedule=schedule, noise_scheduler=noise_scheduler)


def timestep_weights(
    timesteps: Tensor,
    *,
    schedule: NoiseSchedule,
    scheme: WeightScheme = "none",
    noise_scheduler=None,
    prediction_type: str = "epsilon",
    snr_gamma: float = 5.0,
    aware_exponent: float = 0.25,
) -> Tensor:
    """Per-sample loss weights ``[B]`` (float32) for the sampled ``timesteps``.

    Args:
        timesteps: ``[B]`` int64 timesteps (discrete) or σ (flow).
        schedule: the adapter's noise schedule.
        scheme: ``none`` (all ones); ``min_snr`` (discrete only, :func:`min_snr_weights`); ``sd3_sigma_sqrt`` /
            ``sd3_cosmap`` (flow only, diffusers' ``compute_loss_weighting_for_sd3``); ``timestep_aware``
            (:func:`timestep_aware_weights`).
        noise_scheduler: diffusers scheduler with ``alphas_cumprod``; needed by SNR schemes on discrete schedules.
        prediction_type: ``epsilon`` | ``v_prediction`` (``min_snr`` only).
        snr_gamma: γ of Min-SNR-γ (5.0).
        aware_exponent: γ of the timestep-aware weights (0.25, an assumption: see :func:`timestep_aware_weights`).
    """
    if scheme == "none":
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    if scheme in ("sd3_sigma_sqrt", "sd3_cosmap"):
        if schedule.kind != "flow":
            raise ValueError(
                f"timestep_weights: scheme '{scheme}' needs a flow schedule, got '{schedule.kind}'"
            )
        return compute_loss_weighting_for_sd3(scheme.removeprefix("sd3_"), sigmas=timesteps.float()).float()
    snr = signal_to_noise_ratio(timesteps, schedule=schedule, noise_scheduler=noise_scheduler)
    if scheme == "min_snr":
        if schedule.kind != "discrete":
            raise ValueError(
                "timestep_weights: scheme 'min_snr' needs a discrete schedule (use sd3_* for flow)"
            )
        return min_snr_weights(snr, gamma=snr_gamma, prediction_type=prediction_type)
    if scheme == "timestep_aware":
        reference = schedule_snr(schedule=schedule, noise_scheduler=noise_scheduler).to(snr.device)
        return timestep_aware_weights(snr, reference_snr=reference, exponent=aware_exponent).float()
    raise ValueError(
        f"timestep_weights: scheme '{scheme}' is not one of none, min_snr, sd3_sigma_sqrt, sd3_cosmap, timestep_aware"
    )
