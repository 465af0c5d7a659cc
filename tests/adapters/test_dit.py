"""SD3Adapter (MMDiT, rectified flow) and PixArtAdapter (DiT, ε with learned variance) on tiny pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

from diffusion_align.adapters.dit import PixArtAdapter, PixArtLoraTransformer2DModel, SD3Adapter
from diffusion_align.adapters.lora import LORA_WEIGHT_NAME

from .contract import AdapterContract, betas_alphas_cumprod, ddpm_noisy, flow_noisy


class TestSD3Adapter(AdapterContract):
    adapter_class = SD3Adapter
    family = "sd3"
    conf_name = "sd3"
    schedule_kind = "flow"
    timesteps = (0.25, 0.8)
    pixel_shape = (3, 32, 32)
    latent_shape = (16, 8, 8)
    # 77 CLIP tokens + 256 T5 tokens, T5 width 64; pooled = both CLIP projections (2 x 32)
    cond_shapes = {"prompt_embeds": (333, 64), "pooled_prompt_embeds": (64,)}
    inference_kwargs = {"height": 32, "width": 32, "guidance_scale": 1.0}
    # The last joint block is context_pre_only: its text-stream output is discarded, so the text query
    # projection (used only for the text tokens' own attention output) gets no gradient.
    params_without_gradient = frozenset(
        {"transformer_blocks.1.attn.add_q_proj.weight", "transformer_blocks.1.attn.add_q_proj.bias"}
    )

    def expected_noisy(self, adapter, x0, eps, t):
        return flow_noisy(x0, eps, t)

    def expected_target(self, adapter, x0, eps, t):
        return eps - x0

    def expected_scaled(self, adapter, sample):
        return (sample - 0.0609) * 1.5305  # the tiny SD3 VAE's shift_factor and scaling_factor

    def from_inference(self, adapter, args, kwargs, output):
        """The pipeline feeds ``σ·1000``; the adapter takes σ."""
        return kwargs["hidden_states"], kwargs["timestep"] / 1000, output

    def test_flow_timesteps_must_be_sigmas(self, adapter, inputs) -> None:
        x0, eps, _, cond = inputs
        with pytest.raises(ValueError, match=r"SD3Adapter.add_noise: timesteps must be float noise levels σ"):
            adapter.add_noise(x0, eps, torch.tensor([10, 500]))
        with pytest.raises(ValueError, match=r"SD3Adapter.predict: .* got torch.int64"):
            adapter.predict(x0, torch.tensor([10, 500]), cond)


class TestPixArtAdapter(AdapterContract):
    adapter_class = PixArtAdapter
    family = "pixart"
    conf_name = "pixart"
    schedule_kind = "discrete"
    timesteps = (10, 700)
    pixel_shape = (3, 32, 32)
    latent_shape = (4, 8, 8)
    cond_shapes = {"prompt_embeds": (120, 32), "prompt_attention_mask": (120,)}
    inference_kwargs = {"guidance_scale": 1.0, "use_resolution_binning": False, "clean_caption": False}

    def expected_noisy(self, adapter, x0, eps, t):
        return ddpm_noisy(betas_alphas_cumprod(adapter.pipeline.scheduler.config), x0, eps, t)

    def expected_target(self, adapter, x0, eps, t):
        return eps

    def expected_scaled(self, adapter, sample):
        return sample * 0.18215

    def from_inference(self, adapter, args, kwargs, output):
        """The pipeline keeps the ε half of the 8 output channels (the rest is the learned variance)."""
        return args[0], kwargs["timestep"], output[:, :4]

    def load_saved_lora(self, pipeline, directory: Path) -> None:
        pipeline.transformer.load_lora_adapter(directory, prefix=None, weight_name=LORA_WEIGHT_NAME)

    def transformer_kwargs(self, adapter, noisy, t, cond) -> dict:
        """The stock transformer call's arguments, written out (micro-conditions from the adapter)."""
        return {
            "encoder_hidden_states": cond["prompt_embeds"],
            "encoder_attention_mask": cond["prompt_attention_mask"],
            "timestep": t,
            "added_cond_kwargs": adapter.added_cond_kwargs(noisy, cond["prompt_embeds"].dtype),
            "return_dict": False,
        }

    def test_learned_sigma_channels_are_dropped(self, adapter, inputs) -> None:
        x0, eps, t, cond = inputs
        noisy = adapter.add_noise(x0, eps, t)
        with torch.no_grad():
            full = adapter.denoiser(noisy, **self.transformer_kwargs(adapter, noisy, t, cond))[0]
            pred = adapter.predict(noisy, t, cond)
        assert adapter.learned_sigma and full.shape[1] == 8
        torch.testing.assert_close(pred, full[:, :4], rtol=0, atol=0)

    def test_pipeline_needs_the_lora_capable_transformer(self, tiny_path: Path) -> None:
        plain = PixArtAlphaPipeline.from_pretrained(tiny_path)
        assert type(plain.transformer) is PixArtTransformer2DModel
        with pytest.raises(TypeError, match="expected a PixArtLoraTransformer2DModel"):
            PixArtAdapter(plain, resolution=32)

    def test_lora_transformer_is_the_diffusers_model(self, adapter, tiny_path: Path, inputs) -> None:
        """Same weights and forward as the stock class: only the LoRA mixin is added."""
        assert isinstance(adapter.denoiser, PixArtLoraTransformer2DModel)
        stock = PixArtTransformer2DModel.from_pretrained(tiny_path, subfolder="transformer")
        x0, eps, t, cond = inputs
        noisy = adapter.add_noise(x0, eps, t)
        kwargs = self.transformer_kwargs(adapter, noisy, t, cond)
        with torch.no_grad():
            torch.testing.assert_close(
                adapter.denoiser(noisy, **kwargs)[0], stock(noisy, **kwargs)[0], rtol=0, atol=0
            )

    def test_micro_conditions_follow_the_model(self, adapter, inputs) -> None:
        x0, _, _, _ = inputs
        added = adapter.added_cond_kwargs(x0, torch.float32)
        if not adapter.micro_conditions:
            assert added == {"resolution": None, "aspect_ratio": None}
            return
        assert added["resolution"].tolist() == [[32.0, 32.0]] * 2  # pixels: 8 latent x VAE factor 4
        assert added["aspect_ratio"].tolist() == [[1.0]] * 2


class TestPixArt1024Adapter(TestPixArtAdapter):
    """PixArt-α 1024 px (``sample_size`` 128): resolution and aspect-ratio micro-conditions."""

    inference_kwargs = {**TestPixArtAdapter.inference_kwargs, "height": 32, "width": 32}

    @pytest.fixture(scope="class")
    def tiny_path(self, tiny_pipeline_path, tmp_path_factory) -> Path:
        base = tiny_pipeline_path("pixart")
        config = dict(PixArtTransformer2DModel.load_config(base, subfolder="transformer"), sample_size=128)
        # the micro-condition embedding splits the width in three: 2 heads x 24 = 48 (the real model: 1152)
        config.update(attention_head_dim=24, cross_attention_dim=48)
        torch.manual_seed(7)
        transformer = PixArtTransformer2DModel.from_config(config)
        assert transformer.use_additional_conditions
        path = tmp_path_factory.mktemp("tiny_pixart_1024")
        PixArtAlphaPipeline.from_pretrained(base, transformer=transformer).save_pretrained(path)
        return path
