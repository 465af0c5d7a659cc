"""Inversion noising (diffusion_align/noising.py): hand-derived timesteps, levels and targets."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_align.noising import ddim_variance, inverse_ddim_step, inverse_timesteps_v020, invert

ALPHAS = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod


def test_inverse_timesteps_are_diffusers_0_20s():
    assert inverse_timesteps_v020(5) == [-199, 1, 201, 401, 601]  # SmPO SD1.5
    assert inverse_timesteps_v020(10) == [-99, 1, 101, 201, 301, 401, 501, 601, 701, 801]  # SmPO SDXL, InPO
    with pytest.raises(ValueError, match="divisor of 1000"):
        inverse_timesteps_v020(7)


def test_an_inverse_step_with_the_true_noise_lands_on_the_forward_noised_latent():
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    z = ALPHAS[201].sqrt() * x0 + (1 - ALPHAS[201]).sqrt() * eps
    expected = ALPHAS[401].sqrt() * x0 + (1 - ALPHAS[401]).sqrt() * eps
    torch.testing.assert_close(inverse_ddim_step(eps, 201, z, ALPHAS, 200), expected)


def _oracle(eps):
    return lambda z, t: eps  # a model that always predicts the same noise


@pytest.mark.parametrize("renoise", [True, False])
def test_inversion_reaches_the_level_past_t_train_smpo_offset(renoise):
    """t_train = 500, N = 5: steps from -199, 1, 201, 401 -> level 601 (not 500): the authors' known offset."""
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    out = invert(_oracle(eps), x0, 500, ALPHAS, num_steps=5, renoise=renoise)
    assert out.level == 601
    # the first step starts from x0 read as level -199 (ā[0]), so the path is that of x0' = (x0 - sqrt(1-ā0) ε)/sqrt(ā0)
    x0_prime = (x0 - (1 - ALPHAS[0]).sqrt() * eps) / ALPHAS[0].sqrt()
    torch.testing.assert_close(out.noisy, ALPHAS[601].sqrt() * x0_prime + (1 - ALPHAS[601]).sqrt() * eps)
    expected_target = (out.noisy - ALPHAS[500].sqrt() * x0) / (1 - ALPHAS[500]).sqrt()
    torch.testing.assert_close(out.target, expected_target)
    # the offset makes the target differ from the noise that built the latent, by a documented, bounded amount
    assert 0.05 < (out.target - eps).abs().mean() < 0.5


def test_renoise_averages_two_predictions_per_step_each_at_the_steps_timestep():
    calls = []

    def eps_fn(z, t):
        calls.append(int(t[0]))
        return 0.5 * z + 0.1 * t.float().view(-1, 1, 1, 1) / 1000

    x0 = torch.randn(2, 4, 4, 4)
    out = invert(eps_fn, x0, 300, ALPHAS, num_steps=5, renoise=True)
    assert calls == [-199, -199, 1, 1, 201, 201] and out.level == 401
    z = x0.clone()  # independent re-derivation of the loop
    for t in (-199, 1, 201):
        e1 = eps_fn(z, torch.full((2,), t))
        a_t, a_n = ALPHAS[max(t, 0)], ALPHAS[t + 200]
        step = lambda e, z=z, a_t=a_t, a_n=a_n: a_n.sqrt() * (z - (1 - a_t).sqrt() * e) / a_t.sqrt() + (1 - a_n).sqrt() * e  # noqa: E731
        z = step((e1 + eps_fn(step(e1), torch.full((2,), t))) / 2)
    torch.testing.assert_close(out.noisy, z)


def test_ddim_inversion_with_eta_adds_ddim_variance_noise():
    x0, eps = torch.randn(1000, 4), torch.randn(1000, 4)
    clean = invert(_oracle(eps), x0, 150, ALPHAS, num_steps=10, renoise=False)
    noisy = invert(_oracle(eps), x0, 150, ALPHAS, num_steps=10, renoise=False, eta=0.1,
                   generator=torch.Generator().manual_seed(0))
    assert clean.level == noisy.level == 201
    # two steps (-99 -> 1, 1 -> 101) then the last (101 -> 201); every step adds 0.1·sqrt(var)·N(0,1), and the DDIM
    # inverse step is affine in z with slope sqrt(ā_next/ā_t): propagate the variances by hand
    var = torch.tensor(0.0)
    for t in (-99, 1, 101):
        slope = (ALPHAS[t + 100] / ALPHAS[max(t, 0)]).sqrt()
        var = var * slope**2 + 0.01 * ddim_variance(t, ALPHAS, 100)
    measured = (noisy.noisy - clean.noisy).var()
    assert abs(measured / var - 1) < 0.1, (float(measured), float(var))
