"""Timestep samplers and per-timestep weights, discrete and flow."""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_loss_weighting_for_sd3

from diffusion_align.adapters.base import NoiseSchedule
from diffusion_align.timesteps import (
    min_snr_weights,
    sample_timesteps,
    signal_to_noise_ratio,
    timestep_aware_weights,
    timestep_weights,
)

DISCRETE, FLOW = NoiseSchedule("discrete", 1000), NoiseSchedule("flow", 1000)
SD_SCHEDULER = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_discrete_uniform_is_the_salesforce_draw():
    t = sample_timesteps(64, schedule=DISCRETE, generator=generator())
    expected = torch.randint(0, 1000, (64,), generator=generator(), dtype=torch.long)
    assert t.dtype == torch.long and torch.equal(t, expected)


@pytest.mark.parametrize("scheme", ["uniform", "logit_normal", "mode"])
def test_discrete_restricted_range(scheme):
    t = sample_timesteps(2000, schedule=DISCRETE, scheme=scheme, t_min=100, t_max=299, generator=generator())
    assert t.min() >= 100 and t.max() <= 299
    assert t.min() < 110 and t.max() > 290  # the whole range is reachable


def test_discrete_logit_normal_concentrates_mid_range():
    t = sample_timesteps(4000, schedule=DISCRETE, scheme="logit_normal", generator=generator()).float()
    assert abs(t.mean().item() - 500) < 15
    middle = ((t > 250) & (t < 750)).float().mean().item()
    assert middle > 0.6  # uniform would give 0.5; the logit-normal(0, 1) puts ~0.72 of the mass there


def test_flow_sigmas_follow_the_density_and_shift():
    u = sample_timesteps(512, schedule=FLOW, generator=generator())
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
    shifted = sample_timesteps(512, schedule=FLOW, shift=3.0, generator=generator())
    torch.testing.assert_close(shifted, 3 * u / (1 + 2 * u))
    ranged = sample_timesteps(512, schedule=FLOW, t_min=0.2, t_max=0.6, generator=generator())
    torch.testing.assert_close(ranged, 0.2 + 0.4 * u)


def test_bad_sampler_arguments_raise():
    with pytest.raises(ValueError, match="shift=3.0 applies to flow"):
        sample_timesteps(2, schedule=DISCRETE, shift=3.0)
    with pytest.raises(ValueError, match=r"0 <= t_min <= t_max <= 999"):
        sample_timesteps(2, schedule=DISCRETE, t_min=500, t_max=1000)
    with pytest.raises(ValueError, match="scheme 'cosine'"):
        sample_timesteps(2, schedule=FLOW, scheme="cosine")


def test_sampler_is_config_friendly():
    sampler = functools.partial(sample_timesteps, schedule=DISCRETE, scheme="uniform", t_min=0, t_max=199)
    assert sampler(3, generator=generator(), device="cpu").shape == (3,)


def test_min_snr_weights_by_hand():
    t = torch.tensor([0, 500, 999])
    snr = signal_to_noise_ratio(t, schedule=DISCRETE, noise_scheduler=SD_SCHEDULER)
    alphas = SD_SCHEDULER.alphas_cumprod[t]
    torch.testing.assert_close(snr, alphas / (1 - alphas))
    w = timestep_weights(t, schedule=DISCRETE, scheme="min_snr", noise_scheduler=SD_SCHEDULER, snr_gamma=5.0)
    torch.testing.assert_close(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert w[0] < 1 and w[2] == 1  # clean steps are down-weighted, noisy ones keep weight 1
    v = min_snr_weights(snr, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))


@pytest.mark.parametrize("scheme", ["sigma_sqrt", "cosmap"])
def test_sd3_weights_are_diffusers(scheme):
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    w = timestep_weights(sigmas, schedule=FLOW, scheme=f"sd3_{scheme}")
    torch.testing.assert_close(w, compute_loss_weighting_for_sd3(scheme, sigmas=sigmas).float())


def test_timestep_aware_weights_mean_one_over_the_schedule_and_grow_with_noise():
    all_t = torch.arange(1000)
    w = timestep_weights(all_t, schedule=DISCRETE, scheme="timestep_aware", noise_scheduler=SD_SCHEDULER)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert (w[1:] >= w[:-1]).all()
    flow = timestep_weights((torch.arange(1000) + 0.5) / 1000, schedule=FLOW, scheme="timestep_aware")
    assert flow.mean().item() == pytest.approx(1.0, rel=1e-5) and (flow[1:] > flow[:-1]).all()


def test_timestep_aware_by_hand():
    w = timestep_aware_weights(
        torch.tensor([16.0, 1.0]), reference_snr=torch.tensor([16.0, 1.0]), exponent=0.5
    )
    # SNR^-0.5 = [0.25, 1], mean 0.625
    torch.testing.assert_close(w, torch.tensor([0.4, 1.6]))
    ones = timestep_aware_weights(torch.tensor([16.0, 1.0]), reference_snr=torch.tensor([4.0]), exponent=0.0)
    torch.testing.assert_close(ones, torch.ones(2))


def test_weight_scheme_errors_name_the_problem():
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="needs 'noise_scheduler'"):
        timestep_weights(t, schedule=DISCRETE, scheme="min_snr")
    with pytest.raises(ValueError, match="needs a flow schedule"):
        timestep_weights(t, schedule=DISCRETE, scheme="sd3_cosmap")
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        timestep_weights(torch.tensor([0.5]), schedule=FLOW, scheme="min_snr")
    with pytest.raises(ValueError, match="scheme 'edm'"):
        timestep_weights(t, schedule=DISCRETE, scheme="edm", noise_scheduler=SD_SCHEDULER)
    assert torch.equal(timestep_weights(t, schedule=DISCRETE), torch.ones(2))
