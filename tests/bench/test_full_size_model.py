"""``bench/full_size_model.py``: the full-size architectures are the real ones (parameter counts of the published
SD1.5 and SDXL models, counted on the meta device: nothing is allocated), and the SDXL builder's pipeline loads
through our SDXL adapter when its widths are shrunk."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import full_size_model  # noqa: E402


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("arch", "unet_parameters"), [("sd15", 859_520_964), ("sdxl", 2_567_463_684)])
def test_unets_have_the_published_parameter_counts(arch, unet_parameters):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**full_size_model.unet_config(arch, 1024 if arch == "sdxl" else 512))
    assert parameters(unet) == unet_parameters


def test_vae_and_text_encoders_have_the_published_parameter_counts():
    with torch.device("meta"):
        vae = AutoencoderKL(**full_size_model.VAE_CONFIG)
        clip_l = CLIPTextModel(CLIPTextConfig(**full_size_model.CLIP_L))
        big_g = CLIPTextModelWithProjection(CLIPTextConfig(**full_size_model.CLIP_BIG_G))
    assert parameters(vae) == 83_653_863
    assert parameters(clip_l) == 123_060_480
    assert parameters(big_g) == 694_659_840


def test_an_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="arch 'sd3': expected sd15 or sdxl"):
        full_size_model.unet_config("sd3", 1024)


def test_the_sdxl_builder_writes_a_pipeline_our_adapter_trains_on(tmp_path, monkeypatch):
    """The builder's assembly (two encoders, tokenizers, scheduler, save) with every width shrunk: the written
    directory loads through SDXLAdapter and predicts on a batch."""
    from diffusion_align.adapters.unet import SDXLAdapter

    small = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": 32,
             "hidden_size": 32}
    monkeypatch.setattr(full_size_model, "CLIP_L", small)
    monkeypatch.setattr(full_size_model, "CLIP_BIG_G", {**small, "hidden_act": "gelu"})
    monkeypatch.setattr(full_size_model, "VAE_CONFIG", {**full_size_model.VAE_CONFIG,
                                                        "block_out_channels": (32, 32, 32, 32), "layers_per_block": 1})
    sdxl = full_size_model.unet_config

    def small_unet(arch, resolution):
        return {**sdxl(arch, resolution), "block_out_channels": (32, 64, 64), "attention_head_dim": (2, 4, 4),
                "transformer_layers_per_block": (1, 1, 1), "layers_per_block": 1, "cross_attention_dim": 64,
                "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32}

    monkeypatch.setattr(full_size_model, "unet_config", small_unet)
    path = full_size_model.build("sdxl", tmp_path / "sdxl", resolution=64)
    adapter = SDXLAdapter.from_pretrained(path, resolution=64)
    cond = adapter.encode_prompts(["a red circle", "a blue square"])
    latents = torch.randn(2, 4, 8, 8)
    pred = adapter.predict(latents, torch.tensor([10, 500]), cond)
    assert pred.shape == latents.shape and torch.isfinite(pred).all()
