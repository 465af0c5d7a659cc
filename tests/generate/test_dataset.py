"""generate_dataset end to end: two tiny pipelines and a tiny reward ensemble; the ranked table and the pairs read
back by ``datasets`` and by the trainer's readers (training on them: test_train_on_generated.py)."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_align.data import PairwiseParquetDataset, RankedParquetDataset
from diffusion_align.data.datasets import load_pickapic_compatible
from diffusion_align.generate import candidate_seed, generate_media, load_pipeline, prompt_id
from generate.helpers import PROMPTS, read_table


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_ranked_table_holds_every_candidate_scored_and_ranked(generated, tiny_ensemble):
    ranked = read_table(generated, "ranked").to_pylist()
    assert len(ranked) == len(PROMPTS) * 4
    for index, prompt in enumerate(PROMPTS):
        group = [row for row in ranked if row["prompt_id"] == prompt_id(index)]
        assert [row["candidate"] for row in group] == [0, 1, 2, 3]
        assert {row["prompt"] for row in group} == {prompt} and {row["prompt_index"] for row in group} == {index}
        assert [(row["generator"], row["seed"]) for row in group] == [
            (name, candidate_seed(0, index, name, k)) for name in ("tiny_sd15", "tiny_sdxl") for k in (0, 1)]
        raw = {name: torch.tensor([row[f"score_{name}"] for row in group]) for name in ("pickscore", "clip_score")}
        torch.testing.assert_close(torch.tensor([row["score"] for row in group], dtype=torch.float64),
                                   tiny_ensemble.combine(raw).double(), rtol=1e-6, atol=1e-6)
        by_rank = sorted(group, key=lambda row: row["rank"])
        assert [row["rank"] for row in by_rank] == [0, 1, 2, 3]
        assert [row["score"] for row in by_rank] == sorted((row["score"] for row in group), reverse=True)
        assert all(decode(row["image"]).shape == (32, 32, 3) for row in group)


def test_a_recorded_seed_reproduces_its_image_alone(generated, image_specs):
    """The stored image came from a batch of 3; regenerated alone from (prompt, seed) it is the same, pixel for pixel."""
    spec = image_specs[1]
    row = next(r for r in read_table(generated, "ranked").to_pylist()
               if r["prompt_id"] == prompt_id(2) and r["generator"] == spec.name and r["candidate"] == 3)
    (pixels,) = generate_media(load_pipeline(spec, "cpu"), spec, [PROMPTS[2]], [row["seed"]])
    np.testing.assert_array_equal(pixels, decode(row["image"]))


def test_pairs_view_is_pickapic_for_datasets_and_our_reader(generated):
    loaded = load_pickapic_compatible(generated / "pairs")
    assert loaded.num_rows == len(PROMPTS) * 6  # all pairs of 4 candidates
    for row in loaded:
        assert row["label_1"] == 1.0 - row["label_0"]
        expected = 0.5 if row["score_0"] == row["score_1"] else float(row["score_0"] > row["score_1"])
        assert row["label_0"] == expected and row["rank_0"] != row["rank_1"]
    pairs = PairwiseParquetDataset(generated / "pairs", resolution=32, score_prefix="score", check_images=True)
    assert len(pairs) == loaded.num_rows - sum(row["label_0"] == 0.5 for row in loaded)
    item = pairs[0]
    assert item["pixel_values"].shape == (2, 3, 32, 32) and item["scores"][0] > item["scores"][1]


def test_ranked_view_reads_with_datasets_and_our_reader(generated):
    loaded = datasets.load_dataset("parquet", data_files=str(generated / "ranked" / "*.parquet"), split="train")
    assert loaded.num_rows == 12 and loaded.features["image"].dtype == "binary"
    ranked = RankedParquetDataset(generated / "ranked", resolution=32, check_images=True)
    assert len(ranked) == len(PROMPTS) and [ranked.prompt_id(i) for i in range(3)] == [prompt_id(i) for i in range(3)]
    item = ranked[0]
    assert item["pixel_values"].shape == (4, 3, 32, 32)
    assert torch.all(item["scores"][:-1] >= item["scores"][1:])  # best first


def test_summary_markers_and_card_describe_the_dataset(generated):
    markers = [json.loads(p.read_text()) for p in sorted((generated / "shards").glob("*.json"))]
    assert [m["prompts"] for m in markers] == [[0, 2], [2, 3]]
    assert [m["rows"] for m in markers] == [{"ranked": 8, "pairs": 12}, {"ranked": 4, "pairs": 6}]
    scores = np.array(read_table(generated, "ranked")["score_pickscore"].to_pylist())
    stats = [m["stats"]["scores"]["score_pickscore"] for m in markers]
    assert sum(s["n"] for s in stats) == 12 and sum(s["sum"] for s in stats) == pytest.approx(scores.sum())
    card = (generated / "README.md").read_text()
    assert "config_name: ranked\n  data_files: ranked/*.parquet" in card
    assert "prompts 3   candidates 12   pairs 18" in card
    assert '"images_per_prompt": 2' in card and "tiny_sdxl" in card
    manifest = json.loads((generated / "manifest.json").read_text())
    assert manifest["config"]["pipelines"][1]["call"] == {"num_inference_steps": 1, "guidance_scale": 1.0}
