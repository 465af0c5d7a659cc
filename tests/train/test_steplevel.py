"""The online step-level loop (SPO, LPO): pair selection, thresholds, and one step's loss recomputed here from the
formulas of METHODS.md §4 (DDIM with log-prob, SPO's clamped loss) and Flow-GRPO's SDE step for SD3.

Shared with the code under test: the adapters' ``predict`` and ``encode_prompts`` (tested in tests/adapters) and
the collected pairs (their selection is tested on its own below). The guidance, the Gaussian of each step, the
log-densities and the loss are written out here.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from safetensors.torch import load_file

from diffusion_align.adapters.base import adapters_disabled
from diffusion_align.adapters.dit import SD3Adapter
from diffusion_align.adapters.lora import add_lora
from diffusion_align.adapters.unet import SDAdapter, SDXLAdapter
from diffusion_align.losses import step_dpo_loss
from diffusion_align.reference import LoraDisabledReference
from diffusion_align.sampling import StepKernel
from diffusion_align.train.step import row_generators, row_seeds
from diffusion_align.train.steplevel import (
    DynamicThreshold,
    OnlineInputs,
    StaticThreshold,
    collect_step_pairs,
    step_level_step,
    uncond_embeds,
)
from diffusion_align.types import PreferenceBatch

SEED, EPOCH, BETA, CLIP, GUIDANCE = 5, 2, 10.0, 0.1, 3.0
PROMPTS = ["a red circle on a blue background", "a small green square at the left on a white background"]
FAMILIES = {"sd15": (SDAdapter, "tiny_sd15_path", 1.0), "sdxl": (SDXLAdapter, "tiny_sdxl_path", 1.0),
            "sd3": (SD3Adapter, "tiny_sd3_path", 0.7)}


def lora_adapter(cls, path):
    adapter = cls.from_pretrained(path, resolution=32)
    add_lora(adapter.denoiser, rank=4)
    with torch.no_grad():  # move the policy away from the reference (lora_B starts at zero)
        gen = torch.Generator().manual_seed(0)
        for name, p in adapter.denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return adapter


def mean_latent_scorer(candidates, prompts, ctx):
    """A deterministic stand-in for a reward: the candidate's mean latent value, on a logit-like scale."""
    return 200.0 * candidates.float().mean(dim=tuple(range(1, candidates.ndim)))


def batch_of(prompts, rows):
    return PreferenceBatch(prompts=list(prompts), index=torch.tensor(rows))


def online_inputs(adapter, eta, **overrides):
    settings = dict(loss_fn=functools.partial(step_dpo_loss, beta=BETA, clip=CLIP),
                    kernel=StepKernel(adapter, num_steps=4, eta=eta), scorer=mean_latent_scorer,
                    threshold=StaticThreshold(0.0), candidates=3, divert_start_step=1, guidance=GUIDANCE)
    return OnlineInputs(**{**settings, **overrides})


def guided(adapter, x, t, cond, uncond):
    """CFG written out: u + w·(c - u), two separate forwards."""
    return adapter.predict(x, t, uncond) + GUIDANCE * (adapter.predict(x, t, cond) - adapter.predict(x, t, uncond))


def expected_logps(adapter, pairs, cond, uncond, eta):
    """log p(x_w | x_t), log p(x_l | x_t) of each pair from the step's Gaussian, computed from scratch."""
    pred = guided(adapter, pairs.x_t, pairs.t, cond, uncond).float()
    x = pairs.x_t.float()
    if adapter.schedule.kind == "discrete":  # DDIM with log-prob (SPO's ddim_step_with_logprob), ε-prediction
        alphas = adapter.noise_scheduler.alphas_cumprod
        a_t = alphas[pairs.t].view(-1, 1, 1, 1)
        a_p = alphas[pairs.t_prev].view(-1, 1, 1, 1)
        x0 = (x - (1 - a_t).sqrt() * pred) / a_t.sqrt()
        std = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
        mean = a_p.sqrt() * x0 + (1 - a_p - std**2).sqrt() * pred
    else:  # Flow-GRPO's sde_step_with_logprob; σ = 1 read as the schedule's second σ
        sigmas = StepKernel(adapter, 4, eta)
        s = pairs.t.view(-1, 1, 1, 1).float()
        s_p = pairs.t_prev.view(-1, 1, 1, 1).float()
        g = eta * torch.sqrt(s / (1 - torch.where(s == 1, torch.full_like(s, sigmas.sigma_max), s)))
        dt = s_p - s
        mean = x * (1 + g**2 / (2 * s) * dt) + pred * (1 + g**2 * (1 - s) / (2 * s)) * dt
        std = g * torch.sqrt(-dt)
    normal = torch.distributions.Normal(mean, std.expand_as(mean))
    return (normal.log_prob(pairs.winner).mean(dim=(1, 2, 3)), normal.log_prob(pairs.loser).mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_step_level_step_matches_the_formula(family, request):
    cls, path_fixture, eta = FAMILIES[family]
    adapter = lora_adapter(cls, request.getfixturevalue(path_fixture))
    online = online_inputs(adapter, eta)
    batch = batch_of(PROMPTS, [4, 9])
    out = step_level_step(adapter, LoraDisabledReference(adapter), online, batch, epoch=EPOCH, seed=SEED)

    with torch.no_grad():
        cond = adapter.encode_prompts(PROMPTS)
        uncond = uncond_embeds(adapter, 2, adapter.device)
        generators = row_generators(row_seeds(batch.index, EPOCH, SEED), adapter.device)
        pairs = collect_step_pairs(adapter, online, PROMPTS, cond, uncond, generators)
        branched = [p for p in online.kernel.points[1:] if online.kernel.step_std(p) > 0]  # a final t=0 step is not
        assert len(pairs) == 2 * len(branched) > 0  # threshold 0 keeps every scored step of both prompts
        pair_cond = {k: v[pairs.row] for k, v in cond.items()}
        pair_uncond = {k: v[pairs.row] for k, v in uncond.items()}
        logp_w, logp_l = expected_logps(adapter, pairs, pair_cond, pair_uncond, eta)
        with adapters_disabled(adapter.denoiser):
            ref_w, ref_l = expected_logps(adapter, pairs, pair_cond, pair_uncond, eta)
    ratio_w = torch.clamp(torch.exp(logp_w - ref_w), 1 - CLIP, 1 + CLIP)
    ratio_l = torch.clamp(torch.exp(logp_l - ref_l), 1 - CLIP, 1 + CLIP)
    expected = -torch.log(torch.sigmoid(BETA * torch.log(ratio_w) - BETA * torch.log(ratio_l))).mean()

    assert float(out.metrics["pairs/kept"]) == len(pairs)
    assert torch.isfinite(out.loss) and not torch.allclose(logp_w, ref_w)  # the LoRA moved the policy
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-4, atol=1e-5)
    out.loss.backward()
    grads = [p.grad for n, p in adapter.denoiser.named_parameters() if "lora" in n and p.grad is not None]
    assert grads and any(g.abs().max() > 0 for g in grads)


class RecordingScorer:
    """Scores candidate j of every row as -j (candidate 0 best, K-1 worst) and keeps what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, candidates, prompts, ctx):
        k = len(prompts) // len(PROMPTS)
        self.calls.append((candidates.clone(), list(prompts), ctx.point))
        return -torch.arange(k, dtype=torch.float32).repeat_interleave(len(PROMPTS))


def test_pairs_are_best_and_worst_of_a_step_and_the_threshold_filters(tiny_sd15_path):
    adapter = SDAdapter.from_pretrained(tiny_sd15_path, resolution=32)
    scorer = RecordingScorer()
    # K = 3: softmax([0, -2]) gives p_best - p_worst = tanh(1) = 0.7616
    online = online_inputs(adapter, 1.0, scorer=scorer, threshold=StaticThreshold(0.7))
    cond = adapter.encode_prompts(PROMPTS)
    uncond = uncond_embeds(adapter, 2, adapter.device)
    pairs = collect_step_pairs(adapter, online, PROMPTS, cond, uncond, row_generators([1, 2], adapter.device))
    assert [call[2].index for call in scorer.calls] == [1, 2, 3]  # divert_start_step=1: step 0 is not branched
    assert scorer.calls[0][1] == PROMPTS * 3  # candidate-major: candidate j of every prompt, then j+1
    assert len(pairs) == 6 and pairs.probability_gaps == pytest.approx([math.tanh(1.0)] * 6, rel=1e-5)
    first, _, _ = scorer.calls[0]
    torch.testing.assert_close(pairs.winner[:2], first[:2])  # candidate 0 of both rows at the first scored step
    torch.testing.assert_close(pairs.loser[:2], first[4:6])  # candidate 2 (the worst)
    # the next x_t is one of the candidates: each later pair's x_t is among the previous step's candidates
    second_xt = pairs.x_t[2:4]
    for row in range(2):
        assert any(torch.equal(second_xt[row], first[j * 2 + row]) for j in range(3))
    strict = online_inputs(adapter, 1.0, scorer=RecordingScorer(), threshold=StaticThreshold(0.8))
    none = collect_step_pairs(adapter, strict, PROMPTS, cond, uncond, row_generators([1, 2], adapter.device))
    assert len(none) == 0 and none.steps_scored == 6


def test_no_kept_pair_gives_a_zero_loss_through_the_same_forwards(tiny_sd15_path):
    """A process whose prompts keep no pair must still run every forward (FSDP all-gathers the weights in each) and a
    backward over every trainable weight (DDP/FSDP reduce the gradients) that a process with pairs runs."""
    adapter = lora_adapter(SDAdapter, tiny_sd15_path)
    calls = []
    adapter.denoiser.register_forward_hook(lambda module, args, output: calls.append(torch.is_grad_enabled()))

    def step(threshold):
        calls.clear()
        online = online_inputs(adapter, 1.0, threshold=StaticThreshold(threshold))
        out = step_level_step(adapter, LoraDisabledReference(adapter), online, batch_of(PROMPTS, [0, 1]), epoch=0,
                              seed=0)
        return out, list(calls)

    kept, kept_calls = step(0.0)
    assert float(kept.metrics["pairs/kept"]) > 0
    none, none_calls = step(1.0)  # a probability gap is never > 1
    assert float(none.loss.detach()) == 0.0 and float(none.metrics["pairs/kept"]) == 0.0
    assert none_calls == kept_calls and True in none_calls  # the same forwards, with and without gradients, in order
    adapter.denoiser.zero_grad(set_to_none=True)
    none.loss.backward()
    grads = [p.grad for p in adapter.denoiser.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)  # every weight reached, nothing to update


def test_dynamic_threshold_maps_step_noise_to_its_range(tiny_sd15_path):
    adapter = SDAdapter.from_pretrained(tiny_sd15_path, resolution=32)
    kernel = StepKernel(adapter, num_steps=20, eta=1.0)
    rule = DynamicThreshold(0.35, 0.5)
    values = {p.index: rule(kernel, p) for p in kernel.points}
    stds = {p.index: kernel.step_std(p) for p in kernel.points}
    noisiest, calmest = max(stds, key=stds.get), min(stds, key=stds.get)
    assert values[noisiest] == pytest.approx(0.5) and values[calmest] == pytest.approx(0.35)
    # monotone in the step's std: noisier steps need a clearer preference (LPO)
    order = sorted(stds, key=stds.get)
    assert [values[i] for i in order] == sorted(values.values())


# -- through `diffalign train` -------------------------------------------------------------------------------------
SMALL = ["method.online.num_steps=4", "method.online.divert_start_step=1", "method.online.candidates=2"]


def assert_lora_moved(out):
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    ups = [v for k, v in weights.items() if ".lora_B." in k]
    assert ups and any(v.abs().max() > 0 for v in ups), "LoRA up-weights still zero: no update reached the model"


@pytest.mark.parametrize("model", ["tiny_sd15", "tiny_sd3"])
def test_spo_trains_through_the_cli(model, run_train, tiny_pairs, tmp_path):
    out = run_train(tmp_path / model, "method=spo", f"model={model}", "reward@method.online.scorer.reward=shapes_proxy",
                    "method.online.threshold.value=0.0", "method.online.eta=0.7", f"data.dataset.paths={tiny_pairs}",
                    *SMALL)
    assert_lora_moved(out)


def test_lpo_trains_with_a_latent_reward_model_from_train_lrm(tiny_pairs, tmp_path, run_train):
    from diffusion_align.cli import main

    lrm_dir = tmp_path / "lrm_run"
    main(["train-lrm", f"hydra.run.dir={lrm_dir}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
          f"data.dataset.paths={tiny_pairs}", "lrm.max_steps=2", "lrm.projection_dim=16"])
    assert (lrm_dir / "lrm" / "heads.safetensors").is_file() and (lrm_dir / "metrics.json").is_file()
    out = run_train(tmp_path / "lpo", "method=lpo", f"method.online.scorer.directory={lrm_dir / 'lrm'}",
                    "method.online.threshold.low=0.0", "method.online.threshold.high=0.0",
                    f"data.dataset.paths={tiny_pairs}", *SMALL)
    assert_lora_moved(out)


def test_step_level_methods_refuse_video_models(run_train, tmp_path):
    from diffusion_align.config import ConfigError

    with pytest.raises(ConfigError, match="samples image trajectories; wan is a video model"):
        run_train(tmp_path / "wan", "method=spo", "model=tiny_wan", "data=video_pairs",
                  "reward@method.online.scorer.reward=shapes_proxy")
