"""The row-group reader, and a fuzz test: corrupted image cells raise DataFormatError, never a bare traceback."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from diffusion_align.data import DataFormatError, PairwiseParquetDataset
from diffusion_align.data.parquet import ParquetRows, resolve_paths
from diffusion_align.testing.data import encode_image, pairwise_row, square_image, write_pairwise_rows


def test_resolve_paths_globs_directories_lists_and_errors(tiny_pairs, tmp_path):
    directory = tiny_pairs[0].parent
    assert resolve_paths(directory) == tiny_pairs == resolve_paths(str(directory / "train-*.parquet"))
    assert resolve_paths([tiny_pairs[1], tiny_pairs[0]]) == [tiny_pairs[1], tiny_pairs[0]]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_paths(tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match="holds no"):
        resolve_paths(tmp_path)


def test_a_file_reached_twice_is_read_once(tiny_pairs):
    directory = tiny_pairs[0].parent
    respelled = directory / "." / tiny_pairs[0].name
    assert resolve_paths([directory, tiny_pairs[0]]) == tiny_pairs
    assert resolve_paths([tiny_pairs[1], str(directory / "*.parquet"), respelled]) == [
        tiny_pairs[1],
        tiny_pairs[0],
    ]
    once = PairwiseParquetDataset(directory, resolution=8)
    twice = PairwiseParquetDataset([directory, tiny_pairs[0], respelled], resolution=8)
    assert len(once) == len(twice) == 14  # 16 rows, 2 ties dropped
    assert [twice.locate(i) for i in range(len(twice))] == [once.locate(i) for i in range(len(once))]


def test_cells_read_row_groups_lazily_and_survive_pickling(tiny_pairs):
    rows = ParquetRows(tiny_pairs, row_group_cache=2)
    assert rows.handle(0).metadata.num_row_groups == 2  # 8 rows in row groups of 4
    first = rows.cells(0, 5, ("jpg_0", "caption"))
    assert first["jpg_0"][:2] in (b"\xff\xd8", b"\x89P", b"RI") and isinstance(first["caption"], str)
    for row in range(8):
        rows.cells(1, row, ("jpg_1",))
    assert len(rows._groups) == 2
    copy = pickle.loads(pickle.dumps(rows))
    assert copy._handles == {} and copy.cells(0, 5, ("jpg_0", "caption")) == first
    with pytest.raises(IndexError, match="row 8 outside 0 .. 7"):
        rows.cells(0, 8, ("jpg_0",))


_counter = itertools.count()
_corruption = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
)


def _corrupt(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value in edits:
        position %= max(len(out), 1)
        if kind == "flip" and out:
            out[position] ^= value
        elif kind == "truncate":
            del out[position:]
        elif kind == "insert":
            out[position:position] = bytes([value]) * 8
        elif kind == "delete":
            del out[position : position + value]
    return bytes(out)


@settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    image_format=st.sampled_from(["JPEG", "PNG", "WEBP"]),
    edits=st.lists(_corruption, min_size=1, max_size=4),
    column=st.sampled_from(["jpg_0", "jpg_1"]),
)
def test_corrupted_image_cells_raise_our_error(tmp_path_factory, image_format, edits, column):
    pixels, _ = square_image(np.random.default_rng(0), 20, 16)
    row = pairwise_row("fuzz", 0.0)
    row[column] = _corrupt(encode_image(pixels, image_format), edits)
    path = write_pairwise_rows(tmp_path_factory.getbasetemp() / f"fuzz-{next(_counter)}.parquet", [row])
    dataset = PairwiseParquetDataset(path, resolution=16)
    try:
        item = dataset[0]
    except DataFormatError as error:
        event("raised DataFormatError")
        assert (error.file, error.row, error.field) == (str(path), 0, column)
    else:
        event("still decodes")
        assert item["pixel_values"].shape == (2, 3, 16, 16) and torch.isfinite(item["pixel_values"]).all()
    checked = PairwiseParquetDataset(path, resolution=16, on_bad_row="skip", check_images=True)
    assert len(checked) + checked.bad_rows.total == 1
