"""Seeded generation: one seed per (prompt, sample) for every model; LoRA and full pipelines load as specified."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_align.evaluate.sampling import (
    MAX_SAMPLES_PER_PROMPT,
    ModelSpec,
    SamplingSettings,
    as_model_spec,
    call_arguments,
    generate,
    load_model,
    sample_seed,
    to_uint8,
)

JOBS = [(0, 0, "a red circle"), (0, 1, "a red circle"), (1, 0, "a blue square")]


def sample_all(pipeline, settings: SamplingSettings, spec: ModelSpec) -> dict[tuple[int, int], np.ndarray]:
    return {(i, k): pixels for i, k, pixels in generate(pipeline, JOBS, settings, spec)}


def test_seed_depends_on_prompt_and_sample_only():
    assert sample_seed(0, 0, 0) == 0 and sample_seed(0, 2, 3) == 2 * MAX_SAMPLES_PER_PROMPT + 3
    assert sample_seed(7, 1, 0) == 7 + MAX_SAMPLES_PER_PROMPT
    seeds = {sample_seed(0, i, k) for i in range(50) for k in range(10)}
    assert len(seeds) == 500


def test_same_seeds_same_images_whatever_the_batch_size(tiny_sd15_path):
    spec = ModelSpec(str(tiny_sd15_path))
    pipeline = load_model(spec, "cpu")
    one_by_one = sample_all(pipeline, SamplingSettings(num_inference_steps=2, batch_size=1), spec)
    batched = sample_all(pipeline, SamplingSettings(num_inference_steps=2, batch_size=3), spec)
    for key, pixels in one_by_one.items():
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        assert np.abs(pixels.astype(int) - batched[key]).max() <= 1, key  # float noise of batched matmuls only
    assert not np.array_equal(one_by_one[(0, 0)], one_by_one[(0, 1)])  # two samples of a prompt: two seeds


def test_lora_changes_the_images_and_scale_zero_restores_the_base(tiny_sd15_path, tiny_lora_dir):
    settings = SamplingSettings(num_inference_steps=2, batch_size=3)
    base_spec = ModelSpec(str(tiny_sd15_path))
    base = sample_all(load_model(base_spec, "cpu"), settings, base_spec)
    aligned_spec = ModelSpec(str(tiny_sd15_path), lora=str(tiny_lora_dir))
    aligned = sample_all(load_model(aligned_spec, "cpu"), settings, aligned_spec)
    off_spec = ModelSpec(str(tiny_sd15_path), lora=str(tiny_lora_dir), lora_scale=0.0)
    off = sample_all(load_model(off_spec, "cpu"), settings, off_spec)
    for key in base:
        assert np.abs(base[key].astype(int) - aligned[key]).mean() > 2.0, key
        assert np.abs(base[key].astype(int) - off[key]).max() <= 1, key


def test_missing_lora_file_is_named(tiny_sd15_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="no pytorch_lora_weights.safetensors"):
        load_model(ModelSpec(str(tiny_sd15_path), lora=str(tmp_path)), "cpu")


def test_specs_from_strings_and_mappings():
    assert as_model_spec("base", "some/pipeline") == ModelSpec("some/pipeline")
    spec = as_model_spec("aligned", {"pipeline": "p", "lora": "out", "lora_scale": 0.5})
    assert (spec.pipeline, spec.lora, spec.lora_scale) == ("p", "out", 0.5)
    with pytest.raises(ValueError, match="model name 'a b'"):
        as_model_spec("a b", "p")
    with pytest.raises(KeyError, match=r"models.x: unknown key\(s\) \['lora_path'\]"):
        as_model_spec("x", {"pipeline": "p", "lora_path": "out"})
    with pytest.raises(ValueError, match="models.x: no 'pipeline'"):
        as_model_spec("x", {"lora": "out"})


def test_call_arguments_merge_settings_then_model():
    settings = SamplingSettings(num_inference_steps=3, height=64, pipeline_kwargs={"eta": 0.0, "num_frames": 9})
    spec = ModelSpec("p", call_kwargs={"num_frames": 5})
    assert call_arguments(settings, spec) == {
        "num_inference_steps": 3, "guidance_scale": 5.0, "height": 64, "eta": 0.0, "num_frames": 5,
    }


def test_settings_and_outputs_are_checked():
    with pytest.raises(ValueError, match="samples_per_prompt=0"):
        SamplingSettings(samples_per_prompt=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        SamplingSettings(batch_size=0)
    assert to_uint8(np.array([[[[0.0, 0.5, 1.2]]]])).tolist() == [[[[0, 128, 255]]]]
    with pytest.raises(ValueError, match="expected"):
        to_uint8(np.zeros((2, 8, 8)))


def test_lora_of_another_architecture_is_refused_naming_the_file(tiny_lora_dir):
    from diffusion_align.adapters.lora import LoraMismatchError
    from diffusion_align.shapes import shipped_pipeline_path

    with pytest.raises(LoraMismatchError, match="pytorch_lora_weights.safetensors"):
        load_model(ModelSpec(str(shipped_pipeline_path()), lora=str(tiny_lora_dir)), "cpu")
