"""Schemas, cell checks and decoding: every failure is a DataFormatError naming file, row and field."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from diffusion_align.data.formats import (
    PAIRWISE_COLUMNS,
    PAIRWISE_SCHEMA,
    RANKED_COLUMNS,
    RANKED_SCHEMA,
    VIDEO_PAIR_COLUMNS,
    VIDEO_PAIR_SCHEMA,
    BadRowReport,
    DataFormatError,
    cell_bytes,
    check_columns,
    check_label,
    check_label_1,
    check_segment_labels,
    check_text,
    decode_image,
    decode_video,
    encode_video,
)
from diffusion_align.testing.data import solid_image

FILE = "data/train-00000.parquet"


def test_label_error_message_names_file_row_field_and_expectation():
    with pytest.raises(DataFormatError) as info:
        check_label(0.7, FILE, 17)
    assert str(info.value) == "data/train-00000.parquet row 17 field 'label_0': expected 0, 0.5 or 1, got 0.7"
    assert (info.value.file, info.value.row, info.value.field) == (FILE, 17, "label_0")


@pytest.mark.parametrize(("value", "got"), [(math.nan, "NaN"), (None, "null"), (2, "2"), (-0.5, "-0.5")])
def test_bad_labels_are_rejected(value, got):
    with pytest.raises(DataFormatError, match=rf"row 3 field 'label_0': expected 0, 0.5 or 1, got {got}$"):
        check_label(value, FILE, 3)


@pytest.mark.parametrize("value", [0, 0.5, 1, 0.0, 1.0])
def test_valid_labels_come_back_as_floats(value):
    assert check_label(value, FILE, 0) == float(value)


def test_label_1_must_complement_label_0():
    check_label_1(1.0, 0.0, FILE, 4)
    with pytest.raises(DataFormatError, match=r"row 4 field 'label_1': expected 1 - label_0 = 0.0, got 0.5"):
        check_label_1(1.0, 0.5, FILE, 4)


def test_empty_caption_allowed_null_caption_rejected():
    assert check_text("", FILE, 0, "caption") == ""
    with pytest.raises(
        DataFormatError, match=r"row 2 field 'caption': expected a string \(empty allowed\), got null"
    ):
        check_text(None, FILE, 2, "caption")


def test_segment_labels_checked_value_by_value():
    assert check_segment_labels([1, 0.5, 0], FILE, 1) == [1.0, 0.5, 0.0]
    with pytest.raises(
        DataFormatError, match=r"row 1 field 'segment_label_0': expected 0, 0.5 or 1, got 0.25"
    ):
        check_segment_labels([1.0, 0.25], FILE, 1)
    with pytest.raises(DataFormatError, match="non-empty list"):
        check_segment_labels([], FILE, 1)


def test_missing_column_lists_the_columns_present():
    schema = pa.schema([("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary())])
    with pytest.raises(DataFormatError) as info:
        check_columns(FILE, schema, PAIRWISE_COLUMNS, {})
    assert str(info.value) == (
        "data/train-00000.parquet: missing column 'label_0' (required: caption, jpg_0, jpg_1, label_0; "
        "present: caption, jpg_0, jpg_1)"
    )


def test_wrong_column_type_is_named():
    schema = pa.schema(
        [("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.string())]
    )
    with pytest.raises(
        DataFormatError, match=r"field 'label_0': expected a float or integer column, got string"
    ):
        check_columns(FILE, schema, PAIRWISE_COLUMNS, {})


def test_published_schemas_pass_their_own_checks():
    check_columns("p", PAIRWISE_SCHEMA, PAIRWISE_COLUMNS, {"label_1": "number"})
    check_columns("r", RANKED_SCHEMA, RANKED_COLUMNS, {})
    check_columns("v", VIDEO_PAIR_SCHEMA, VIDEO_PAIR_COLUMNS, {"segment_label_0": "number_list"})
    image_struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    hf_image_schema = PAIRWISE_SCHEMA.set(1, pa.field("jpg_0", image_struct)).set(
        2, pa.field("jpg_1", image_struct)
    )
    check_columns("hf", hf_image_schema, PAIRWISE_COLUMNS, {})


def test_image_struct_must_hold_binary_bytes():
    """A ``struct<bytes: string>`` cell is text, not an encoded image: refused when the schema is checked."""
    for bytes_type in (pa.binary(), pa.large_binary()):
        struct = pa.struct([("bytes", bytes_type), ("path", pa.string())])
        check_columns(FILE, PAIRWISE_SCHEMA.set(1, pa.field("jpg_0", struct)), PAIRWISE_COLUMNS, {})
    text_struct = pa.struct([("bytes", pa.string()), ("path", pa.string())])
    with pytest.raises(DataFormatError) as info:
        check_columns(FILE, PAIRWISE_SCHEMA.set(2, pa.field("jpg_1", text_struct)), PAIRWISE_COLUMNS, {})
    assert str(info.value) == (
        "data/train-00000.parquet field 'jpg_1': expected a binary column (or struct<bytes: binary, path: string>), "
        "got struct<bytes: string, path: string>"
    )
    assert info.value.field == "jpg_1" and info.value.row is None


def test_cell_bytes_accepts_binary_and_image_structs_rejects_null_and_empty():
    assert cell_bytes(b"abc", FILE, 0, "jpg_0") == b"abc"
    assert cell_bytes({"bytes": b"abc", "path": None}, FILE, 0, "jpg_0") == b"abc"
    with pytest.raises(DataFormatError, match=r"row 5 field 'jpg_1': expected encoded bytes, got null"):
        cell_bytes(None, FILE, 5, "jpg_1")
    with pytest.raises(DataFormatError, match=r"row 5 field 'jpg_1': expected encoded bytes, got empty"):
        cell_bytes(b"", FILE, 5, "jpg_1")


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_decode_image_gives_rgb(image_format):
    image = decode_image(solid_image((10, 200, 30), image_format), FILE, 0, "jpg_0")
    assert image.mode == "RGB" and image.size == (40, 32)


def test_decode_image_converts_palette_and_alpha_to_rgb():
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), FILE, 0, "jpg_0").getpixel((0, 0)) == (255, 0, 0)


def test_corrupt_and_truncated_images_name_file_row_field():
    jpeg = solid_image((10, 200, 30), "JPEG")
    corrupt = jpeg[:2] + b"\x00" * 64 + jpeg[66:]
    for data in (corrupt, jpeg[: len(jpeg) // 2], b"not an image at all"):
        with pytest.raises(
            DataFormatError, match=r"^data/train-00000.parquet row 9 field 'jpg_1': expected JPEG, PNG"
        ):
            decode_image(data, FILE, 9, "jpg_1")


def test_other_image_formats_are_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="BMP")
    with pytest.raises(DataFormatError, match="field 'jpg_0'"):
        decode_image(buffer.getvalue(), FILE, 0, "jpg_0")


def test_video_round_trip_and_errors():
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 8, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_video(encode_video(frames), FILE, 0, "video_0"), frames)
    with pytest.raises(DataFormatError, match=r"row 2 field 'video_1': expected an .npz archive"):
        decode_video(b"garbage", FILE, 2, "video_1")
    buffer = io.BytesIO()
    np.savez(buffer, frames=frames.astype(np.float32))
    with pytest.raises(
        DataFormatError, match=r"row 2 field 'video_0': expected uint8 frames \[F, H, W, 3\], got float32"
    ):
        decode_video(buffer.getvalue(), FILE, 2, "video_0")
    with pytest.raises(ValueError, match="expected uint8 frames"):
        encode_video(frames[..., :2])


def test_bad_row_report_counts_per_reason():
    report = BadRowReport()
    for row in range(3):
        report.add(
            DataFormatError(
                FILE, "expected 0, 0.5 or 1, got NaN", row=row, field="label_0", reason="label_0: NaN"
            )
        )
    report.add(DataFormatError(FILE, "x", row=7, field="caption", reason="caption: null"), rows=2)
    assert report.counts == {"label_0: NaN": 3, "caption: null": 2} and report.total == 5
    assert str(report).splitlines()[0] == "5 rows skipped"
    assert report.examples[0].startswith("data/train-00000.parquet row 0 field 'label_0'")
