"""Stochastic steps with log-probabilities (diffusion_align/sampling.py; tests/evaluate/test_sampling.py already names
the evaluation sampler's tests): hand-derived values, diffusers' own DDIM
step as the contract, and the SDE's defining invariant (it keeps the data marginals of the ODE)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from diffusion_align.adapters.base import NoiseSchedule
from diffusion_align.sampling import (
    StepKernel,
    ddim_step_stats,
    flow_sde_step_stats,
    gaussian_logprob,
    x0_and_eps,
)

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def fake_adapter(kind="discrete", prediction_type="epsilon", **scheduler):
    """What StepKernel reads from an adapter: its pipeline's sampler config, training scheduler and schedule kind."""
    if kind == "discrete":
        settings = {**SD, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, **scheduler}
        config = DDIMScheduler(**settings, prediction_type=prediction_type).config
        training = DDPMScheduler.from_config(config)
    else:
        config = FlowMatchEulerDiscreteScheduler(**scheduler).config
        training = FlowMatchEulerDiscreteScheduler.from_config(config)
    return SimpleNamespace(pipeline=SimpleNamespace(scheduler=SimpleNamespace(config=config)), noise_scheduler=training,
                           schedule=NoiseSchedule(kind))


def test_ddim_step_stats_by_hand():
    # ā_t = 0.5, ā_prev = 0.8, η = 1: var = (0.2/0.5)·(1 - 0.5/0.8) = 0.15, mean = √0.8·x0 + √(1-0.8-0.15)·ε
    alphas = torch.tensor([0.8, 0.5])
    x0, eps = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    mean, std = ddim_step_stats(alphas, x0, x0, eps, torch.tensor([1]), torch.tensor([0]), eta=1.0)
    assert std.item() == pytest.approx(math.sqrt(0.15), rel=1e-6)
    assert mean.item() == pytest.approx(math.sqrt(0.8) * 1.0 + math.sqrt(0.05) * 2.0, rel=1e-6)
    _, half = ddim_step_stats(alphas, x0, x0, eps, torch.tensor([1]), torch.tensor([0]), eta=0.5)
    assert half.item() == pytest.approx(0.5 * math.sqrt(0.15), rel=1e-6)


def test_gaussian_logprob_is_the_mean_normal_log_density():
    sample, mean = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    std = torch.tensor([0.5, 1.0, 2.0])
    expected = torch.distributions.Normal(mean, std.view(-1, 1, 1, 1)).log_prob(sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_logprob(sample, mean, std), expected)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_kernel_step_equals_diffusers_ddim_step_with_eta(prediction_type):
    """diffusers' DDIMScheduler.step(eta=1, variance_noise=z) is mean + std·z of our kernel (same t_prev rule)."""
    adapter = fake_adapter(prediction_type=prediction_type)
    kernel = StepKernel(adapter, num_steps=10, eta=1.0)
    sampler = DDIMScheduler.from_config(adapter.pipeline.scheduler.config)
    sampler.set_timesteps(10)
    torch.manual_seed(0)
    x, pred, z = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for point in kernel.points[:-1]:
        t, t_prev = kernel.levels(point, 2, torch.device("cpu"))
        mean, std = kernel.stats(pred, x, t, t_prev)
        ours = mean + std.view(-1, 1, 1, 1) * z
        theirs = sampler.step(pred, point.t, x, eta=1.0, variance_noise=z).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_v_prediction_converts_to_x0_and_eps():
    adapter = fake_adapter(prediction_type="v_prediction")
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    noisy = adapter.noise_scheduler.add_noise(x0, eps, t)
    v = adapter.noise_scheduler.get_velocity(x0, eps, t)
    got_x0, got_eps = x0_and_eps(adapter, v, noisy, t)
    torch.testing.assert_close(got_x0, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_eps, eps, rtol=1e-4, atol=1e-4)


def test_sd_step_stds_are_lpos_sigma_table():
    """LPO's compare_funcs hard-codes the std of SD1.5's 20-step η=1 DDIM steps (t = 1, 51, ..., 951)."""
    lpo = [0.0206, 0.0406, 0.1673, 0.2144, 0.2509, 0.2836, 0.3144, 0.3442, 0.3732, 0.4016, 0.4293, 0.4565, 0.4829,
           0.5087, 0.5336, 0.5576, 0.5807, 0.6029, 0.6241, 0.6444]
    kernel = StepKernel(fake_adapter(), num_steps=20, eta=1.0)
    ours = {int(p.t): kernel.step_std(p) for p in kernel.points}
    assert sorted(ours) == list(range(1, 1000, 50))
    # t = 1 steps to t_prev = max(1 - 50, 0) = 0 with std 0.0206 in LPO's table... which is the std of t = 51's step
    # shifted by one entry: LPO indexes its table by t // 50, so table[i] is the step from t = 50·i + 1.
    assert [round(ours[t], 4) for t in sorted(ours)][1:] == pytest.approx(lpo[1:], abs=1.5e-4)


def test_flow_sde_mean_by_hand():
    # σ = 0.5, σ_prev = 0.25, η = 1: g² = 0.5/0.5 = 1, dσ = -0.25; x = 1, v = 2:
    # mean = 1 + (2 + 1/(2·0.5)·(1 + 0.5·2))·(-0.25) = 1 - 0.25·4 = 0; std = 1·√0.25 = 0.5
    mean, std = flow_sde_step_stats(torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([0.5]),
                                    torch.tensor([0.25]), eta=1.0, sigma_max=0.9)
    assert mean.item() == pytest.approx(0.0, abs=1e-7)
    assert std.item() == pytest.approx(0.5)


def _gaussian_velocity(x, sigma, s2):
    """Exact rectified-flow velocity E[ε - x0 | x_σ] for x0 ~ N(0, s2) (1-D Gaussian data)."""
    variance = (1 - sigma) ** 2 * s2 + sigma**2
    return (sigma - (1 - sigma) * s2) / variance * x


def _gaussian_eps(x, alpha_bar, s2):
    """Exact E[ε | x_t] for x0 ~ N(0, s2) under x_t = √ā·x0 + √(1-ā)·ε."""
    return math.sqrt(1 - alpha_bar) / (alpha_bar * s2 + 1 - alpha_bar) * x


def test_flow_sde_keeps_the_data_marginal():
    """With the exact velocity of Gaussian data, the SDE started from N(0, 1) ends at the data variance."""
    s2, n, steps = 0.25, 40000, 200
    torch.manual_seed(0)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    x = torch.randn(n, 1)
    for i in range(steps):
        sigma, prev = sigmas[i].repeat(n), sigmas[i + 1].repeat(n)
        mean, std = flow_sde_step_stats(x, _gaussian_velocity(x, sigmas[i], s2), sigma, prev, eta=0.7,
                                        sigma_max=float(sigmas[1]))
        x = mean + std.view(-1, 1) * torch.randn_like(x)
    assert x.var().item() == pytest.approx(s2, rel=0.05)


def test_ddim_eta_one_keeps_the_data_marginal():
    """DDIM with η = 1 and short strides is DDPM's ancestral sampler: on the exact ε of Gaussian data it ends at the data
    variance. (With long strides the posterior-mean x̂0 loses Var(x0 | x_t) at every step: 100 steps end 13% low.)"""
    s2, n = 0.25, 10000
    adapter = fake_adapter(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, steps_offset=0)
    kernel = StepKernel(adapter, num_steps=500, eta=1.0)
    alphas = adapter.noise_scheduler.alphas_cumprod
    torch.manual_seed(0)
    x = torch.randn(n, 1)
    for point in kernel.points:
        t, t_prev = kernel.levels(point, n, torch.device("cpu"))
        mean, std = kernel.stats(_gaussian_eps(x, float(alphas[int(point.t)]), s2), x, t, t_prev)
        x = mean + std.view(-1, 1) * torch.randn_like(x)
    assert x.var().item() == pytest.approx(s2, rel=0.05)


def test_flow_kernel_follows_the_shifted_sigmas():
    adapter = fake_adapter(kind="flow", shift=3.0)
    kernel = StepKernel(adapter, num_steps=8, eta=0.7)
    sampler = FlowMatchEulerDiscreteScheduler.from_config(adapter.pipeline.scheduler.config)
    sampler.set_timesteps(8)
    assert [p.t for p in kernel.points] == pytest.approx(sampler.sigmas[:-1].tolist())
    assert kernel.points[-1].t_prev == 0.0 and kernel.sigma_max == pytest.approx(float(sampler.sigmas[1]))
    assert kernel.predicted_x0(torch.ones(1, 2), torch.full((1, 2), 3.0), torch.tensor([0.5])).tolist() == [[2.5, 2.5]]


def test_kernel_refuses_a_deterministic_step():
    with pytest.raises(ValueError, match="eta > 0"):
        StepKernel(fake_adapter(), num_steps=10, eta=0.0)
