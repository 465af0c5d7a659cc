"""SDAdapter (SD1.5 ε and SD2-style v-prediction) and SDXLAdapter (two encoders, pooled text, time ids)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from diffusion_align.adapters.unet import SDAdapter, SDXLAdapter

from .contract import AdapterContract, betas_alphas_cumprod, ddpm_noisy, velocity

IMAGE_KWARGS = {"height": 32, "width": 32, "guidance_scale": 1.0}


class TestSDAdapter(AdapterContract):
    adapter_class = SDAdapter
    family = "sd15"
    conf_name = "sd15"
    schedule_kind = "discrete"
    timesteps = (10, 700)
    pixel_shape = (3, 32, 32)
    latent_shape = (4, 8, 8)
    cond_shapes = {"prompt_embeds": (77, 32)}
    inference_kwargs = IMAGE_KWARGS

    def alphas_cumprod(self, adapter) -> torch.Tensor:
        return betas_alphas_cumprod(adapter.pipeline.scheduler.config)

    def expected_noisy(self, adapter, x0, eps, t):
        return ddpm_noisy(self.alphas_cumprod(adapter), x0, eps, t)

    def expected_target(self, adapter, x0, eps, t):
        if adapter.pipeline.scheduler.config.prediction_type == "v_prediction":
            return velocity(self.alphas_cumprod(adapter), x0, eps, t)
        return eps

    def expected_scaled(self, adapter, sample):
        return sample * 0.18215

    def from_inference(self, adapter, args, kwargs, output):
        return args[0], args[1].expand(args[0].shape[0]), output

    def test_unsupported_prediction_type_is_refused(self, pristine_adapter) -> None:
        pipeline = copy.deepcopy(pristine_adapter.pipeline)
        pipeline.scheduler.register_to_config(prediction_type="sample")
        with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
            self.adapter_class(pipeline, resolution=32)


class TestSDAdapterVPrediction(TestSDAdapter):
    """SD 2.x-style v-prediction: target ``v = sqrt(ā)·ε - sqrt(1-ā)·x0``."""

    @pytest.fixture(scope="class")
    def tiny_path(self, tiny_pipeline_path) -> Path:
        return tiny_pipeline_path("sd15", prediction_type="v_prediction")

    def test_target_is_velocity(self, adapter, inputs) -> None:
        x0, eps, t, _ = inputs
        assert adapter.prediction_type == "v_prediction"
        assert float((adapter.target(x0, eps, t) - eps).abs().max()) > 0.1


class TestSDXLAdapter(TestSDAdapter):
    adapter_class = SDXLAdapter
    family = "sdxl"
    conf_name = "sdxl"
    # penultimate states of both CLIP encoders side by side (32 + 32); pooled: the second encoder's projection
    cond_shapes = {"prompt_embeds": (77, 64), "pooled_prompt_embeds": (32,)}

    def expected_scaled(self, adapter, sample):
        return sample * 0.13025

    def test_time_ids_describe_the_training_crop(self, adapter) -> None:
        ids = adapter.time_ids(3, torch.float32, torch.device("cpu"))
        assert ids.tolist() == [[32, 32, 0, 0, 32, 32]] * 3

    def test_unet_receives_pooled_text_and_time_ids(self, adapter, inputs) -> None:
        x0, eps, t, cond = inputs
        seen = []
        hook = adapter.denoiser.register_forward_hook(
            lambda module, args, kwargs, out: seen.append(kwargs), with_kwargs=True
        )
        with torch.no_grad():
            adapter.predict(adapter.add_noise(x0, eps, t), t, cond)
        hook.remove()
        added = seen[0]["added_cond_kwargs"]
        torch.testing.assert_close(added["text_embeds"], cond["pooled_prompt_embeds"], rtol=0, atol=0)
        assert added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2
