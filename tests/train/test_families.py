"""Every tiny architecture trains with DPO through `diffalign train`; flow and video methods on their families."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

IMAGE_FAMILIES = ["sd15", "sdxl", "sd3", "flux", "pixart"]
VIDEO_FAMILIES = ["wan", "cogvideox"]


@pytest.fixture(scope="module")
def tiny_video_pairs(tmp_path_factory):
    from diffusion_align.testing.data import write_tiny_video_pairs_parquet

    directory = tmp_path_factory.mktemp("video_pairs")
    write_tiny_video_pairs_parquet(directory, n_rows=4, num_frames=9, resolution=32)
    return directory


def assert_lora_trained(out) -> None:
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    b_weights = [v for k, v in weights.items() if "lora_B" in k]
    assert b_weights and all(torch.isfinite(v).all() for v in weights.values())
    assert any(v.abs().max() > 0 for v in b_weights), "no update reached the LoRA layers"
    assert "Non-finite steps skipped: 0" in (out / "README.md").read_text()


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_image_family_trains_with_dpo(family, run_train, tiny_pairs, tmp_path):
    out = run_train(tmp_path / family, f"model=tiny_{family}", f"data.dataset.paths={tiny_pairs}",
                    "trainer.optimizer.lr=1e-3")
    assert_lora_trained(out)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_family_trains_with_dpo(family, run_train, tiny_video_pairs, tmp_path):
    out = run_train(tmp_path / family, f"model=tiny_{family}", "data=video_pairs",
                    f"data.dataset.paths={tiny_video_pairs}", "data.loader.num_workers=0",
                    "data.loader.pin_memory=false", "trainer.optimizer.lr=1e-3")
    assert_lora_trained(out)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_dpo_with_the_beta_schedule(family, run_train, tiny_pairs, tmp_path):
    out = run_train(tmp_path / family, f"model=tiny_{family}", "method=flow_dpo",
                    "method.loss.beta_schedule=one_minus_t_squared", f"data.dataset.paths={tiny_pairs}",
                    "trainer.optimizer.lr=1e-3")
    assert_lora_trained(out)


def test_densedpo_trains_on_segment_labels(run_train, tiny_video_pairs, tmp_path):
    out = run_train(tmp_path / "dense", "model=tiny_wan", "method=densedpo", "data=video_pairs",
                    f"data.dataset.paths={tiny_video_pairs}", "data.loader.num_workers=0",
                    "data.loader.pin_memory=false", "trainer.optimizer.lr=1e-3")
    assert_lora_trained(out)


def test_pixart_model_card_loads_through_the_transformer(run_train, tiny_pairs, tmp_path):
    out = run_train(tmp_path / "pixart", "model=tiny_pixart", f"data.dataset.paths={tiny_pairs}")
    card = (out / "README.md").read_text()
    assert "load_lora_adapter" in card and "PixArtLoraTransformer2DModel" in card
