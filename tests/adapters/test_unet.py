"""SDAdapter (SD1.5 ε and SD2-style v-prediction) and SDXLAdapter (two encoders, pooled text, time ids)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_align.adapters.lora import KOHYA_WEIGHT_NAME, add_lora, save_lora_kohya
from diffusion_align.adapters.unet import SDAdapter, SDXLAdapter

from .contract import AdapterContract, betas_alphas_cumprod, ddpm_noisy, perturb_lora, private_copy, velocity

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


    def test_kohya_copy_loads_in_a_stock_pipeline_with_its_alpha(self, adapter, pristine_adapter, model_config,
                                                                   inputs, tmp_path: Path) -> None:
        """The kohya-format file (what the UI tools load) predicts exactly as trained when diffusers' own kohya
        reader loads it, with lora_alpha = 2 x rank (the converter alone would write alpha = rank: half the strength)."""
        finetune = model_config.finetune
        add_lora(adapter.denoiser, rank=finetune.rank, alpha=2 * finetune.rank,
                 target_modules=list(finetune.target_modules), init_lora_weights=finetune.init_lora_weights)
        perturb_lora(adapter.denoiser)
        path = save_lora_kohya(adapter.denoiser, tmp_path)
        assert path == tmp_path / KOHYA_WEIGHT_NAME and not list(tmp_path.glob(".*"))
        weights = load_file(path)
        layers = {k.split(".")[0] for k in weights}
        assert layers and all(k.startswith("lora_unet_") and "." not in k for k in layers)
        assert set(weights) == {f"{layer}.{part}" for layer in layers
                                for part in ("lora_down.weight", "lora_up.weight", "alpha")}
        assert {float(weights[f"{layer}.alpha"]) for layer in layers} == {2.0 * finetune.rank}
        fresh = private_copy(pristine_adapter)
        fresh.pipeline.load_lora_weights(tmp_path, weight_name=KOHYA_WEIGHT_NAME)
        torch.testing.assert_close(self.prediction(fresh, inputs), self.prediction(adapter, inputs))
        assert float((self.prediction(fresh, inputs) - self.prediction(pristine_adapter, inputs)).abs().max()) > 1e-3


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
