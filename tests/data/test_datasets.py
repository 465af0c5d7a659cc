"""Pairwise Parquet reading: hand-made rows -> exact items; bad rows -> errors naming file, row and field."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from diffusion_align.data import (
    DataFormatError,
    PairwiseParquetDataset,
    UnpairedDataset,
    collate_preference,
    load_pickapic_compatible,
)
from diffusion_align.testing.data import (
    normalized_colour,
    pairwise_row,
    solid_image,
    write_pairwise_rows,
    write_table,
)
from diffusion_align.types import PreferenceBatch

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _colour(pixels: torch.Tensor) -> list[float]:
    """The per-channel value of a solid-colour candidate ``[3, H, W]``."""
    assert torch.equal(pixels, pixels[:, :1, :1].expand_as(pixels)), "candidate is not a single colour"
    return pixels[:, 0, 0].tolist()


def _assert_colours(item: dict, colours: tuple) -> None:
    for candidate, colour in zip(item["pixel_values"], colours):
        assert _colour(candidate) == pytest.approx(normalized_colour(colour).tolist(), abs=0)


@pytest.fixture
def three_rows(tmp_path):
    """Row 0: jpg_0 wins; row 1: jpg_1 wins (swap); row 2: tie."""
    rows = [
        pairwise_row("first", 1.0, (RED, GREEN), ps_score_0=2.0, ps_score_1=1.0),
        pairwise_row("second", 0.0, (BLUE, WHITE), ps_score_0=3.0, ps_score_1=4.0),
        pairwise_row("", 0.5, (GREEN, BLUE), ps_score_0=5.0, ps_score_1=5.0),
    ]
    return write_pairwise_rows(tmp_path / "pairs.parquet", rows)


def test_winner_first_swap_and_default_tie_drop(three_rows):
    dataset = PairwiseParquetDataset(three_rows, resolution=16, hflip=False, score_prefix="ps_score")
    assert len(dataset) == 2 and dataset.num_ties_dropped == 1
    first, second = dataset[0], dataset[1]
    assert (first["index"], first["prompt"], second["prompt"]) == (0, "first", "second")
    _assert_colours(first, (RED, GREEN))
    _assert_colours(second, (WHITE, BLUE))  # label_0 == 0: jpg_1 first
    assert first["label"].item() == 1.0 and second["label"].item() == 1.0
    assert first["scores"].tolist() == [2.0, 1.0] and second["scores"].tolist() == [4.0, 3.0]
    assert first["pixel_values"].shape == (2, 3, 16, 16)
    assert dataset.locate(1) == (three_rows, 1)


def test_tie_policies_half_and_smooth(three_rows):
    half = PairwiseParquetDataset(three_rows, resolution=16, hflip=False, tie_policy="half")
    assert len(half) == 3 and [half[i]["label"].item() for i in range(3)] == [1.0, 1.0, 0.5]
    _assert_colours(half[2], (GREEN, BLUE))  # a tie keeps the file order
    assert half[2]["prompt"] == ""  # an empty caption is a valid caption
    smooth = PairwiseParquetDataset(three_rows, resolution=16, tie_policy="smooth", label_smoothing=0.1)
    assert [smooth[i]["label"].item() for i in range(3)] == pytest.approx([0.9, 0.9, 0.5])
    with pytest.raises(ValueError, match="label_smoothing"):
        PairwiseParquetDataset(three_rows, resolution=16, tie_policy="drop", label_smoothing=0.1)


def test_prompt_dropout_is_fixed_by_seed_epoch_index(tiny_pairs):
    dataset = PairwiseParquetDataset(tiny_pairs, resolution=16, proportion_empty_prompts=0.5, seed=5)
    captions = PairwiseParquetDataset(tiny_pairs, resolution=16)
    per_epoch = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        prompts = [dataset[i]["prompt"] for i in range(len(dataset))]
        assert prompts == [dataset[i]["prompt"] for i in range(len(dataset))]
        assert all(p in ("", captions[i]["prompt"]) for i, p in enumerate(prompts))
        per_epoch.append(prompts)
    assert any("" in p for p in per_epoch) and len({tuple(p) for p in per_epoch}) > 1


def test_augmentation_replays_per_epoch(tiny_pairs):
    dataset = PairwiseParquetDataset(tiny_pairs, resolution=16, random_crop=True)
    dataset.set_epoch(4)
    first = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
    again = PairwiseParquetDataset(tiny_pairs, resolution=16, random_crop=True)
    again.set_epoch(4)
    assert torch.equal(first, torch.stack([again[i]["pixel_values"] for i in range(len(again))]))
    again.set_epoch(5)
    assert not torch.equal(first, torch.stack([again[i]["pixel_values"] for i in range(len(again))]))


def test_tiny_dataset_over_two_files_and_glob(tiny_pairs):
    dataset = PairwiseParquetDataset(
        str(tiny_pairs[0].parent / "*.parquet"), resolution=16, check_images=True
    )
    assert len(dataset) == 14 and dataset.num_ties_dropped == 2 and dataset.bad_rows.total == 0
    assert {dataset.locate(i)[0] for i in range(len(dataset))} == set(tiny_pairs)
    assert len(PairwiseParquetDataset(tiny_pairs[0].parent, resolution=16, max_rows=5)) == 5
    with pytest.raises(FileNotFoundError, match="no files match"):
        PairwiseParquetDataset(str(tiny_pairs[0].parent / "nothing-*.parquet"), resolution=16)


def test_dataloader_with_workers_gives_preference_batches(tiny_pairs):
    dataset = PairwiseParquetDataset(tiny_pairs, resolution=16, score_prefix="ps_score")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_preference)
    batches = list(loader)
    assert all(isinstance(b, PreferenceBatch) for b in batches)
    assert torch.cat([b.index for b in batches]).tolist() == list(range(len(dataset)))
    assert batches[0].pixel_values.shape == (4, 2, 3, 16, 16) and batches[0].scores.shape == (4, 2)
    assert torch.equal(batches[1].pixel_values[0], dataset[4]["pixel_values"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (pairwise_row("x", 0.7), r"row 3 field 'label_0': expected 0, 0.5 or 1, got 0.7"),
        (pairwise_row("x", float("nan")), r"row 3 field 'label_0': expected 0, 0.5 or 1, got NaN"),
        (pairwise_row("x", None), r"row 3 field 'label_0': expected 0, 0.5 or 1, got null"),
        (pairwise_row(None, 1.0), r"row 3 field 'caption': expected a string \(empty allowed\), got null"),
        (pairwise_row("x", 1.0, label_1=1.0), r"row 3 field 'label_1': expected 1 - label_0 = 0.0, got 1.0"),
        (
            pairwise_row("x", 1.0, ps_score_0=float("inf"), ps_score_1=0.0),
            r"row 3 field 'ps_score_0': expected a finite",
        ),
    ],
)
def test_bad_rows_name_file_row_field(tmp_path, row, message):
    good = [pairwise_row("ok", 1.0, ps_score_0=1.0, ps_score_1=0.0) for _ in range(3)]
    bad = {"ps_score_0": 1.0, "ps_score_1": 0.0, **row}
    path = write_pairwise_rows(tmp_path / "train-00001.parquet", [*good, bad, *good])
    with pytest.raises(DataFormatError, match=rf"^{tmp_path}/train-00001.parquet {message}"):
        PairwiseParquetDataset(path, resolution=16, score_prefix="ps_score")


def test_missing_column_error_lists_present_columns(tmp_path):
    path = write_table(tmp_path / "x.parquet", [{"caption": "a", "jpg_0": b"1", "jpg_1": b"2"}])
    with pytest.raises(DataFormatError, match=r"missing column 'label_0' .*present: caption, jpg_0, jpg_1\)"):
        PairwiseParquetDataset(path, resolution=16)


def test_corrupt_and_truncated_images_name_file_row_field(tmp_path):
    jpeg = solid_image(RED, "JPEG")
    rows = [pairwise_row("ok", 1.0) for _ in range(5)]
    rows[2]["jpg_1"] = jpeg[:20] + bytes(reversed(jpeg[20:200])) + jpeg[200:]
    rows[4]["jpg_0"] = jpeg[: len(jpeg) // 3]
    path = write_pairwise_rows(tmp_path / "c.parquet", rows)
    dataset = PairwiseParquetDataset(path, resolution=16)  # images are decoded when read
    dataset[0]
    with pytest.raises(
        DataFormatError, match=rf"^{path} row 2 field 'jpg_1': expected JPEG, PNG or WebP bytes"
    ):
        dataset[2]
    with pytest.raises(
        DataFormatError, match=rf"^{path} row 4 field 'jpg_0': expected JPEG, PNG or WebP bytes"
    ):
        dataset[4]
    with pytest.raises(DataFormatError, match=rf"^{path} row 2 field 'jpg_1'"):
        PairwiseParquetDataset(path, resolution=16, check_images=True)


def test_skip_mode_counts_rows_per_reason(tmp_path):
    rows = [
        pairwise_row("ok", 1.0),
        pairwise_row("ok", 0.7),
        pairwise_row(None, 0.0),
        pairwise_row("ok", 0.3),
        pairwise_row("ok", 0.0),
        pairwise_row("ok", 0.5),
        pairwise_row("ok", 1.0),
    ]
    rows[6]["jpg_0"] = b"\xff\xd8\xff truncated"
    path = write_pairwise_rows(tmp_path / "s.parquet", rows)
    dataset = PairwiseParquetDataset(path, resolution=16, on_bad_row="skip", check_images=True, hflip=False)
    assert len(dataset) == 2 and [dataset.locate(i)[1] for i in range(2)] == [0, 4]
    assert dataset.num_ties_dropped == 1
    assert dataset.bad_rows.counts == {
        "label_0: not in {0, 0.5, 1}": 2,
        "caption: null": 1,
        "jpg_0: undecodable image": 1,
    }
    assert dataset.bad_rows.total == 4 and f"{path} row 1 field 'label_0'" in dataset.bad_rows.examples[0]
    with pytest.raises(ValueError, match="on_bad_row 'ignore'"):
        PairwiseParquetDataset(path, resolution=16, on_bad_row="ignore")


def test_error_rows_are_counted_per_file(tmp_path):
    write_pairwise_rows(tmp_path / "a-0.parquet", [pairwise_row("ok", 1.0)] * 5)
    write_pairwise_rows(tmp_path / "a-1.parquet", [pairwise_row("ok", 1.0)] * 4 + [pairwise_row("ok", 0.25)])
    with pytest.raises(DataFormatError, match=r"a-1.parquet row 4 field 'label_0'"):
        PairwiseParquetDataset(str(tmp_path / "a-*.parquet"), resolution=16)


def test_unpaired_view_for_kto(three_rows):
    pairs = PairwiseParquetDataset(three_rows, resolution=16, hflip=False, score_prefix="ps_score")
    unpaired = UnpairedDataset(pairs)
    assert len(unpaired) == 4
    items = [unpaired[j] for j in range(4)]
    assert [it["desirable"].tolist() for it in items] == [[True], [False], [True], [False]]
    assert [it["index"] for it in items] == [0, 1, 2, 3] and items[3]["prompt"] == "second"
    assert torch.equal(items[3]["pixel_values"][0], pairs[1]["pixel_values"][1])
    assert items[2]["scores"].tolist() == [4.0] and "label" not in items[0]
    batch = collate_preference(items)
    assert batch.pixel_values.shape == (4, 1, 3, 16, 16) and batch.desirable.shape == (4, 1)
    with pytest.raises(ValueError, match="source item 2 is a tie"):
        UnpairedDataset(PairwiseParquetDataset(three_rows, resolution=16, tie_policy="half"))[5]


def test_datasets_library_reads_our_files(tiny_pairs, tmp_path):
    loaded = load_pickapic_compatible(tiny_pairs, cache_dir=tmp_path / "hf")
    assert loaded.num_rows == 16 and loaded[0]["jpg_0"][:2] in (b"\xff\xd8", b"\x89P", b"RI")
    assert sorted(set(loaded["label_0"])) == [0.0, 0.5, 1.0]


def test_pickapic_compatible_checks_every_file_and_names_the_bad_one(tmp_path):
    """``datasets`` would merge a later file's missing or mistyped ``label_0`` silently, and never checks values."""
    good = [pairwise_row("a", 1.0), pairwise_row("b", 0.0)]
    cases = {
        "missing": (
            [{k: v for k, v in row.items() if k != "label_0"} for row in good],
            r"missing column 'label_0'",
        ),
        "strings": (
            [{**row, "label_0": str(row["label_0"])} for row in good],
            r"field 'label_0': expected a float or integer column, got string",
        ),
        "integers": (
            [{**row, "label_0": int(row["label_0"])} for row in good],
            r"field 'label_0': datasets reads Value\('int64'\), expected Value\(float64 or float32\)",
        ),
        "no_label_1": (
            [{k: v for k, v in row.items() if k != "label_1"} for row in good],
            r"columns differ from the first file .*a-0.parquet: 'label_1' absent here, Value\('float64'\) there; "
            r"expected the same columns and types in every file",
        ),
        "value": (
            [good[0], pairwise_row("c", 2.0, label_1=-1.0)],
            r"row 1 field 'label_0': expected 0, 0.5 or 1, got 2.0",
        ),
    }
    for name, (rows, message) in cases.items():
        write_table(tmp_path / name / "a-0.parquet", good)
        bad = write_table(tmp_path / name / "a-1.parquet", rows)
        with pytest.raises(DataFormatError, match=rf"^{bad}( |: ){message}"):
            load_pickapic_compatible(tmp_path / name, cache_dir=tmp_path / "hf")
    loaded = load_pickapic_compatible([tmp_path / "value" / "a-0.parquet"] * 2, cache_dir=tmp_path / "hf")
    assert list(loaded["label_0"]) == [1.0, 0.0]


def test_negative_max_rows_is_refused(three_rows):
    with pytest.raises(
        ValueError, match=r"max_rows -1: expected None \(all items\) or a non-negative number"
    ):
        PairwiseParquetDataset(three_rows, resolution=16, max_rows=-1)
    assert len(PairwiseParquetDataset(three_rows, resolution=16, max_rows=0)) == 0


def test_image_struct_columns_are_read(tmp_path):
    """``datasets.Image`` writes struct<bytes, path> cells; they read like binary cells."""
    rows = [pairwise_row("s", 0.0, (RED, BLUE))]
    rows[0]["jpg_0"] = {"bytes": rows[0]["jpg_0"], "path": None}
    rows[0]["jpg_1"] = {"bytes": rows[0]["jpg_1"], "path": "b.png"}
    dataset = PairwiseParquetDataset(write_table(tmp_path / "hf.parquet", rows), resolution=8, hflip=False)
    _assert_colours(dataset[0], (BLUE, RED))
