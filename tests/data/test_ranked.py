"""Ranked table: rows grouped by prompt_id across files, candidates ordered by rank, group checks."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from diffusion_align.data import DataFormatError, RankedParquetDataset, collate_preference
from diffusion_align.testing.data import RANKED_TEST_SCHEMA, normalized_colour, solid_image, write_table

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def _row(
    prompt_id: str, rank: int, score: float, colour=(0, 0, 0), prompt: str | None = None, **extra
) -> dict:
    row = {
        "prompt_id": prompt_id,
        "prompt": prompt if prompt is not None else f"prompt {prompt_id}",
        "image": solid_image(colour),
        "generator": "g",
        "seed": rank,
        "score": score,
        "rank": rank,
        "score_pickscore": score,
        "score_hps": 0.0,
    }
    row.update(extra)
    return row


def test_groups_span_files_and_are_ordered_by_rank(tmp_path):
    rows = [
        _row("b", 2, 0.1, COLOURS[2]),
        _row("a", 1, 0.5, COLOURS[1]),
        _row("b", 0, 0.9, COLOURS[0]),
        _row("a", 0, 0.8, COLOURS[3]),
    ]
    write_table(tmp_path / "r-0.parquet", rows, RANKED_TEST_SCHEMA)
    write_table(
        tmp_path / "r-1.parquet",
        [_row("a", 2, 0.2, COLOURS[0]), _row("b", 1, 0.3, COLOURS[3])],
        RANKED_TEST_SCHEMA,
    )
    dataset = RankedParquetDataset(tmp_path, resolution=8, hflip=False)
    assert len(dataset) == 2 and [dataset.prompt_id(i) for i in range(2)] == ["b", "a"]  # order of first rows
    item = dataset[0]
    assert item["prompt"] == "prompt b" and item["scores"].tolist() == pytest.approx([0.9, 0.3, 0.1])
    colours = [c[:, 0, 0].tolist() for c in item["pixel_values"]]
    assert colours == [normalized_colour(c).tolist() for c in (COLOURS[0], COLOURS[3], COLOURS[2])]
    assert "label" not in item
    top2 = RankedParquetDataset(tmp_path, resolution=8, k=2, score_column="score_pickscore")
    assert top2[1]["scores"].tolist() == pytest.approx([0.8, 0.5]) and top2[1]["pixel_values"].shape == (
        2,
        3,
        8,
        8,
    )


def test_tiny_ranked_writer_round_trip(tiny_ranked):
    dataset = RankedParquetDataset(tiny_ranked, resolution=16, check_images=True)
    assert len(dataset) == 4 and dataset.bad_rows.total == 0
    table = pq.read_table(tiny_ranked[0]).to_pylist() + pq.read_table(tiny_ranked[1]).to_pylist()
    for index in range(4):
        group = sorted(
            (r for r in table if r["prompt_id"] == dataset.prompt_id(index)), key=lambda r: r["rank"]
        )
        assert dataset[index]["scores"].tolist() == pytest.approx([r["score"] for r in group])
        assert dataset[index]["scores"].tolist() == sorted(dataset[index]["scores"].tolist(), reverse=True)
    batch = collate_preference([dataset[0], dataset[1]])
    assert (
        batch.pixel_values.shape == (2, 4, 3, 16, 16) and batch.scores.shape == (2, 4) and batch.label is None
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([_row("a", 0, 1.0), _row("a", 0, 0.5)], r"row 0 field 'rank': prompt_id 'a' has ranks \[0, 0\]"),
        (
            [_row("a", 0, 1.0), _row("a", 1, 0.5, prompt="other")],
            r"row 0 field 'prompt': prompt_id 'a' has different prompts",
        ),
        (
            [_row("a", 0, 1.0), _row("a", 1, 0.5), _row("b", 0, 1.0)],
            r"row 2 field 'prompt_id': prompt_id 'b' has 1 rows, "
            r"expected 2 \(as the first group\)",
        ),
        (
            [_row("a", 0, 1.0), _row("a", 1, float("nan"))],
            r"row 1 field 'score': expected a finite number, got nan",
        ),
        (
            [_row("a", 0, 1.0), _row("a", 1, 0.5, score_hps=None)],
            r"row 1 field 'score_hps': expected a finite number",
        ),
        (
            [_row("a", 0, 1.0), {**_row("a", 1, 0.5), "prompt_id": None}],
            r"row 1 field 'prompt_id': expected a prompt id",
        ),
        (
            [_row("a", 0, 1.0), _row("a", -1, 0.5)],
            r"row 1 field 'rank': expected a non-negative integer, got -1",
        ),
    ],
)
def test_bad_groups_and_rows_name_file_row_field(tmp_path, rows, message):
    path = write_table(tmp_path / "bad.parquet", rows, RANKED_TEST_SCHEMA)
    with pytest.raises(DataFormatError, match=rf"^{path} {message}"):
        RankedParquetDataset(path, resolution=8)


def test_k_larger_than_a_group_and_missing_score_column(tmp_path):
    path = write_table(tmp_path / "r.parquet", [_row("a", 0, 1.0), _row("a", 1, 0.5)], RANKED_TEST_SCHEMA)
    with pytest.raises(DataFormatError, match="prompt_id 'a' has 2 rows, expected at least 3"):
        RankedParquetDataset(path, resolution=8, k=3)
    with pytest.raises(DataFormatError, match="missing column 'score_mps'"):
        RankedParquetDataset(path, resolution=8, score_column="score_mps")


def test_score_column_must_be_score_or_score_prefixed(tmp_path):
    """Per-reward columns are ``score_<reward>``: another column name is refused before any file is read."""
    schema = RANKED_TEST_SCHEMA.append(pa.field("pickscore", pa.float64()))
    path = write_table(tmp_path / "r.parquet", [_row("a", 0, 1.0, pickscore=1.0)], schema)
    with pytest.raises(
        ValueError, match=r"score_column 'pickscore': expected 'score' \(the ensemble\) or a 'score_<reward>'"
    ):
        RankedParquetDataset(path, resolution=8, score_column="pickscore")
    prefixed = RankedParquetDataset(path, resolution=8, score_column="score_pickscore")
    assert prefixed[0]["scores"].tolist() == [1.0]
    with pytest.raises(
        ValueError, match=r"max_rows -2: expected None \(all items\) or a non-negative number"
    ):
        RankedParquetDataset(path, resolution=8, max_rows=-2)


def test_skip_mode_drops_whole_groups(tmp_path):
    rows = [
        _row("a", 0, 1.0),
        _row("a", 1, 0.5),
        _row("b", 0, 1.0),
        _row("b", 1, float("nan")),
        _row("c", 0, 1.0),
        _row("c", 0, 0.2),
        _row("d", 0, 1.0),
        _row("d", 1, 0.0),
    ]
    rows[7]["image"] = b"\x89PNG broken"
    path = write_table(tmp_path / "r.parquet", rows, RANKED_TEST_SCHEMA)
    dataset = RankedParquetDataset(path, resolution=8, on_bad_row="skip", check_images=True)
    assert len(dataset) == 1 and dataset.prompt_id(0) == "a"
    assert dataset.bad_rows.counts == {
        "score: not finite": 1,
        "prompt_id: group has a bad row": 1,
        "rank: not 0 .. n-1": 2,
        "image: undecodable image": 2,
    }
    assert torch.isfinite(dataset[0]["scores"]).all()


def test_datasets_library_reads_ranked_files(tiny_ranked, tmp_path):
    import datasets

    loaded = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in tiny_ranked], split="train", cache_dir=str(tmp_path / "hf")
    )
    assert loaded.num_rows == 16 and sorted(set(loaded["rank"])) == [0, 1, 2, 3]
