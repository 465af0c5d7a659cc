"""LPO's latent reward model (reward_models/latent.py) and its training recipe (diffusion_align/lrm.py).

Contracts: the pooled mid feature is the mid block's output in diffusers' own UNet forward; the feature layout is
LPO's (4,800 channels on SD1.5); PickScore's pair loss by hand; save/load is exact; and on the Shapes world an LRM
trained on a few hundred rendered pairs ranks pairs of *held-out* prompts above chance at several noise levels.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusion_align.adapters.unet import SDAdapter
from diffusion_align.lrm import LrmSettings, lrm_pair_loss, pair_accuracy, train_lrm
from diffusion_align.shapes.render import render_batch
from diffusion_align.shapes.world import COLORS, split_prompts
from diffusion_align.types import PreferenceBatch
from reward_models.latent import LatentRewardModel, from_adapter


def test_feature_layout_is_lpos_on_sd15():
    sd15 = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(block_out_channels=(320, 640, 1280, 1280))))
    channels = LatentRewardModel.feature_channels(sd15)
    assert channels == [320, 640, 1280, 1280, 1280] and sum(channels) == 4800


def test_pair_loss_by_hand():
    out = lrm_pair_loss(torch.tensor([2.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.5, 1.0]))
    assert out.losses.tolist() == pytest.approx([0.126928, 1.126928, 1.313262], abs=1e-6)
    assert float(out.metrics["lrm/accuracy"]) == pytest.approx((1 + 0.5 + 0) / 3)


@pytest.fixture(scope="module")
def sd15(tiny_sd15_path):
    return SDAdapter.from_pretrained(tiny_sd15_path, resolution=32)


def test_pooled_mid_feature_is_the_unets_own_mid_block_output(sd15):
    lrm = from_adapter(sd15, projection_dim=8, guidance=1.0)
    captured = {}
    handle = lrm.unet.mid_block.register_forward_hook(lambda m, i, o: captured.setdefault("mid", o))
    latents, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 800])
    cond = sd15.encode_prompts(["a cat", "a dog"])
    with torch.no_grad():
        lrm.unet(latents, t, encoder_hidden_states=cond["prompt_embeds"])  # diffusers' whole forward
        mid_full = captured.pop("mid").mean(dim=(-2, -1))
        down, mid = lrm.unet_features(latents, t, cond)
    handle.remove()
    torch.testing.assert_close(mid, mid_full)
    assert [d.shape[1] for d in down] == list(sd15.denoiser.config.block_out_channels)


def test_guidance_applies_to_the_mid_feature_only(sd15):
    lrm = from_adapter(sd15, projection_dim=8, guidance=3.0).eval()
    latents, t = torch.randn(2, 4, 4, 4), torch.tensor([300, 300])
    cond, uncond = lrm.conditioning(["a cat", "a dog"])
    with torch.no_grad():
        down_c, mid_c = lrm.unet_features(latents, t, cond)
        _, mid_u = lrm.unet_features(latents, t, {k: v.expand(2, *v.shape[1:]) for k, v in uncond.items()})
        expected = torch.nn.functional.normalize(
            lrm.visual_projection(torch.cat([*down_c, mid_u + 3.0 * (mid_c - mid_u)], dim=-1)), dim=-1)
        torch.testing.assert_close(lrm.image_features(latents, t, cond, uncond), expected, rtol=1e-4, atol=1e-5)


def test_save_and_load_give_the_same_scores(sd15, tmp_path):
    lrm = from_adapter(sd15, projection_dim=8, guidance=2.0).eval()
    with torch.no_grad():
        lrm.visual_projection.weight.normal_()
    latents, t, prompts = torch.randn(3, 4, 4, 4), torch.tensor([0, 400, 900]), ["a", "b c", ""]
    before = lrm.score_latents(latents, t, prompts)
    loaded = LatentRewardModel.from_pretrained(lrm.save_pretrained(tmp_path / "lrm"))
    torch.testing.assert_close(loaded.score_latents(latents, t, prompts), before)
    with pytest.raises(FileNotFoundError, match="not a latent reward model directory"):
        LatentRewardModel.from_pretrained(tmp_path)


# -- the recipe on the Shapes world ----------------------------------------------------------------------------
def recoloured(prompt, rng):
    """The prompt with another object colour (never the background's): the loser of a pair."""
    options = [c for c in COLORS if c not in (prompt.color, prompt.bg)]
    return dataclasses.replace(prompt, color=options[rng.integers(len(options))])


def shapes_pairs(adapter, prompts, seed, batch_size):
    """Batches of (render of the prompt, render with a wrong object colour), winner first, hard labels; the renders
    are encoded once (as the latent cache does), so training steps run the LRM only."""
    rng = np.random.default_rng(seed)
    losers = [recoloured(p, rng) for p in prompts]
    pixels = [torch.from_numpy(render_batch(group, seed + i)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
              for i, group in enumerate((prompts, losers))]
    mean, std = adapter.vae_posterior(torch.cat(pixels))
    mean, std = (torch.stack(x.chunk(2), dim=1) for x in (mean, std))  # [N, 2, C, h, w]
    batches = []
    for i in range(0, len(prompts), batch_size):
        rows = slice(i, i + batch_size)
        n = len(prompts[rows])
        batches.append(PreferenceBatch(prompts=[p.text for p in prompts[rows]], latent_mean=mean[rows],
                                       latent_std=std[rows], label=torch.ones(n), index=torch.arange(i, i + n)))
    return batches


def test_lrm_trained_on_shapes_pairs_ranks_held_out_pairs_above_chance():
    from diffusion_align.shapes.assets import shipped_pipeline_path

    adapter = SDAdapter.from_pretrained(shipped_pipeline_path(), resolution=64)
    train = split_prompts("train")[::9][:192]
    held_out = split_prompts("held_out")[::5][:48]
    lrm = from_adapter(adapter, projection_dim=32, guidance=1.0)
    settings = LrmSettings(max_steps=120, learning_rate=3e-4, largest_timestep=600, log_every=40)
    train_lrm(lrm, adapter, shapes_pairs(adapter, train, seed=0, batch_size=16), settings, progress=False)
    accuracy = pair_accuracy(lrm, adapter, shapes_pairs(adapter, held_out, seed=100, batch_size=16),
                             timesteps=(100, 400))
    # 48 held-out pairs per timestep: chance is 0.5 (P[≥ 34/48 by chance] < 0.002)
    assert all(value >= 0.7 for value in accuracy.values()), accuracy
