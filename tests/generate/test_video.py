"""Video: K clips per prompt scored per frame and ranked, and DenseDPO-style pairs on the tiny Wan pipeline with
per-segment labels that the video-pair reader takes and `diffalign train method=densedpo` trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_align.data import VideoPairDataset
from diffusion_align.data.formats import decode_video
from diffusion_align.generate import (
    DenseSettings,
    PairSelection,
    PipelineSpec,
    generate_dataset,
    generate_dense_video_pairs,
    segment_frame_ranges,
)
from diffusion_align.generate.ranking import combine
from generate.helpers import PROMPTS, load_train_cli, read_table

train_cli = load_train_cli()
FRAME_CALL = {"height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": 1.0}


@pytest.fixture(scope="module")
def wan_spec(tiny_pipeline_path) -> PipelineSpec:
    return PipelineSpec("tiny_wan", str(tiny_pipeline_path("wan")), {**FRAME_CALL, "num_frames": 9}, media="video",
                        batch_size=2)


def test_segments_follow_the_trainers_latent_split():
    assert segment_frame_ranges(9, 3, 4) == [(0, 1), (1, 5), (5, 9)]
    assert segment_frame_ranges(9, 2, 4) == [(0, 5), (5, 9)]  # latent frames [0, 1] and [2]
    assert segment_frame_ranges(13, 2, 4) == [(0, 5), (5, 13)]
    assert segment_frame_ranges(6, 4, 1) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    with pytest.raises(ValueError, match="segments 4: expected 1 .. 3"):
        segment_frame_ranges(9, 4, 4)
    with pytest.raises(ValueError, match="needs 4k \\+ 1"):
        segment_frame_ranges(8, 2, 4)
    with pytest.raises(ValueError, match="dense.refiner 'NoSuchPipeline'"):
        DenseSettings("NoSuchPipeline")
    with pytest.raises(ValueError, match="set dense.strength instead"):
        DenseSettings("WanVideoToVideoPipeline", refine_call={"strength": 0.3})
    with pytest.raises(ValueError, match=r"dense.strength 0: expected a value in \(0, 1\]"):
        DenseSettings("WanVideoToVideoPipeline", strength=0)


def test_clips_are_scored_per_frame_ranked_and_paired(wan_spec, tiny_ensemble, tmp_path):
    out = tmp_path / "clips"
    summary = generate_dataset(PROMPTS[:1], [wan_spec], tiny_ensemble, out, images_per_prompt=2,
                               pairs=PairSelection("best_vs_worst"), progress=False)
    assert summary.complete and summary.candidates == 2
    ranked = read_table(out, "ranked").to_pylist()
    assert sorted(row["rank"] for row in ranked) == [0, 1]
    for row in ranked:
        assert decode_video(row["video"], "ranked", 0, "video").shape == (9, 32, 32, 3)
        for name in ("pickscore", "clip_score"):
            assert len(row[f"frame_score_{name}"]) == 9
            assert row[f"score_{name}"] == pytest.approx(np.mean(row[f"frame_score_{name}"]), rel=1e-6)
    pairs = VideoPairDataset(out / "pairs", resolution=32, num_frames=9, tie_policy="half", check_images=True)
    assert len(pairs) == 1 and pairs[0]["pixel_values"].shape == (2, 9, 3, 32, 32)


@pytest.fixture(scope="module")
def dense_pairs(wan_spec, tiny_ensemble, tmp_path_factory):
    settings = DenseSettings("WanVideoToVideoPipeline", strength=0.5, segments=3,
                             refine_call={**FRAME_CALL, "num_inference_steps": 4})
    out = tmp_path_factory.mktemp("dense") / "dense"
    summary = generate_dense_video_pairs(PROMPTS[:2], wan_spec, tiny_ensemble, out, settings, progress=False)
    assert summary.complete and (summary.prompts, summary.candidates, summary.pairs) == (2, 4, 2)
    return out


def test_dense_pairs_carry_segment_labels_from_per_frame_scores(dense_pairs, tiny_ensemble):
    rows = read_table(dense_pairs, "dense_pairs").to_pylist()
    ranges = segment_frame_ranges(9, 3, 4)
    for row in rows:
        clips = [decode_video(row[f"video_{c}"], "dense", 0, f"video_{c}") for c in (0, 1)]
        assert not np.array_equal(clips[0], clips[1])  # same reference, different noise
        frames = [Image.fromarray(frame) for clip in clips for frame in clip]
        per_frame = combine(tiny_ensemble, tiny_ensemble.score_all(frames, [row["caption"]] * 18))
        expected = [[float(per_frame[9 * c + a : 9 * c + b].mean()) for a, b in ranges] for c in (0, 1)]
        np.testing.assert_allclose([row["segment_score_0"], row["segment_score_1"]], expected, rtol=1e-5, atol=1e-6)
        labels = [0.5 if a == b else float(a > b) for a, b in zip(row["segment_score_0"], row["segment_score_1"])]
        assert row["segment_label_0"] == labels
        assert row["label_0"] == float(row["score_0"] > row["score_1"]) and row["label_1"] == 1 - row["label_0"]
        assert row["seed_0"] != row["seed_1"] != row["reference_seed"]


def test_dense_pairs_are_read_by_the_video_pair_reader_and_train_densedpo(dense_pairs, tmp_path):
    pairs = VideoPairDataset(dense_pairs / "dense_pairs", resolution=32, num_frames=9, tie_policy="half",
                             check_images=True)
    item = pairs[0]
    assert item["pixel_values"].shape == (2, 9, 3, 32, 32) and item["segment_label"].shape == (3,)
    assert torch.all((item["segment_label"] == 0) | (item["segment_label"] == 0.5) | (item["segment_label"] == 1))
    out = train_cli(tmp_path / "densedpo", "model=tiny_wan", "method=densedpo", "data=video_pairs",
                    f"data.dataset.paths={dense_pairs / 'dense_pairs'}", "data.dataset.tie_policy=half",
                    "data.loader.num_workers=0", "data.loader.pin_memory=false")
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert "Non-finite steps skipped: 0" in (out / "README.md").read_text()
