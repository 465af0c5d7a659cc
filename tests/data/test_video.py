"""Video pairs: npz frame cells, winner first, segment labels follow the swap, frame-count checks."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from diffusion_align.data import (
    DataFormatError,
    VideoPairDataset,
    collate_preference,
    decode_video,
    encode_video,
)
from diffusion_align.data.formats import VIDEO_PAIR_SCHEMA
from diffusion_align.testing.data import normalized_colour, write_table


def _clip(colour, frames: int = 3, size: int = 12) -> bytes:
    return encode_video(np.full((frames, size, size + 4, 3), colour, dtype=np.uint8))


def _row(label_0, segments, colours=((255, 0, 0), (0, 0, 255)), frames=(3, 3)) -> dict:
    return {
        "caption": "c",
        "video_0": _clip(colours[0], frames[0]),
        "video_1": _clip(colours[1], frames[1]),
        "label_0": label_0,
        "label_1": 1.0 - label_0,
        "segment_label_0": segments,
    }


def test_swap_reverses_clips_and_flips_segment_labels(tmp_path):
    path = write_table(
        tmp_path / "v.parquet", [_row(1.0, [1.0, 0.5]), _row(0.0, [0.0, 1.0])], VIDEO_PAIR_SCHEMA
    )
    dataset = VideoPairDataset(path, resolution=8, hflip=False)
    first, second = dataset[0], dataset[1]
    assert first["pixel_values"].shape == (2, 3, 3, 8, 8)
    assert first["segment_label"].tolist() == [1.0, 0.5] and second["segment_label"].tolist() == [1.0, 0.0]
    blue = torch.tensor(normalized_colour((0, 0, 255)))
    assert torch.equal(second["pixel_values"][0, :, :, 0, 0], blue.expand(3, 3))  # video_1 won: first
    batch = collate_preference([first, second])
    assert batch.pixel_values.shape == (2, 2, 3, 3, 8, 8) and batch.segment_label.shape == (2, 2)


def test_tiny_video_writer_round_trip(tiny_videos):
    dataset = VideoPairDataset(tiny_videos, resolution=16, num_frames=4, check_images=True)
    table = pq.read_table(tiny_videos[0])
    assert len(dataset) == table.num_rows - 1 == 5 and dataset.num_ties_dropped == 1
    item = dataset[0]
    assert item["pixel_values"].shape == (2, 4, 3, 16, 16) and item["segment_label"].shape == (2,)
    assert item["pixel_values"].min() >= -1 and item["pixel_values"].max() <= 1


def test_frame_count_and_segment_errors_name_file_row_field(tmp_path):
    path = write_table(
        tmp_path / "v.parquet", [_row(1.0, [1.0]), _row(1.0, [1.0], frames=(3, 2))], VIDEO_PAIR_SCHEMA
    )
    dataset = VideoPairDataset(path, resolution=8)
    with pytest.raises(
        DataFormatError, match=rf"^{path} row 1 field 'video_1': expected 3 frames like video_0, got 2"
    ):
        dataset[1]
    with pytest.raises(DataFormatError, match=rf"^{path} row 0 field 'video_0': expected 4 frames, got 3"):
        VideoPairDataset(path, resolution=8, num_frames=4, check_images=True)
    uneven = write_table(tmp_path / "s.parquet", [_row(1.0, [1.0, 0.0]), _row(1.0, [1.0])], VIDEO_PAIR_SCHEMA)
    with pytest.raises(
        DataFormatError, match=r"row 1 field 'segment_label_0': expected 2 segments like the first row"
    ):
        VideoPairDataset(uneven, resolution=8)
    corrupt = _row(1.0, [1.0])
    corrupt["video_0"] = corrupt["video_0"][:-30]
    skipped = VideoPairDataset(
        write_table(tmp_path / "c.parquet", [_row(1.0, [0.5]), corrupt], VIDEO_PAIR_SCHEMA),
        resolution=8,
        on_bad_row="skip",
        check_images=True,
    )
    assert len(skipped) == 1 and skipped.bad_rows.counts == {"video_0: undecodable video": 1}


@pytest.mark.parametrize("second_has_segments", [True, False])
def test_segment_labels_in_some_files_only_name_the_odd_file(tmp_path, second_has_segments):
    without_segments = VIDEO_PAIR_SCHEMA.remove(VIDEO_PAIR_SCHEMA.get_field_index("segment_label_0"))
    schemas = (without_segments, VIDEO_PAIR_SCHEMA)[:: 1 if second_has_segments else -1]
    first, second = (
        write_table(tmp_path / f"v-{i}.parquet", [_row(1.0, [1.0, 0.0])], schema)
        for i, schema in enumerate(schemas)
    )
    found, other = ("has", "lacks") if second_has_segments else ("lacks", "has")
    with pytest.raises(DataFormatError) as info:
        VideoPairDataset(tmp_path, resolution=8)
    assert str(info.value) == (
        f"{second} field 'segment_label_0': {found} column 'segment_label_0', which {first} {other}: "
        "expected every file of the dataset to have per-segment labels, or none"
    )


def test_datasets_library_reads_video_files(tiny_videos, tmp_path):
    import datasets

    loaded = datasets.load_dataset(
        "parquet", data_files=[str(p) for p in tiny_videos], split="train", cache_dir=str(tmp_path / "hf")
    )
    assert loaded.num_rows == 6 and len(loaded[0]["segment_label_0"]) == 2
    assert decode_video(loaded[0]["video_0"], "hf", 0, "video_0").shape == (
        4,
        32,
        40,
        3,
    )  # row 0 is landscape: 40 x 32
