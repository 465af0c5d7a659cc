"""Candidate seeds, generator specs, and batched generation whose images depend on (prompt, seed) only."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_align.generate import PipelineSpec, candidate_seed, generate_media, load_pipeline


def test_candidate_seeds_are_stable_distinct_and_int64():
    seeds = {candidate_seed(base, i, name, k) for base in (0, 1) for i in range(20) for name in ("a", "b")
             for k in range(4)}
    assert len(seeds) == 2 * 20 * 2 * 4
    assert all(0 <= s < 2**63 for s in seeds)
    assert candidate_seed(0, 5, "a", 1) == candidate_seed(0, 5, "a", 1)
    assert candidate_seed(0, 5, "a", 1) != candidate_seed(0, 5, "a", "1.0")


def test_spec_validation_names_the_pipeline():
    with pytest.raises(ValueError, match=r"pipeline 'sd': call sets \['generator', 'prompt'\]"):
        PipelineSpec("sd", "x", {"prompt": "p", "generator": None})
    with pytest.raises(ValueError, match="pipeline 'sd': media 'audio'"):
        PipelineSpec("sd", "x", media="audio")
    with pytest.raises(ValueError, match="pipeline 'sd': dtype 'float33'"):
        PipelineSpec("sd", "x", dtype="float33")
    with pytest.raises(ValueError, match="pipeline 'sd': batch_size 0"):
        PipelineSpec("sd", "x", batch_size=0)
    with pytest.raises(ValueError, match="without '/'"):
        PipelineSpec("org/sd", "x")
    spec = PipelineSpec("sd", "x", {"num_inference_steps": 3}, batch_size=8)
    assert spec.describe() == {"name": "sd", "path": "x", "call": {"num_inference_steps": 3}, "media": "image",
                               "dtype": "float32"}


@pytest.fixture(scope="module")
def sd15(image_specs):
    return image_specs[0], load_pipeline(image_specs[0], "cpu")


def test_an_image_depends_on_its_prompt_and_seed_not_its_batch(sd15):
    spec, pipeline = sd15
    batch = generate_media(pipeline, spec, ["a red circle", "a blue square", "a red circle"], [7, 8, 9])
    assert [image.shape for image in batch] == [(32, 32, 3)] * 3 and batch[0].dtype == np.uint8
    (alone,) = generate_media(pipeline, spec, ["a red circle"], [9])
    np.testing.assert_array_equal(alone, batch[2])
    assert not np.array_equal(batch[0], batch[2])  # same prompt, other seed


def test_wrong_media_is_an_error_naming_the_pipeline(sd15):
    spec, pipeline = sd15
    as_video = PipelineSpec(spec.name, spec.path, spec.call, media="video")
    with pytest.raises(ValueError, match=r"pipeline 'tiny_sd15' \(StableDiffusionPipeline\) returned \[1, 32, 32, 3\]"):
        generate_media(pipeline, as_video, ["a cat"], [1])
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        generate_media(pipeline, spec, ["a", "b"], [1])
