"""Stochastic sampling steps with log-probabilities, for step-level preference methods (SPO, LPO).

A step-level method samples several candidates ``x_{t-1}`` from one shared ``x_t`` and trains on the
log-probability of a single denoising step, ``log p_θ(x_{t-1} | x_t)``, under the policy and the reference. Every
step here is Gaussian, ``x_{t-1} ~ N(mean_θ(x_t), std²)``, with a std that does not depend on θ, so the policy and the
reference differ only through their means.

* **Discrete schedules (SD1.5, SDXL, PixArt): DDIM with η > 0** (Song et al. 2021, eq. 12), as SPO's
  ``ddim_step_with_logprob``: with ``ā`` the cumulative alphas, ``x̂0`` and ``ε̂`` from the (guided) prediction::

      var  = (1 - ā_prev) / (1 - ā_t) · (1 - ā_t / ā_prev);     std = η · sqrt(var)
      mean = sqrt(ā_prev) · x̂0 + sqrt(1 - ā_prev - std²) · ε̂

  SPO takes ``t_prev = max(t - 1000 // N, 0)`` for N sampling steps (so its ``final_alpha_cumprod`` branch never
  runs); :class:`StepKernel` does the same. η = 1 is DDPM's posterior variance.
* **Rectified flow (SD3, Flux): the ODE turned into an SDE with the same marginals** (Flow-GRPO, Liu et al. 2025).
  With ``x_σ = (1-σ)·x0 + σ·ε``, velocity ``v = ε - x0`` and ``dσ = σ_prev - σ < 0``, the score is
  ``-(x + (1-σ)·v)/σ``; adding ``g²/2 ×`` score to the drift and ``g·dW`` noise, with ``g = η·sqrt(σ/(1-σ))``::

      mean = x + [v + g²/(2σ) · (x + (1-σ)·v)] · dσ;            std = g · sqrt(-dσ)

  At σ = 1 the ratio σ/(1-σ) is undefined; Flow-GRPO evaluates it at the schedule's second σ instead, as here.

The log-probability of a sample is the Gaussian log-density averaged (not summed) over channels and pixels, as in
SPO, LPO and Flow-GRPO, so β is on the scale the authors tuned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from torch import Tensor, nn

from diffusion_align.adapters.base import DiffusionAdapter
from diffusion_align.noising import per_sample, x0_and_eps
from diffusion_align.train.step import randn_rows

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_logprob(sample: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """``[N]`` log N(sample; mean, std²) averaged over every non-batch dimension (float32).

    ``sample`` is detached: the log-probability is a function of the mean (the model) at a fixed sample.
    """
    sample, mean = sample.detach().float(), mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    if std.ndim:
        std = std.view(-1, *([1] * (mean.ndim - 1)))
    logp = -((sample - mean) ** 2) / (2.0 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return logp.mean(dim=tuple(range(1, logp.ndim)))


def ddim_step_stats(
    alphas_cumprod: Tensor, x_t: Tensor, x0: Tensor, eps: Tensor, t: Tensor, t_prev: Tensor, eta: float
) -> tuple[Tensor, Tensor]:
    """Mean ``[N, ...]`` and std ``[N]`` of the stochastic DDIM step ``x_t -> x_{t_prev}`` (module docstring).

    Args:
        alphas_cumprod: the training schedule's ``ā`` ``[T]``.
        x_t: current latents (only their shape and device are used; the mean is written with ``x̂0`` and ``ε̂``).
        x0, eps: the model's ``x̂0`` and ``ε̂`` at ``x_t`` (guided, as the sampler uses them).
        t, t_prev: ``[N]`` integer timesteps, ``t_prev < t`` (``t_prev = t`` gives std 0: a deterministic step).
        eta: η; 0 is deterministic DDIM (no log-probability exists then).
    """
    alphas = alphas_cumprod.to(x_t.device, torch.float32)
    a_t, a_prev = per_sample(alphas[t.long()], x_t), per_sample(alphas[t_prev.long()], x_t)
    variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
    std = eta * variance.clamp(min=0.0).sqrt()
    mean = a_prev.sqrt() * x0.float() + (1.0 - a_prev - std**2).clamp(min=0.0).sqrt() * eps.float()
    return mean, std.flatten()


def flow_sde_step_stats(
    x: Tensor, velocity: Tensor, sigma: Tensor, sigma_prev: Tensor, eta: float, sigma_max: float
) -> tuple[Tensor, Tensor]:
    """Mean ``[N, ...]`` and std ``[N]`` of the flow SDE step ``x_σ -> x_{σ_prev}`` (module docstring).

    Args:
        x: current latents ``x_σ``.
        velocity: the model's (guided) velocity ``v̂ = ε̂ - x̂0``.
        sigma, sigma_prev: ``[N]`` noise levels, ``sigma_prev < sigma``.
        eta: the SDE noise level (Flow-GRPO's ``noise_level``, 0.7 in its configs).
        sigma_max: the σ used in place of σ = 1 in ``σ/(1-σ)`` (the schedule's second σ, as Flow-GRPO).
    """
    s, s_prev = per_sample(sigma, x), per_sample(sigma_prev, x)
    d_sigma = s_prev - s
    ratio = s / (1.0 - torch.where(s >= 1.0, torch.full_like(s, sigma_max), s))
    g = eta * ratio.sqrt()
    x, velocity = x.float(), velocity.float()
    mean = x + (velocity + g**2 / (2.0 * s) * (x + (1.0 - s) * velocity)) * d_sigma
    std = g * (-d_sigma).clamp(min=0.0).sqrt()
    return mean, std.flatten()


def guided_predict(
    adapter: DiffusionAdapter,
    x: Tensor,
    t: Tensor,
    cond: dict[str, Tensor],
    uncond: dict[str, Tensor] | None,
    guidance: float,
    predict=None,
) -> Tensor:
    """Classifier-free guided prediction ``u + w·(c - u)`` in one batched forward (no guidance: ``uncond`` None or
    ``guidance`` 1).

    Args:
        predict: ``(noisy, timesteps, cond) -> prediction``; the adapter's policy by default (a reference's
            ``predict`` gives the reference's guided prediction).
    """
    predict = predict or adapter.predict
    if uncond is None or guidance == 1.0:
        return predict(x, t, cond)
    both = {name: torch.cat([uncond[name], value]) for name, value in cond.items()}
    out_u, out_c = predict(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
    return out_u + guidance * (out_c - out_u)


@dataclass(frozen=True)
class StepPoint:
    """One sampling step: its index in the trajectory and the level it goes from and to (ints or σ)."""

    index: int
    t: float
    t_prev: float


class StepKernel:
    """The stochastic sampler of an adapter: its steps, the Gaussian of each step, and ``x̂0`` at a level.

    Args:
        adapter: a discrete (ε / v) or flow adapter.
        num_steps: sampling steps N (SPO: 20).
        eta: η of DDIM (SPO, LPO: 1.0) or the flow SDE's noise level (Flow-GRPO: 0.7); must be > 0.
    """

    def __init__(self, adapter: DiffusionAdapter, num_steps: int, eta: float) -> None:
        if eta <= 0:
            raise ValueError(f"eta={eta}: a step-level method needs a stochastic step (eta > 0) to have log-probs")
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps}: expected at least 1 sampling step")
        self.adapter, self.num_steps, self.eta = adapter, num_steps, eta
        self.kind = adapter.schedule.kind
        config = adapter.pipeline.scheduler.config
        if self.kind == "discrete":
            sampler = DDIMScheduler.from_config(config)
            sampler.set_timesteps(num_steps)
            ts = [int(t) for t in sampler.timesteps]
            stride = adapter.noise_scheduler.config.num_train_timesteps // num_steps
            self.points = [StepPoint(i, t, max(t - stride, 0)) for i, t in enumerate(ts)]
            self.sigma_max = 1.0
        else:
            sampler = FlowMatchEulerDiscreteScheduler.from_config(config)
            sampler.set_timesteps(num_steps)
            sigmas = [float(s) for s in sampler.sigmas]
            self.points = [StepPoint(i, sigmas[i], sigmas[i + 1]) for i in range(num_steps)]
            self.sigma_max = sigmas[1] if len(sigmas) > 2 else sigmas[0]

    def levels(self, point: StepPoint, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``([n], [n])`` of the step's levels ``t`` and ``t_prev`` in the adapter's own timestep type (long for
        discrete schedules, σ float32 for flow)."""
        dtype = torch.long if self.kind == "discrete" else torch.float32
        return (torch.full((n,), point.t, dtype=dtype, device=device),
                torch.full((n,), point.t_prev, dtype=dtype, device=device))

    def stats(self, pred: Tensor, x: Tensor, t: Tensor, t_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``[N, ...]`` and std ``[N]`` of ``x_{t_prev} | x_t`` given the (guided) prediction at ``x``; ``t``
        and ``t_prev`` are per sample, so one call serves steps taken at different levels."""
        if self.kind == "discrete":
            x0, eps = x0_and_eps(self.adapter, pred, x, t)
            return ddim_step_stats(self.adapter.noise_scheduler.alphas_cumprod, x, x0, eps, t, t_prev, self.eta)
        return flow_sde_step_stats(x, pred, t, t_prev, self.eta, self.sigma_max)

    def step_std(self, point: StepPoint) -> float:
        """The std of the step at ``point`` (it depends on the levels only, not on the latents)."""
        t, t_prev = self.levels(point, 1, torch.device("cpu"))
        zero = torch.zeros(1, 1)
        if self.kind == "discrete":
            alphas = self.adapter.noise_scheduler.alphas_cumprod
            return float(ddim_step_stats(alphas.cpu(), zero, zero, zero, t, t_prev, self.eta)[1])
        return float(flow_sde_step_stats(zero, zero, t, t_prev, self.eta, self.sigma_max)[1])

    def predicted_x0(self, pred: Tensor, x: Tensor, level: Tensor) -> Tensor:
        """``x̂0`` from the prediction at ``x`` on per-sample levels ``level`` (timesteps or σ)."""
        if self.kind == "discrete":
            return x0_and_eps(self.adapter, pred, x, level)[0]
        return x.float() - per_sample(level, x) * pred.float()

    @staticmethod
    def sample(mean: Tensor, std: Tensor, generators: list[torch.Generator], k: int = 1) -> Tensor:
        """``[N, k, ...]`` draws from the step's Gaussian; row n's noise comes from ``generators[n]`` (so a row's
        candidates do not depend on the other rows of the batch)."""
        noise = randn_rows((k, *mean.shape[1:]), generators, mean.device)
        return mean.unsqueeze(1) + std.view(-1, 1, *([1] * (mean.ndim - 1))) * noise


def latent_shape(adapter: DiffusionAdapter) -> tuple[int, int, int]:
    """``(C, h, w)`` of an image adapter's latents at its training resolution (from the VAE's config)."""
    config = adapter.pipeline.vae.config
    side = adapter.resolution // 2 ** (len(config.block_out_channels) - 1)
    return (config.latent_channels, side, side)


@torch.no_grad()
def decode_latents(adapter: DiffusionAdapter, latents: Tensor) -> Tensor:
    """Image latents ``[N, C, h, w]`` (scaled, as the denoiser sees them) -> pixels ``[N, 3, H, W]`` in [-1, 1]."""
    vae: nn.Module = adapter.pipeline.vae
    config = vae.config
    shift = config.get("shift_factor") or 0.0
    sample = latents.to(vae.dtype) / config.scaling_factor + shift
    return vae.decode(sample.to(vae.device)).sample.float().clamp(-1.0, 1.0)
