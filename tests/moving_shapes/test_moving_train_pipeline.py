"""The Moving Shapes video pipeline's training script: what it trains on is what the stock WanPipeline samples with."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

from diffusion_align.moving_shapes.train_pipeline import (
    FLOW_SHIFT,
    RenderedBatches,
    RenderedChunks,
    VideoTrainConfig,
    build_transformer,
    build_vae,
    clip_pixels,
    encode_prompts,
    finetune_decoder,
    rendered,
    shifted_sigmas,
    train_pipeline,
    train_vae,
    weighted_mse,
)
from diffusion_align.moving_shapes.world import FRAME_SIZE, FRAMES, split_prompts

PROMPTS = ["a red circle moving left on a blue background", "a large green square moving up quickly on a black background"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("moving") / "pipeline"
    cfg = VideoTrainConfig(vae_steps=2, vae_batch=2, vae_save_every=1, renders_per_prompt=1, steps=2, batch=2,
                           save_every=0, max_prompts=6)
    return train_pipeline(out, cfg)


def test_vae_compresses_9_frames_to_5_latent_frames_of_16x16():
    vae = build_vae().eval()
    pixels = torch.zeros(1, 3, FRAMES, FRAME_SIZE, FRAME_SIZE)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    assert latents.shape == (1, 8, 5, 16, 16)
    assert (vae.config.scale_factor_temporal, vae.config.scale_factor_spatial) == (2, 2)


def test_training_sigmas_follow_the_samplers_shift():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)
    scheduler.set_timesteps(20)
    unshifted = torch.linspace(1.0, float(scheduler.sigma_min), 20)  # the sampler's grid before its shift
    torch.testing.assert_close(shifted_sigmas(unshifted), scheduler.sigmas[:-1].float(), rtol=1e-5, atol=1e-6)


def test_saved_pipeline_loads_with_stock_diffusers_and_samples_clips(trained):
    pipe = WanPipeline.from_pretrained(str(trained))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.vae, AutoencoderKLWan) and pipe.vae_scale_factor_temporal == 2
    assert pipe.scheduler.config.shift == FLOW_SHIFT
    stds = np.asarray(pipe.vae.config.latents_std)
    assert stds.shape == (8,) and np.all(stds > 0) and not np.allclose(stds, 1.0)  # set from the training latents
    frames = pipe(PROMPTS, height=FRAME_SIZE, width=FRAME_SIZE, num_frames=FRAMES, num_inference_steps=2,
                  guidance_scale=2.0, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (2, FRAMES, FRAME_SIZE, FRAME_SIZE, 3) and np.isfinite(frames).all()
    record = json.loads((trained / "training_config.json").read_text())
    assert record["transformer_steps_done"] == 2 and record["steps"] == 2 and "unet_steps_done" not in record


def test_a_new_transformer_can_start_from_a_saved_text_encoder_under_bf16_autocast(trained, tmp_path):
    """``--text-from``: a new (here 2 x 2-patch) transformer trains with a saved pipeline's text encoder, not a random
    one (lr 0 keeps it exactly); ``--autocast bf16`` runs the forwards in bfloat16 and keeps float32 weights."""
    cfg = VideoTrainConfig(vae_from=str(trained / "vae"), text_from=str(trained), autocast="bf16", patch=2,
                           transformer_layers=1, transformer_heads=1, renders_per_prompt=1, max_prompts=2, steps=1,
                           batch=2, lr=0.0, ema_decay=0.0, save_every=0)
    out = train_pipeline(tmp_path / "p2", cfg)
    new, source = (WanPipeline.from_pretrained(str(path)) for path in (out, trained))
    assert tuple(new.transformer.config.patch_size) == (1, 2, 2) and new.transformer.dtype == torch.float32
    for (name, value), (_, expected) in zip(new.text_encoder.state_dict().items(),
                                            source.text_encoder.state_dict().items(), strict=True):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


def test_a_continued_model_records_its_real_architecture_and_the_whole_lineage(trained, tmp_path):
    """``--init-from``: the new-transformer options do not apply, so the record holds the continued transformer's
    blocks, heads and patch, not the options given; each continuation adds one stage to the source's lineage."""
    def continue_from(source, out, seed):
        cfg = VideoTrainConfig(vae_from=str(trained / "vae"), init_from=str(source), seed=seed, patch=2,
                               transformer_layers=1, renders_per_prompt=1, max_prompts=2, steps=1, batch=2, lr=0.0,
                               ema_decay=0.0, save_every=0)
        return json.loads((train_pipeline(tmp_path / out, cfg) / "training_config.json").read_text())

    first = continue_from(trained, "once", seed=5)
    assert (first["transformer_layers"], first["transformer_heads"], first["patch"]) == (4, 4, 4)
    assert first["transformer_steps_done"] == 1 and len(first["lineage"]) == 2
    assert first["lineage"][0] == f"0: {trained} (2 transformer steps; no lineage recorded)"
    assert first["lineage"][1].startswith(f"1: continued from {trained} at its transformer step 2: +1 steps of 2 clips")
    assert "of seed 5" in first["lineage"][1]
    second = continue_from(tmp_path / "once", "twice", seed=6)
    assert second["lineage"][:2] == first["lineage"] and len(second["lineage"]) == 3
    assert second["lineage"][2].startswith(f"2: continued from {tmp_path / 'once'} at its transformer step 1:")


def test_options_that_cannot_go_together_are_refused_before_any_work(tmp_path):
    """An unknown autocast, and ``--text-from`` with ``--init-from`` (the continued pipeline's own text encoder would
    silently win), fail at once and write nothing."""
    with pytest.raises(ValueError, match="--autocast 'fp8'"):
        train_pipeline(tmp_path / "bad", VideoTrainConfig(autocast="fp8"))
    with pytest.raises(ValueError, match="--text-from 'a' with --init-from 'b'"):
        train_pipeline(tmp_path / "bad", VideoTrainConfig(text_from="a", init_from="b"))
    assert not list(tmp_path.iterdir())


def test_training_prompt_embeddings_equal_the_pipelines(trained):
    """The denoiser trains on exactly what WanPipeline.encode_prompt gives it at sampling time (512 positions,
    zeros past each prompt), so the shipped model sees no train/sample mismatch."""
    pipe = WanPipeline.from_pretrained(str(trained))
    with torch.no_grad():
        ours = encode_prompts(pipe.tokenizer, pipe.text_encoder, [*PROMPTS, ""])
        theirs, _ = pipe.encode_prompt([*PROMPTS, ""], do_classifier_free_guidance=False, max_sequence_length=512,
                                       device="cpu")  # __call__ passes 512
    assert ours.shape == theirs.shape == (3, 512, 32)
    torch.testing.assert_close(ours, theirs)


def test_weighted_mse_weighs_pixels_off_the_background_colour():
    """One frame of 2 x 2 px on a background of 0: one object pixel (error 1 in each channel) and three background
    pixels (error 0.5 in each): weights 4 and 1 -> (4·1 + 3·0.25) / 4 per channel."""
    pixels = torch.zeros(1, 3, 1, 2, 2)
    pixels[..., 1, 1] = 0.8
    reconstruction = pixels + 0.5
    reconstruction[..., 1, 1] = pixels[..., 1, 1] + 1.0
    assert float(weighted_mse(reconstruction, pixels, 4.0)) == pytest.approx((4 * 1.0 + 3 * 0.25) / 4)
    assert float(weighted_mse(reconstruction, pixels, 1.0)) == pytest.approx((1.0 + 3 * 0.25) / 4)


def test_decoder_fine_tuning_changes_the_decoder_and_never_the_latents():
    """Stage 1b keeps the encoder (so a denoiser trained on its latents stays valid) and trains the decoder."""
    vae = build_vae().eval()
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    cfg = VideoTrainConfig(decoder_steps=2, decoder_batch=2)
    finetune_decoder(cfg, vae, split_prompts("train")[:10], log=lambda message: None)
    changed = {name for name, p in vae.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


def test_autoencoder_checkpoints_during_training_and_continues_from_one(trained, tmp_path):
    """Stage 1 leaves OUT.vae-partial behind as it goes; --vae-init starts a new stage 1 from a saved autoencoder."""
    vae = AutoencoderKLWan.from_pretrained(str(trained.with_name(trained.name + ".vae-partial")))
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(0.5)  # a mark no fresh model has
    vae.save_pretrained(tmp_path / "marked")
    continued = train_vae(VideoTrainConfig(vae_steps=1, vae_batch=1, vae_init=str(tmp_path / "marked")),
                          split_prompts("train")[:4], log=lambda message: None)
    bias = continued.decoder.conv_out.bias
    assert torch.allclose(bias, torch.full_like(bias, 0.5), atol=0.01) and not torch.equal(bias, torch.full_like(bias, 0.5))


def test_rendered_batches_are_the_same_whichever_process_renders_them():
    """A step's clips are seeded by (seed, step): rendering in 2 loader processes changes nothing (GPU training)."""
    batches = RenderedBatches(split_prompts("train")[:20], steps=3, batch=2, seed=5)
    inline = list(rendered(batches, VideoTrainConfig(workers=0)))
    parallel = list(rendered(batches, VideoTrainConfig(workers=2)))
    assert len(inline) == len(parallel) == 3 and inline[0].shape == (2, 3, FRAMES, FRAME_SIZE, FRAME_SIZE)
    for a, b in zip(inline, parallel):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(inline[0], inline[1])  # each step draws and renders anew


def test_rendered_chunks_are_the_index_rendered_in_order():
    prompts = split_prompts("train")[:3]
    index = [0, 0, 1, 2, 2]  # 5 rows in chunks of 2: the last chunk holds one clip
    chunks = list(rendered(RenderedChunks(prompts, index, chunk=2, seed=11), VideoTrainConfig(workers=2)))
    assert [len(c) for c in chunks] == [2, 2, 1]
    torch.testing.assert_close(chunks[1], clip_pixels([prompts[1], prompts[2]], 11 + 2), rtol=0, atol=0)


def test_transformer_knobs_and_the_width_a_patch_needs():
    small = build_transformer(layers=1, heads=1, patch=2)  # 2 x 2 x 8 = 32 values per token: width 32 suffices
    assert small.config.patch_size == (1, 2, 2) and small.config.num_layers == 1
    with torch.no_grad():
        out = small(hidden_states=torch.zeros(1, 8, 5, 16, 16), timestep=torch.tensor([500.0]),
                    encoder_hidden_states=torch.zeros(1, 4, 32), return_dict=False)[0]
    assert out.shape == (1, 8, 5, 16, 16)
    with pytest.raises(ValueError, match="at least 128"):
        build_transformer(heads=2, patch=4)  # width 64 < 4 x 4 x 8: the rank-64 bottleneck measured at width 64
