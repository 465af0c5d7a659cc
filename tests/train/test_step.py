"""One DPO step on the tiny SD1.5 model equals the Salesforce formula computed independently here.

The only shared piece is the seeding contract (``row_seeds``: which generator feeds which row); the noising, the
UNet calls, the per-sample MSE and the loss are written out below from METHODS.md §1a.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from diffusion_align.adapters.base import NoiseSchedule
from diffusion_align.adapters.lora import add_lora
from diffusion_align.adapters.unet import SDAdapter
from diffusion_align.data import PairwiseParquetDataset, collate_preference
from diffusion_align.losses import diffusion_dpo_loss, mapo_loss
from diffusion_align.reference import FrozenReference, LoraDisabledReference, NoReference
from diffusion_align.timesteps import sample_timesteps
from diffusion_align.train.step import StepInputs, preference_step, row_seeds

BETA = 5000.0
SEED, EPOCH = 3, 1


@pytest.fixture(scope="module")
def batch(tiny_pairs):
    dataset = PairwiseParquetDataset(str(tiny_pairs), resolution=32, hflip=False)
    return collate_preference([dataset[i] for i in (0, 5, 9)])


def lora_adapter(path) -> SDAdapter:
    adapter = SDAdapter.from_pretrained(path, resolution=32)
    add_lora(adapter.denoiser, rank=4)
    with torch.no_grad():  # move the policy away from the reference (gaussian init leaves lora_B at zero)
        gen = torch.Generator().manual_seed(0)
        for name, p in adapter.denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return adapter


def salesforce_dpo_loss(adapter: SDAdapter, batch, beta: float) -> torch.Tensor:
    """Diffusion-DPO exactly as SalesforceAIResearch/DiffusionDPO train.py computes it (fp32, eval mode)."""
    unet, vae = adapter.denoiser, adapter.pipeline.vae
    alphas = adapter.noise_scheduler.alphas_cumprod
    latents_w, latents_l, noises, steps = [], [], [], []
    for seed, pixels in zip(row_seeds(batch.index, EPOCH, SEED), batch.pixel_values):
        gen = torch.Generator().manual_seed(seed)
        dist = vae.encode(pixels).latent_dist
        eps = torch.randn(dist.mean.shape, generator=gen)
        latents = (dist.mean + dist.std * eps) * vae.config.scaling_factor  # latent_dist.sample() * scaling
        noises.append(torch.randn(latents.shape[1:], generator=gen))
        steps.append(torch.randint(0, 1000, (1,), generator=gen))
        latents_w.append(latents[0])
        latents_l.append(latents[1])
    x0 = torch.cat([torch.stack(latents_w), torch.stack(latents_l)])  # [w; l] on the batch dim, as the script
    noise = torch.stack(noises).repeat(2, 1, 1, 1)  # noise.chunk(2)[0].repeat(2, 1, 1, 1)
    t = torch.cat(steps).repeat(2)  # timesteps.chunk(2)[0].repeat(2)
    a = alphas[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    text = adapter.pipeline.text_encoder(
        adapter.pipeline.tokenizer(batch.prompts, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt").input_ids
    )[0].repeat(2, 1, 1)
    model_pred = unet(noisy, t, text).sample
    model_losses = (model_pred.float() - noise.float()).pow(2).mean(dim=[1, 2, 3])
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    with torch.no_grad():
        unet.disable_adapters()
        ref_pred = unet(noisy, t, text).sample
        unet.enable_adapters()
        ref_losses = (ref_pred.float() - noise.float()).pow(2).mean(dim=[1, 2, 3])
        ref_losses_w, ref_losses_l = ref_losses.chunk(2)
        ref_diff = ref_losses_w - ref_losses_l
    inside_term = -0.5 * beta * (model_diff - ref_diff)
    return -F.logsigmoid(inside_term).mean()


def dpo_inputs() -> StepInputs:
    return StepInputs(
        loss_fn=functools.partial(diffusion_dpo_loss, beta=BETA),
        sample_timesteps=functools.partial(sample_timesteps, schedule=NoiseSchedule("discrete", 1000)),
    )


@pytest.mark.parametrize("beta", [1.0, BETA])
def test_dpo_step_equals_the_salesforce_formula(tiny_sd15_path, batch, beta):
    adapter = lora_adapter(tiny_sd15_path)
    expected = salesforce_dpo_loss(adapter, batch, beta)
    inputs = StepInputs(functools.partial(diffusion_dpo_loss, beta=beta), dpo_inputs().sample_timesteps)
    out = preference_step(adapter, LoraDisabledReference(adapter), inputs, batch, epoch=EPOCH, seed=SEED)
    # The loss sees β/2 × (difference of fp32 MSEs ≈ 1.3): float32 rounding of the MSEs (~1e-7, from batching the
    # VAE and UNet differently) is amplified by β/2, hence a tolerance proportional to β.
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6 + beta * 1e-7)
    policy, ref = out.metrics["mse/policy_chosen"], out.metrics["mse/ref_chosen"]
    assert abs(float(policy - ref)) > 1e-3, "policy == reference: the test would not see a wrong reference"


def test_lora_disabled_reference_equals_frozen_copy_at_step_zero(tiny_sd15_path, batch):
    adapter = SDAdapter.from_pretrained(tiny_sd15_path, resolution=32)
    frozen = FrozenReference(adapter)  # taken before LoRA, like the loop does
    add_lora(adapter.denoiser, rank=4)
    inputs = dpo_inputs()
    a = preference_step(adapter, LoraDisabledReference(adapter), inputs, batch, epoch=EPOCH, seed=SEED)
    b = preference_step(adapter, frozen, inputs, batch, epoch=EPOCH, seed=SEED)
    torch.testing.assert_close(a.metrics["mse/ref_chosen"], b.metrics["mse/ref_chosen"], rtol=0, atol=0)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    torch.testing.assert_close(a.loss, torch.tensor(0.693147), rtol=0, atol=1e-5)  # log 2: policy == reference


def test_reference_free_step_runs_without_reference(tiny_sd15_path, batch):
    adapter = lora_adapter(tiny_sd15_path)
    inputs = StepInputs(loss_fn=mapo_loss, sample_timesteps=dpo_inputs().sample_timesteps)
    out = preference_step(adapter, NoReference(), inputs, batch, epoch=EPOCH, seed=SEED)
    assert torch.isfinite(out.loss) and "mse/ref_chosen" not in out.metrics
    out.loss.backward()
    grads = [p.grad for n, p in adapter.denoiser.named_parameters() if "lora" in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_same_row_sees_same_noise_whatever_its_batch(tiny_sd15_path, tiny_pairs):
    adapter = lora_adapter(tiny_sd15_path)
    dataset = PairwiseParquetDataset(str(tiny_pairs), resolution=32, hflip=False)
    inputs = dpo_inputs()
    alone = preference_step(adapter, NoReference(), StepInputs(mapo_loss, inputs.sample_timesteps),
                            collate_preference([dataset[4]]), epoch=0, seed=0)
    together = preference_step(adapter, NoReference(), StepInputs(mapo_loss, inputs.sample_timesteps),
                               collate_preference([dataset[2], dataset[4]]), epoch=0, seed=0)
    torch.testing.assert_close(alone.losses[0], together.losses[1], rtol=1e-5, atol=1e-6)


def renoise_dpo_loss(adapter: SDAdapter, batch, beta: float) -> torch.Tensor:
    """SmPO's ReNoise inversion (METHODS.md §3, 5 steps) written out per row, then the Salesforce DPO loss.

    A v-prediction UNet's output v gives ε = sqrt(1-ā)·z + sqrt(ā)·v for the inversion, and its loss target is
    v = sqrt(ā)·ε - sqrt(1-ā)·x0 with ε the inversion's noise target.
    """
    unet, vae = adapter.denoiser, adapter.pipeline.vae
    alphas = adapter.noise_scheduler.alphas_cumprod
    v_model = adapter.noise_scheduler.config.prediction_type == "v_prediction"

    def eps_of(z, t, cond):
        out = unet(z, torch.full((2,), t), cond).sample  # t = -199 too, as the authors call it
        a = alphas[max(t, 0)]
        return (1 - a).sqrt() * z + a.sqrt() * out if v_model else out
    text = adapter.pipeline.text_encoder(
        adapter.pipeline.tokenizer(batch.prompts, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt").input_ids)[0]
    diffs, ref_diffs = [], []
    for row, (seed, pixels) in enumerate(zip(row_seeds(batch.index, EPOCH, SEED), batch.pixel_values)):
        gen = torch.Generator().manual_seed(seed)
        dist = vae.encode(pixels).latent_dist
        x0 = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)) * vae.config.scaling_factor
        torch.randn(x0.shape[1:], generator=gen)  # the forward noise the step draws (unused by inversion)
        t_train = int(torch.randint(0, 1000, (1,), generator=gen))
        cond = text[row : row + 1].repeat(2, 1, 1)
        z = x0.clone()
        with torch.no_grad():
            for t in (-199, 1, 201, 401, 601):
                if t >= t_train:
                    break
                a_t, a_n = alphas[max(t, 0)], alphas[t + 200]

                def step(eps, z=z, a_t=a_t, a_n=a_n):
                    return a_n.sqrt() * (z - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_n).sqrt() * eps

                e1 = eps_of(z, t, cond)
                z = step((e1 + eps_of(step(e1), t, cond)) / 2)
        target = (z - alphas[t_train].sqrt() * x0) / (1 - alphas[t_train]).sqrt()
        if v_model:
            target = alphas[t_train].sqrt() * target - (1 - alphas[t_train]).sqrt() * x0
        ts = torch.full((2,), t_train)
        losses = (unet(z, ts, cond).sample - target).pow(2).mean(dim=[1, 2, 3])
        with torch.no_grad():
            unet.disable_adapters()
            ref = (unet(z, ts, cond).sample - target).pow(2).mean(dim=[1, 2, 3])
            unet.enable_adapters()
        diffs.append(losses[0] - losses[1])
        ref_diffs.append(ref[0] - ref[1])
    inside = -0.5 * beta * (torch.stack(diffs) - torch.stack(ref_diffs))
    return -F.logsigmoid(inside).mean()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_renoise_inversion_step_equals_the_formula_written_out(tiny_pipeline_path, batch, prediction_type):
    from diffusion_align.noising import make_noising

    adapter = lora_adapter(tiny_pipeline_path("sd15", prediction_type=prediction_type))
    beta = 100.0
    expected = renoise_dpo_loss(adapter, batch, beta)
    inputs = StepInputs(functools.partial(diffusion_dpo_loss, beta=beta), dpo_inputs().sample_timesteps,
                        noising=make_noising("renoise_inversion", num_steps=5))
    out = preference_step(adapter, LoraDisabledReference(adapter), inputs, batch, epoch=EPOCH, seed=SEED)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-5)
    forward = preference_step(adapter, LoraDisabledReference(adapter), dpo_inputs(), batch, epoch=EPOCH, seed=SEED)
    assert abs(float(out.metrics["mse/policy_chosen"] - forward.metrics["mse/policy_chosen"])) > 1e-3


@pytest.mark.parametrize("shared", [True, False])
def test_candidates_share_noise_unless_the_method_says_not(tiny_sd15_path, tiny_pairs, monkeypatch, shared):
    """``shared_noise=False`` (RankDPO's ε_i per image) gives each candidate its own draw, still from its row's
    generator: a row's noise is the same alone or in a batch; the timestep stays shared."""
    adapter = lora_adapter(tiny_sd15_path)
    seen = []
    add_noise = adapter.add_noise
    monkeypatch.setattr(adapter, "add_noise", lambda x0, noise, t: seen.append((noise, t)) or add_noise(x0, noise, t))
    dataset = PairwiseParquetDataset(str(tiny_pairs), resolution=32, hflip=False)
    method = StepInputs(mapo_loss, dpo_inputs().sample_timesteps, shared_noise=shared)
    preference_step(adapter, NoReference(), method, collate_preference([dataset[4]]), epoch=0, seed=0)
    preference_step(adapter, NoReference(), method, collate_preference([dataset[2], dataset[4]]), epoch=0, seed=0)
    (alone, t_alone), (together, t_together) = seen
    torch.testing.assert_close(together[2:], alone)  # row 4: the same two draws
    assert torch.equal(t_together[2:], t_alone) and t_alone[0] == t_alone[1]
    assert torch.equal(alone[0], alone[1]) == shared
