"""The tiny model zoo: every family builds, reloads into its real pipeline class, generates, and is seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from safetensors.torch import load_file

from diffusion_align.testing import (
    TINY_BUILDERS,
    TINY_PIPELINE_CLASSES,
    VIDEO_FAMILIES,
    build_tiny_cogvideox,
    build_tiny_pipeline,
    build_tiny_sd15,
    build_tiny_wan,
    tiny_call_kwargs,
)

FAMILIES = sorted(TINY_BUILDERS)
PROMPT = "a photo of a red cube on a blue sphere"
IMAGE_LATENT_CHANNELS = {"sd15": 4, "sdxl": 4, "sd3": 16, "flux": 16, "pixart": 4}


def _load(path: Path) -> DiffusionPipeline:
    pipeline = DiffusionPipeline.from_pretrained(path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def loaded_pipeline(tiny_pipeline_path):
    """``loaded_pipeline(family)``: the session's tiny pipeline, loaded by ``DiffusionPipeline`` once."""
    pipelines: dict[str, DiffusionPipeline] = {}

    def get(family: str) -> DiffusionPipeline:
        if family not in pipelines:
            pipelines[family] = _load(tiny_pipeline_path(family))
        return pipelines[family]

    return get


def _generate(pipeline: DiffusionPipeline, family: str, sample_size: int = 32) -> torch.Tensor:
    """Two denoising steps, fixed generator: images ``[1, 3, H, W]`` or frames ``[1, F, 3, H, W]``."""
    output = pipeline(
        PROMPT,
        num_inference_steps=2,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
        **tiny_call_kwargs(family, sample_size=sample_size),
    )
    return output.frames if family in VIDEO_FAMILIES else output.images


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every component of a saved pipeline, keyed ``component/file/tensor``."""
    files = sorted(path.glob("*/*.safetensors"))
    assert files, f"{path}: no safetensors weights found"
    return {f"{f.parent.name}/{f.name}/{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_reloads_into_its_pipeline_class_and_generates(family: str, loaded_pipeline) -> None:
    pipeline = loaded_pipeline(family)
    assert type(pipeline) is TINY_PIPELINE_CLASSES[family]

    output = _generate(pipeline, family)

    expected = (1, 9, 3, 32, 32) if family in VIDEO_FAMILIES else (1, 3, 32, 32)
    assert tuple(output.shape) == expected
    assert torch.isfinite(output).all()
    assert 0.0 <= output.min() and output.max() <= 1.0
    assert output.std() > 0, f"{family}: generated a constant output"


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_with_its_specific_pipeline_class(family: str, tiny_pipeline_path) -> None:
    pipeline = TINY_PIPELINE_CLASSES[family].from_pretrained(tiny_pipeline_path(family))

    assert type(pipeline) is TINY_PIPELINE_CLASSES[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoder_vocab_matches_its_tokenizer(family: str, loaded_pipeline) -> None:
    components = loaded_pipeline(family).components
    pairs = [
        (name, name.replace("tokenizer", "text_encoder"))
        for name in components
        if name.startswith("tokenizer")
    ]

    assert pairs, f"{family}: no tokenizer"
    for tokenizer_name, encoder_name in pairs:
        assert components[encoder_name].config.vocab_size == len(components[tokenizer_name]), encoder_name


@pytest.mark.parametrize("family", sorted(IMAGE_LATENT_CHANNELS))
def test_image_vae_maps_32px_to_an_8x8_latent(family: str, loaded_pipeline) -> None:
    vae = loaded_pipeline(family).vae
    images = torch.rand(2, 3, 32, 32) * 2 - 1

    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean

    assert tuple(latents.shape) == (2, IMAGE_LATENT_CHANNELS[family], 8, 8)


def test_family_specific_conditioning(loaded_pipeline) -> None:
    sdxl, sd3, flux = loaded_pipeline("sdxl"), loaded_pipeline("sd3"), loaded_pipeline("flux")

    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert (
        sdxl.unet.config.projection_class_embeddings_input_dim
        == 6 * 8 + sdxl.text_encoder_2.config.projection_dim
    )
    assert sdxl.tokenizer_2.pad_token == "!" and sdxl.tokenizer.pad_token == "<|endoftext|>"
    clip_widths = sd3.text_encoder.config.hidden_size + sd3.text_encoder_2.config.hidden_size
    assert sd3.text_encoder_3.config.d_model == sd3.transformer.config.joint_attention_dim == clip_widths
    assert flux.transformer.config.guidance_embeds is True
    assert flux.transformer.config.in_channels == 4 * flux.vae.config.latent_channels


def test_sd15_has_sd_scheduler_and_no_safety_checker(loaded_pipeline) -> None:
    pipeline = loaded_pipeline("sd15")
    config = pipeline.scheduler.config

    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert config.num_train_timesteps == 1000 and config.prediction_type == "epsilon"
    assert pipeline.vae.config.scaling_factor == 0.18215
    assert pipeline.safety_checker is None
    assert pipeline.text_encoder.config.max_position_embeddings == 77


def test_sd15_v_prediction_variant(tiny_pipeline_path) -> None:
    path = tiny_pipeline_path("sd15", prediction_type="v_prediction")

    training_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    pipeline = _load(path)

    assert training_scheduler.config.prediction_type == "v_prediction"
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    assert torch.isfinite(_generate(pipeline, "sd15")).all()


def test_sd15_benchmark_size(tiny_pipeline_path) -> None:
    path = tiny_pipeline_path("sd15", block_out_channels=(64, 128), sample_size=64)
    pipeline = _load(path)

    assert tuple(pipeline.unet.config.block_out_channels) == (64, 128)
    assert pipeline.unet.config.sample_size == 16
    assert tuple(_generate(pipeline, "sd15", sample_size=64).shape) == (1, 3, 64, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_gives_identical_weights(family: str, tiny_pipeline_path, tmp_path: Path) -> None:
    rng_before = torch.get_rng_state()

    rebuilt = build_tiny_pipeline(family, tmp_path / family, seed=0)

    assert torch.equal(torch.get_rng_state(), rng_before), "building must not move the global RNG"
    reference, again = _weights(tiny_pipeline_path(family)), _weights(rebuilt)
    assert reference.keys() == again.keys()
    assert all(torch.equal(reference[name], again[name]) for name in reference)


def test_different_seed_gives_different_weights(tiny_sd15_path: Path, tmp_path: Path) -> None:
    reference, other = _weights(tiny_sd15_path), _weights(build_tiny_sd15(tmp_path, seed=1))

    differing = [name for name in reference if not torch.equal(reference[name], other[name])]
    assert any(name.startswith("unet/") for name in differing)
    assert any(name.startswith("text_encoder/") for name in differing)
    assert any(name.startswith("vae/") for name in differing)


def test_unknown_family_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="'sd4'"):
        build_tiny_pipeline("sd4", tmp_path)
    with pytest.raises(KeyError, match="'sd4'"):
        tiny_call_kwargs("sd4")


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"prediction_type": "sample"}, "prediction_type"),
        ({"block_out_channels": (32,)}, "block_out_channels"),
        ({"block_out_channels": (32, 40)}, "block_out_channels"),
        ({"sample_size": 36}, "sample_size"),
    ],
)
def test_sd15_rejects_bad_arguments(kwargs: dict, culprit: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=culprit):
        build_tiny_sd15(tmp_path, **kwargs)


@pytest.mark.parametrize("builder", [build_tiny_wan, build_tiny_cogvideox])
def test_video_builders_reject_frame_counts_the_vae_cannot_compress(builder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_frames=8"):
        builder(tmp_path, num_frames=8)
    with pytest.raises(ValueError, match="sample_size=24"):
        builder(tmp_path, sample_size=24)
