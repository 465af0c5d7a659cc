"""WanAdapter (flow matching) and CogVideoXAdapter (v-prediction; sinusoidal or rotary positions).

Public layouts: pixels ``[N, F, 3, H, W]`` (the data pipeline's frame stacks), latents ``[N, C, f, h, w]``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel, WanPipeline

from diffusion_align.adapters.video import CogVideoXAdapter, WanAdapter

from .contract import PROMPTS, AdapterContract, betas_alphas_cumprod, ddpm_noisy, flow_noisy, velocity

VIDEO_PIXELS = (9, 3, 32, 32)  # 9 frames of 32 x 32 px
VIDEO_LATENTS = (16, 3, 4, 4)  # 16 channels, (9 - 1) / 4 + 1 frames, 8x smaller


def cogvideox_alphas_cumprod(config) -> torch.Tensor:
    """ā of CogVideoX's scheduler from its config: SNR shift ``ā / (s + (1-s)·ā)`` on the scaled-linear ā,
    then zero terminal SNR (Lin et al. 2023, Algorithm 1: shift sqrt(ā) so the last is 0, keep the first)."""
    shift = config.snr_shift_scale
    alphas_cumprod = betas_alphas_cumprod(config)
    alphas_cumprod = alphas_cumprod / (shift + (1 - shift) * alphas_cumprod)
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root**2


class TestWanAdapter(AdapterContract):
    adapter_class = WanAdapter
    family = "wan"
    conf_name = "wan"
    schedule_kind = "flow"
    timesteps = (0.25, 0.8)
    pixel_shape = VIDEO_PIXELS
    latent_shape = VIDEO_LATENTS
    cond_shapes = {"prompt_embeds": (512, 32)}
    inference_kwargs = {"height": 32, "width": 32, "num_frames": 9, "guidance_scale": 1.0}

    def expected_noisy(self, adapter, x0, eps, t):
        return flow_noisy(x0, eps, t)

    def expected_target(self, adapter, x0, eps, t):
        return eps - x0

    def expected_scaled(self, adapter, sample):
        config = adapter.pipeline.vae.config
        mean = torch.tensor(config.latents_mean).view(1, 16, 1, 1, 1)
        std = torch.tensor(config.latents_std).view(1, 16, 1, 1, 1)
        return (sample - mean) / std

    def from_inference(self, adapter, args, kwargs, output):
        """The pipeline feeds ``σ·1000``; the adapter takes σ."""
        return kwargs["hidden_states"], kwargs["timestep"] / 1000, output

    def test_pixels_must_be_frame_stacks(self, adapter) -> None:
        with pytest.raises(ValueError, match=r"WanAdapter.vae_posterior: expected pixels \[N, F, 3, H, W\]"):
            adapter.vae_posterior(torch.zeros(1, 3, 9, 32, 32))  # channels first
        with pytest.raises(ValueError, match=r"got \[1, 3, 32, 32\]"):
            adapter.vae_posterior(torch.zeros(1, 3, 32, 32))  # an image

    def test_one_transformer_wan_only(self, pristine_adapter) -> None:
        p = pristine_adapter.pipeline
        parts = {
            "tokenizer": p.tokenizer,
            "text_encoder": p.text_encoder,
            "vae": p.vae,
            "scheduler": p.scheduler,
        }
        two_experts = WanPipeline(
            **parts,
            transformer=p.transformer,
            transformer_2=copy.deepcopy(p.transformer),
            boundary_ratio=0.875,
        )
        with pytest.raises(ValueError, match=r"two-expert Wan 2.2 pipelines \(transformer_2\)"):
            WanAdapter(two_experts, resolution=32)
        with pytest.raises(ValueError, match=r"per-token timesteps \(expand_timesteps\)"):
            WanAdapter(WanPipeline(**parts, transformer=p.transformer, expand_timesteps=True), resolution=32)

    def test_flow_timesteps_must_be_sigmas(self, adapter, inputs) -> None:
        x0, _, _, cond = inputs
        with pytest.raises(ValueError, match=r"WanAdapter.predict: timesteps must be float noise levels σ"):
            adapter.predict(x0, torch.tensor([10, 500]), cond)


class TestCogVideoXAdapter(AdapterContract):
    adapter_class = CogVideoXAdapter
    family = "cogvideox"
    conf_name = "cogvideox"
    schedule_kind = "discrete"
    timesteps = (10, 700)
    pixel_shape = VIDEO_PIXELS
    latent_shape = VIDEO_LATENTS
    cond_shapes = {"prompt_embeds": (226, 32)}  # the transformer's fixed text length
    inference_kwargs = {"height": 32, "width": 32, "num_frames": 9, "guidance_scale": 1.0}

    def expected_noisy(self, adapter, x0, eps, t):
        return ddpm_noisy(cogvideox_alphas_cumprod(adapter.pipeline.scheduler.config), x0, eps, t)

    def expected_target(self, adapter, x0, eps, t):
        return velocity(cogvideox_alphas_cumprod(adapter.pipeline.scheduler.config), x0, eps, t)

    def expected_scaled(self, adapter, sample):
        return sample * 1.15258426

    def from_inference(self, adapter, args, kwargs, output):
        """The transformer works on ``[N, f, C, h, w]``; the adapter's layout is ``[N, C, f, h, w]``."""
        return kwargs["hidden_states"].transpose(1, 2), kwargs["timestep"], output.transpose(1, 2)

    def test_transformer_sees_frames_before_channels(self, adapter, inputs) -> None:
        x0, eps, t, cond = inputs
        seen = []
        hook = adapter.denoiser.register_forward_hook(
            lambda module, args, kwargs, out: seen.append((kwargs, out[0])), with_kwargs=True
        )
        noisy = adapter.add_noise(x0, eps, t)
        with torch.no_grad():
            pred = adapter.predict(noisy, t, cond)
        hook.remove()
        kwargs, out = seen[0]
        torch.testing.assert_close(kwargs["hidden_states"], noisy.permute(0, 2, 1, 3, 4), rtol=0, atol=0)
        torch.testing.assert_close(pred, out.permute(0, 2, 1, 3, 4), rtol=0, atol=0)
        assert (kwargs["image_rotary_emb"] is None) == (
            not adapter.denoiser.config.use_rotary_positional_embeddings
        )

    def test_terminal_timestep_has_zero_signal(self, adapter, inputs) -> None:
        """Zero terminal SNR: at t = 999 the input is pure noise and v = -x0."""
        x0, eps, _, _ = inputs
        last = torch.tensor([999, 999])
        torch.testing.assert_close(adapter.add_noise(x0, eps, last), eps, rtol=0, atol=1e-6)
        torch.testing.assert_close(adapter.target(x0, eps, last), -x0, rtol=0, atol=1e-6)

    def test_only_v_prediction(self, pristine_adapter) -> None:
        pipeline = copy.deepcopy(pristine_adapter.pipeline)
        pipeline.scheduler.register_to_config(prediction_type="epsilon")
        with pytest.raises(ValueError, match="CogVideoX predicts v"):
            CogVideoXAdapter(pipeline, resolution=32)

    def test_latent_frames_must_fill_the_temporal_patch(self, adapter) -> None:
        adapter.temporal_patch = 2  # CogVideoX 1.5 patches 2 latent frames together
        cond = adapter.encode_prompts(PROMPTS[:1])
        with pytest.raises(
            ValueError, match="3 latent frames is not a multiple of the transformer's patch_size_t=2"
        ):
            adapter.predict(torch.zeros(1, *VIDEO_LATENTS), torch.tensor([10]), cond)


class TestCogVideoXRotaryAdapter(TestCogVideoXAdapter):
    """The same checks on a CogVideoX-5B-style transformer (3D rotary positions, not sinusoidal ones)."""

    @pytest.fixture(scope="class")
    def tiny_path(self, tiny_pipeline_path, tmp_path_factory) -> Path:
        base = tiny_pipeline_path("cogvideox")
        config = dict(CogVideoXTransformer3DModel.load_config(base, subfolder="transformer"))
        config["use_rotary_positional_embeddings"] = True
        torch.manual_seed(5)
        transformer = CogVideoXTransformer3DModel.from_config(config)
        path = tmp_path_factory.mktemp("tiny_cogvideox_rotary")
        CogVideoXPipeline.from_pretrained(base, transformer=transformer).save_pretrained(path)
        return path

    def test_rotary_embeddings_follow_the_latent_grid(self, adapter) -> None:
        assert adapter.rotary
        cos, sin = adapter.rotary_embeddings(frames=3, h=4, w=4, device=torch.device("cpu"))
        tokens = 3 * (4 // 2) * (4 // 2)  # frames x patches (patch 2)
        assert cos.shape == sin.shape == (tokens, adapter.denoiser.config.attention_head_dim)
