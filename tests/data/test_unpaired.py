"""The unpaired view for Diffusion-KTO: the authors' per-image labels (each image once), or one label per pair."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from torch.utils.data import TensorDataset

from diffusion_align.data import PairwiseParquetDataset, UnpairedDataset, collate_preference
from diffusion_align.testing.data import (
    PAIRWISE_TEST_SCHEMA,
    normalized_colour,
    pairwise_row,
    write_pairwise_rows,
    write_table,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
UID_SCHEMA = PAIRWISE_TEST_SCHEMA.append(pa.field("image_0_uid", pa.string())).append(
    pa.field("image_1_uid", pa.string())
)


def _rows(**uids) -> list[dict]:
    """RED wins row 0 and loses row 1; GREEN loses rows 0 and 2; BLUE and WHITE only win."""
    return [
        pairwise_row("red or green", 1.0, (RED, GREEN), **uids.get("row0", {})),
        pairwise_row("blue or red", 1.0, (BLUE, RED), **uids.get("row1", {})),
        pairwise_row("green or white", 0.0, (GREEN, WHITE), **uids.get("row2", {})),
    ]


def _colour(item: dict) -> tuple[int, ...]:
    """The solid colour of a single-image item, as the RGB triple it was written with."""
    pixels = item["pixel_values"][0]
    for colour in (RED, GREEN, BLUE, WHITE):
        if torch.equal(pixels, torch.tensor(normalized_colour(colour))[:, None, None].expand_as(pixels)):
            return colour
    raise AssertionError("not one of the test colours")


def _labels(view: UnpairedDataset) -> list[tuple[tuple[int, ...], bool]]:
    return [(_colour(view[j]), bool(view[j]["desirable"])) for j in range(len(view))]


def test_per_image_labels_each_image_once_as_the_authors_do(tmp_path):
    """gt_label_wi_l: an image that won any pair is desirable, even if it lost another; one that only lost is not."""
    pairs = PairwiseParquetDataset(
        write_pairwise_rows(tmp_path / "p.parquet", _rows()), resolution=8, hflip=False
    )
    view = UnpairedDataset(pairs)
    assert view.labelling == "per_image"
    assert _labels(view) == [(RED, True), (GREEN, False), (BLUE, True), (WHITE, True)]
    assert [view[j]["prompt"] for j in range(4)] == [
        "red or green",
        "red or green",
        "blue or red",
        "green or white",
    ]
    batch = collate_preference([view[j] for j in range(4)])
    assert batch.pixel_values.shape == (4, 1, 3, 8, 8) and batch.desirable.tolist() == [
        [True],
        [False],
        [True],
        [True],
    ]


def test_per_pair_option_keeps_one_label_per_pair(tmp_path):
    pairs = PairwiseParquetDataset(
        write_pairwise_rows(tmp_path / "p.parquet", _rows()), resolution=8, hflip=False
    )
    view = UnpairedDataset(pairs, labelling="per_pair")
    assert _labels(view) == [
        (RED, True),
        (GREEN, False),
        (BLUE, True),
        (RED, False),
        (WHITE, True),
        (GREEN, False),
    ]


def test_pickapic_uids_identify_images_before_their_bytes(tmp_path):
    """Same bytes under two uids are two images; the uids of the pair follow the winner-first swap."""
    uids = {
        "row0": {"image_0_uid": "red", "image_1_uid": "green"},
        "row1": {"image_0_uid": "blue", "image_1_uid": "red"},
        "row2": {"image_0_uid": "green-again", "image_1_uid": "white"},
    }
    path = write_table(tmp_path / "p.parquet", _rows(**uids), UID_SCHEMA)
    pairs = PairwiseParquetDataset(path, resolution=8, hflip=False)
    assert pairs.image_keys().tolist() == [
        ["uid:red", "uid:green"],
        ["uid:blue", "uid:red"],
        ["uid:white", "uid:green-again"],
    ]
    view = UnpairedDataset(pairs)
    assert _labels(view) == [(RED, True), (GREEN, False), (BLUE, True), (WHITE, True), (GREEN, False)]


def test_per_image_refuses_ties_sources_without_identities_and_unknown_labellings(tmp_path):
    rows = [*_rows(), pairwise_row("tie", 0.5, (BLUE, WHITE))]
    with pytest.raises(ValueError, match="source item 3 is a tie"):
        UnpairedDataset(
            PairwiseParquetDataset(write_pairwise_rows(tmp_path / "t.parquet", rows), 8, tie_policy="half")
        )
    with pytest.raises(TypeError, match="got TensorDataset: .* or use labelling='per_pair'"):
        UnpairedDataset(TensorDataset(torch.zeros(2)))
    with pytest.raises(ValueError, match="labelling 'per_row': expected one of per_image, per_pair"):
        UnpairedDataset(TensorDataset(torch.zeros(2)), labelling="per_row")


def test_over_moves_the_view_onto_a_source_with_the_same_items(tmp_path):
    path = write_pairwise_rows(tmp_path / "p.parquet", _rows())
    view = UnpairedDataset(PairwiseParquetDataset(path, resolution=8, hflip=False))
    moved = view.over(PairwiseParquetDataset(path, resolution=8, hflip=False))
    assert moved.source is not view.source and _labels(moved) == _labels(view)
    with pytest.raises(ValueError, match="the new source has 2 items, expected 3"):
        view.over(PairwiseParquetDataset(path, resolution=8, max_rows=2))
