"""Inversion noising: x_t from a clean latent by running the model backwards, instead of forward noising.

Forward noising (every Diffusion-DPO variant) draws ``x_t = sqrt(ā_t) x_0 + sqrt(1 - ā_t) ε`` with fresh ε. SmPO and
InPO instead invert the clean latent with the policy itself (no gradient, no classifier-free guidance, the sample's
own prompt) and train on the latent the inversion reaches, with the noise target recomputed from it:

* **DDIM inversion** (InPO, ``JaydenLyh/InPO``): N = 10 inverse DDIM steps; after each,
  ``z += η · randn · sqrt(var)`` with ``η = 0.1`` and DDIM's posterior variance
  ``var = (1 - ā_t) / (1 - ā_{t+Δ}) · (1 - ā_{t+Δ} / ā_t)``.
* **ReNoise inversion** (SmPO, ``JaydenLyh/SmPO``): each inverse step is taken twice — once to get a first estimate
  ``z₁``, then again from ``z`` with the mean of the two noise predictions ``(ε(z, t) + ε(z₁, t)) / 2``, both evaluated
  at timestep ``t`` as the authors' code does. SD1.5: N = 5; SDXL: N = 10.

Both use the inverse timesteps of diffusers 0.20's ``DDIMInverseScheduler`` (pinned by the authors; later diffusers
changed them): ``k·Δ + 1`` rolled by one with the first set to the second minus Δ, e.g. N = 5:
``[-199, 1, 201, 401, 601]``; a step at ``t`` moves the latent from level ``t`` to ``t + Δ``, and ``ā`` at a
negative level is ``ā[0]`` (``set_alpha_to_one=False`` in the SD configs). Only steps with ``t < t_train`` run.

**Known offset (kept, as in the authors' code):** the inversion stops at level ``max{t_k < t_train} + Δ``, not at
``t_train`` — e.g. ``t_train = 500`` with N = 5 ends at level 601 — and the model is then asked for the noise at
``t_train``: ``target = (z - sqrt(ā[t_train]) x_0) / sqrt(1 - ā[t_train])``.

These functions take the denoiser as a callable ``eps_fn(z, t) -> ε̂`` with ``t`` a ``[B]`` long tensor, so they serve
any model on a discrete schedule: the trainer supplies the policy with its adapters on, a v-prediction model's output
converted to ε (:func:`x0_and_eps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffusion_align.adapters.base import DiffusionAdapter

EpsFn = Callable[[Tensor, Tensor], Tensor]


def inverse_timesteps_v020(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """diffusers 0.20 ``DDIMInverseScheduler.set_timesteps`` (with ``steps_offset=1``): the levels steps start from."""
    if num_steps < 2 or num_train_timesteps % num_steps:
        raise ValueError(f"inversion steps {num_steps}: expected >= 2 and a divisor of {num_train_timesteps}")
    delta = num_train_timesteps // num_steps
    forward = [k * delta + 1 for k in range(num_steps)]
    rolled = forward[-1:] + forward[:-1]
    rolled[0] = rolled[1] - delta
    return rolled


def _alpha(alphas_cumprod: Tensor, level: int) -> Tensor:
    return alphas_cumprod[max(level, 0)]


def inverse_ddim_step(eps: Tensor, t: int, z: Tensor, alphas_cumprod: Tensor, delta: int) -> Tensor:
    """Move ``z`` from level ``t`` to ``t + delta`` along the DDIM path through ``x̂_0 = (z - sqrt(1-ā_t) ε)/sqrt(ā_t)``."""
    a_t, a_next = _alpha(alphas_cumprod, t), _alpha(alphas_cumprod, t + delta)
    x0_hat = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps


def ddim_variance(t: int, alphas_cumprod: Tensor, delta: int) -> Tensor:
    """DDIM's ``_get_variance(t + delta, t)``: ``(1 - ā_t)/(1 - ā_{t+Δ}) · (1 - ā_{t+Δ}/ā_t)`` (ā at t < 0 is ā[0])."""
    a_prev, a_next = _alpha(alphas_cumprod, t), _alpha(alphas_cumprod, t + delta)
    return (1 - a_prev) / (1 - a_next) * (1 - a_next / a_prev)


@dataclass(frozen=True)
class InvertedLatents:
    """What an inversion hands the trainer.

    Attributes:
        noisy: ``[B, ...]`` the inverted latent, fed to the model at ``t_train``.
        target: ``[B, ...]`` the recomputed ε target ``(noisy - sqrt(ā[t_train]) x_0) / sqrt(1 - ā[t_train])``.
        level: the noise level the inversion actually reached (``max{t_k < t_train} + Δ``).
    """

    noisy: Tensor
    target: Tensor
    level: int


@torch.no_grad()
def invert(
    eps_fn: EpsFn,
    x0: Tensor,
    t_train: int,
    alphas_cumprod: Tensor,
    *,
    num_steps: int,
    renoise: bool,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> InvertedLatents:
    """Invert ``x0`` up to (just past) ``t_train``: ReNoise (``renoise=True``, SmPO) or DDIM (+ ``eta`` noise, InPO).

    Args:
        eps_fn: the ε-prediction model, ``eps_fn(z [B, ...], t [B] long) -> ε̂ [B, ...]``.
        x0: ``[B, ...]`` clean latents (scaled as the model sees them).
        t_train: the training timestep, shared by the batch (the authors use one per step).
        alphas_cumprod: ``[T]`` ``ā`` of the training schedule.
        num_steps: inversion steps over the whole schedule (SmPO: 5 for SD1.5, 10 for SDXL; InPO: 10).
        renoise: average two noise predictions per step (ReNoise) instead of one (DDIM).
        eta: scale of the noise added after each step, times DDIM's ``sqrt(var)`` (InPO: 0.1; 0 for ReNoise).
        generator: for the ``eta`` noise.
    """
    alphas = alphas_cumprod.to(device=x0.device, dtype=torch.float32)
    num_train_timesteps = alphas.shape[0]
    delta = num_train_timesteps // num_steps
    z = x0.float()
    level = 0
    for t in inverse_timesteps_v020(num_steps, num_train_timesteps):
        if t >= t_train:
            break
        timestep = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)  # t = -199 too, as theirs
        eps = eps_fn(z.to(x0.dtype), timestep).float()
        if renoise:
            first = inverse_ddim_step(eps, t, z, alphas, delta)
            eps = (eps + eps_fn(first.to(x0.dtype), timestep).float()) / 2
        z = inverse_ddim_step(eps, t, z, alphas, delta)
        if eta:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = z + eta * noise * ddim_variance(t, alphas, delta).sqrt()
        level = t + delta
    a_train = alphas[t_train]
    target = (z - a_train.sqrt() * x0.float()) / (1 - a_train).sqrt()
    return InvertedLatents(noisy=z.to(x0.dtype), target=target.to(x0.dtype), level=level)


def per_sample(value: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``[B]`` value as float32 ``[B, 1, ...]``, broadcastable against ``like``."""
    return value.to(like.device, torch.float32).view(-1, *([1] * (like.ndim - 1)))


def x0_and_eps(adapter: DiffusionAdapter, pred: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(x̂0, ε̂)`` from a discrete adapter's prediction (ε or v), float32."""
    alphas = adapter.noise_scheduler.alphas_cumprod.to(x_t.device, torch.float32)
    a_t = per_sample(alphas[t.long()], x_t)
    x_t, pred = x_t.float(), pred.float()
    if adapter.noise_scheduler.config.prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x_t - (1.0 - a_t).sqrt() * pred
        eps = (1.0 - a_t).sqrt() * x_t + a_t.sqrt() * pred
        return x0, eps
    return (x_t - (1.0 - a_t).sqrt() * pred) / a_t.sqrt(), pred


NOISING_KINDS = ("forward", "ddim_inversion", "renoise_inversion")


def make_noising(kind: str, *, num_steps: int = 10, eta: float | None = None) -> Callable[..., InvertedLatents] | None:
    """The ``method.noising`` of a config: ``None`` for forward noising, else a partial :func:`invert`.

    Args:
        kind: ``forward`` | ``ddim_inversion`` (InPO; ``eta`` defaults to its 0.1) | ``renoise_inversion`` (SmPO;
            no added noise).
        num_steps: inversion steps over the whole schedule (``method.inversion_steps``).
        eta: added-noise scale of DDIM inversion.
    """
    if kind not in NOISING_KINDS:
        raise ValueError(f"method.noising '{kind}': expected one of {', '.join(NOISING_KINDS)}")
    if kind == "forward":
        return None
    renoise = kind == "renoise_inversion"
    if renoise and eta:
        raise ValueError(f"method.inversion_eta {eta}: ReNoise inversion adds no noise (SmPO); use ddim_inversion")
    return partial(invert, num_steps=num_steps, renoise=renoise, eta=0.0 if renoise else (0.1 if eta is None else eta))
