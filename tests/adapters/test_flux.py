"""FluxAdapter on the tiny FLUX.1-dev-architecture pipeline: packing, ids, guidance, rectified flow."""

from __future__ import annotations

import copy

import pytest
import torch

from diffusion_align.adapters.flux import FluxAdapter

from .contract import PROMPTS, AdapterContract, flow_noisy


def unpack_tokens(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[N, h/2 · w/2, 4C]`` tokens (row-major 2×2 patches, channel-major inside) -> ``[N, C, h, w]``."""
    n, _, width = tokens.shape
    c = width // 4
    return tokens.reshape(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


class TestFluxAdapter(AdapterContract):
    adapter_class = FluxAdapter
    family = "flux"
    conf_name = "flux"
    schedule_kind = "flow"
    timesteps = (0.25, 0.8)
    pixel_shape = (3, 32, 32)
    latent_shape = (16, 8, 8)
    cond_shapes = {"prompt_embeds": (512, 32), "pooled_prompt_embeds": (32,)}  # T5 sequence, CLIP pooled
    inference_kwargs = {"height": 32, "width": 32, "guidance_scale": 1.0}  # the conf's training guidance

    def expected_noisy(self, adapter, x0, eps, t):
        return flow_noisy(x0, eps, t)

    def expected_target(self, adapter, x0, eps, t):
        return eps - x0

    def expected_scaled(self, adapter, sample):
        return (sample - 0.1159) * 0.3611  # the tiny Flux VAE's shift_factor and scaling_factor

    def from_inference(self, adapter, args, kwargs, output):
        """The pipeline packs latents into tokens and feeds ``timestep / 1000`` = σ (scaled back inside)."""
        assert kwargs["guidance"].tolist() == [1.0]
        return unpack_tokens(kwargs["hidden_states"], 8, 8), kwargs["timestep"], unpack_tokens(output, 8, 8)

    def test_conf_trains_with_guidance_one(self, pristine_adapter) -> None:
        assert pristine_adapter.guidance_scale == 1.0
        assert pristine_adapter.guidance(3, torch.zeros(1)).tolist() == [1.0, 1.0, 1.0]

    def test_transformer_sees_packed_tokens_ids_and_guidance(self, adapter, inputs) -> None:
        x0, eps, t, cond = inputs
        calls = []
        hook = adapter.denoiser.register_forward_hook(
            lambda module, args, kwargs, out: calls.append(kwargs), with_kwargs=True
        )
        with torch.no_grad():
            adapter.predict(adapter.add_noise(x0, eps, t), t, cond)
        hook.remove()
        seen = calls[0]
        assert seen["hidden_states"].shape == (2, 16, 64)  # 4 x 4 patches of 2 x 2 x 16 channels
        torch.testing.assert_close(unpack_tokens(seen["hidden_states"], 8, 8), adapter.add_noise(x0, eps, t))
        rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
        expected_ids = torch.stack([torch.zeros(16), rows.flatten(), cols.flatten()], dim=1)
        torch.testing.assert_close(seen["img_ids"], expected_ids, rtol=0, atol=0)
        torch.testing.assert_close(seen["txt_ids"], torch.zeros(512, 3), rtol=0, atol=0)
        torch.testing.assert_close(seen["timestep"], t, rtol=0, atol=0)
        assert seen["guidance"].tolist() == [1.0, 1.0]

    def test_guidance_scale_changes_the_prediction(self, adapter, inputs) -> None:
        base = self.prediction(adapter, inputs)
        adapter.guidance_scale = 3.5
        assert float((self.prediction(adapter, inputs) - base).abs().max()) > 1e-4

    def test_guidance_setting_must_match_the_transformer(self, pristine_adapter) -> None:
        with pytest.raises(ValueError, match=r"embeds guidance \(FLUX.1-dev\): set guidance_scale"):
            FluxAdapter(pristine_adapter.pipeline, resolution=32, guidance_scale=None)
        schnell = copy.deepcopy(pristine_adapter.pipeline)
        schnell.transformer.register_to_config(guidance_embeds=False)
        with pytest.raises(
            ValueError, match=r"guidance_scale=1.0 but the transformer has no guidance embedding"
        ):
            FluxAdapter(schnell, resolution=32, guidance_scale=1.0)
        assert FluxAdapter(schnell, resolution=32, guidance_scale=None).guidance(2, torch.zeros(1)) is None

    def test_odd_latent_size_cannot_be_packed(self, adapter) -> None:
        cond = adapter.encode_prompts(PROMPTS[:1])
        with pytest.raises(ValueError, match="latent size 7x8 must be even for 2x2 packing"):
            adapter.predict(torch.zeros(1, 16, 7, 8), torch.tensor([0.5]), cond)

    def test_flow_timesteps_must_be_sigmas(self, adapter, inputs) -> None:
        x0, eps, _, _ = inputs
        with pytest.raises(
            ValueError, match=r"FluxAdapter.add_noise: timesteps must be float noise levels σ"
        ):
            adapter.add_noise(x0, eps, torch.tensor([10, 500]))
