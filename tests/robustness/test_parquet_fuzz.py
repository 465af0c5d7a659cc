"""Fuzzing the Parquet readers with hypothesis.

* Byte level: random corruptions of valid pairwise and ranked files (bit flips, truncation, zeroed runs, inserted
  garbage). Reading every item either works, giving finite pixels in [-1, 1], or raises one
  :class:`DataFormatError` naming the file; nothing else (no pyarrow, PIL, numpy or Python error) escapes.
* Row level: random rows (captions, labels, scores and image cells, good and bad) against an independent oracle:
  with ``on_bad_row=skip`` every row is kept, dropped as a tie, or counted as bad exactly as the oracle says (no row
  lost or counted twice); with ``on_bad_row=error`` the error names the row the oracle finds first.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from diffusion_align.data import DataFormatError, PairwiseParquetDataset, RankedParquetDataset
from diffusion_align.data.formats import FLOAT32_MAX
from diffusion_align.testing.data import (
    write_pairwise_rows,
    write_tiny_pairwise_parquet,
    write_tiny_ranked_parquet,
)
from robustness.helpers import png_bytes

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
KINDS = ("pairs", "ranked")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parquet_fuzz")


@pytest.fixture(scope="module")
def sources(work) -> dict[str, bytes]:
    """The bytes of a valid pairwise file (6 rows, 1 tie) and a valid ranked file (2 prompts x 3)."""
    pairs = write_tiny_pairwise_parquet(work / "pairs", n_rows=6, resolution=16, ties=1)[0]
    ranked = write_tiny_ranked_parquet(work / "ranked", n_prompts=2, k=3, resolution=16)[0]
    return {"pairs": pairs.read_bytes(), "ranked": ranked.read_bytes()}


@st.composite
def corruptions(draw) -> list[tuple]:
    """1-4 edits ``(op, position in [0, 1), argument)``; positions scale to the file drawn."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "zero", "insert", "footer"]))
        position = draw(st.floats(0.0, 1.0, exclude_max=True))
        argument = {"flip": st.integers(0, 7), "truncate": st.none(), "zero": st.integers(1, 64),
                    "insert": st.binary(min_size=1, max_size=32), "footer": st.integers(0, 255)}[op]
        edits.append((op, position, draw(argument)))
    return edits


def corrupt(source: bytes, edits: list[tuple]) -> bytes:
    data = bytearray(source)
    for op, position, argument in edits:
        at = int(position * len(data))
        if op == "flip" and data:
            data[at] ^= 1 << argument
        elif op == "truncate":
            del data[at:]
        elif op == "zero":
            data[at : at + argument] = bytes(len(data[at : at + argument]))
        elif op == "insert":
            data[at:at] = argument
        elif op == "footer" and len(data) > 8:  # the footer length and magic: what a reader looks at first
            data[-8 + int(position * 8)] = argument
    return bytes(data)

def read_everything(dataset) -> None:
    for index in range(len(dataset)):
        pixels = dataset[index]["pixel_values"].numpy()
        assert np.isfinite(pixels).all() and pixels.min() >= -1.0 and pixels.max() <= 1.0


@FUZZ
@given(kind=st.sampled_from(KINDS), edits=corruptions(), skip=st.booleans())
def test_corrupt_files_read_cleanly_or_raise_one_error_naming_the_file(kind, edits, skip, sources, work):
    path = work / f"corrupt-{kind}.parquet"
    path.write_bytes(corrupt(sources[kind], edits))
    options = {"resolution": 16, "check_images": True, "on_bad_row": "skip" if skip else "error"}
    try:
        if kind == "pairs":
            dataset = PairwiseParquetDataset(path, score_prefix="ps_score", **options)
        else:
            dataset = RankedParquetDataset(path, **options)
        read_everything(dataset)
    except DataFormatError as error:
        assert str(error).startswith(str(path)), error


# ---- row level -----------------------------------------------------------------------------------------------------
GOOD_IMAGE = png_bytes(12, 10)
IMAGES = {"good": GOOD_IMAGE, "truncated": GOOD_IMAGE[: len(GOOD_IMAGE) // 2], "garbage": b"\x00not an image\xff",
          "empty": b"", "null": None}
# a row starts valid (a decisive pair or a tie) and gets 0-2 faults, each a random value for one field; the oracle
# judges the values themselves, so a "fault" that happens to be valid (label 0.0) is judged valid
BAD_IMAGES = sorted(set(IMAGES) - {"good"})
FAULTS = {
    "caption": st.none(),
    "label_0": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    "label_1": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    "ps_score_0": st.one_of(st.none(), st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -3.5e38])),
    "ps_score_1": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    "jpg_0": st.sampled_from(BAD_IMAGES).map(IMAGES.get),
    "jpg_1": st.sampled_from(BAD_IMAGES).map(IMAGES.get),
}


@st.composite
def rows(draw) -> list[dict]:
    drawn = []
    for _ in range(draw(st.integers(1, 10))):
        label_0 = draw(st.sampled_from([0.0, 1.0, 0.5]))
        row = {"caption": draw(st.text(max_size=20)), "jpg_0": GOOD_IMAGE, "jpg_1": GOOD_IMAGE,
               "label_0": label_0, "label_1": 1.0 - label_0,
               "ps_score_0": draw(st.floats(-1e6, 1e6)), "ps_score_1": draw(st.floats(-1e6, 1e6))}
        for name in draw(st.lists(st.sampled_from(sorted(FAULTS)), max_size=2)):
            row[name] = draw(FAULTS[name])
        drawn.append(row)
    return drawn


def finite_score(value) -> bool:
    return value is not None and math.isfinite(value) and abs(value) <= FLOAT32_MAX


def small_columns_valid(row: dict) -> bool:
    label_0 = row["label_0"]
    return (isinstance(row["caption"], str) and label_0 in (0.0, 0.5, 1.0)
            and row["label_1"] is not None and row["label_1"] == 1.0 - label_0
            and finite_score(row["ps_score_0"]) and finite_score(row["ps_score_1"]))


def oracle(row: dict) -> str:
    """kept | tie | bad-small (a small column) | bad-image: the reader's verdict, derived independently."""
    if not small_columns_valid(row):
        return "bad-small"
    if row["label_0"] == 0.5:
        return "tie"
    return "kept" if row["jpg_0"] == GOOD_IMAGE and row["jpg_1"] == GOOD_IMAGE else "bad-image"


@FUZZ
@given(table=rows())
def test_skip_mode_accounts_for_every_row_as_the_oracle_says(table, work):
    path = write_pairwise_rows(work / "rows.parquet", table)
    dataset = PairwiseParquetDataset(path, resolution=8, score_prefix="ps_score", check_images=True,
                                     on_bad_row="skip")
    verdicts = [oracle(row) for row in table]
    for verdict in set(verdicts):
        event(verdict)
    assert len(dataset) == verdicts.count("kept")
    assert dataset.num_ties_dropped == verdicts.count("tie")
    assert dataset.bad_rows.total == verdicts.count("bad-small") + verdicts.count("bad-image")
    assert [dataset.locate(i)[1] for i in range(len(dataset))] == [i for i, v in enumerate(verdicts) if v == "kept"]
    read_everything(dataset)


@FUZZ
@given(table=rows())
def test_error_mode_names_the_first_bad_row(table, work):
    path = write_pairwise_rows(work / "rows.parquet", table)
    verdicts = [oracle(row) for row in table]
    first_bad = next((i for i, v in enumerate(verdicts) if v == "bad-small"), None)
    if first_bad is None:  # small columns are all checked before any image is decoded
        first_bad = next((i for i, v in enumerate(verdicts) if v == "bad-image"), None)
    if first_bad is None:
        assert len(PairwiseParquetDataset(path, resolution=8, score_prefix="ps_score", check_images=True)) == \
            verdicts.count("kept")
        return
    with pytest.raises(DataFormatError) as raised:
        PairwiseParquetDataset(path, resolution=8, score_prefix="ps_score", check_images=True)
    assert raised.value.row == first_bad and str(raised.value).startswith(f"{path} row {first_bad} field ")
