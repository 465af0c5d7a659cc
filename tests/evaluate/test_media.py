"""Stored samples round-trip losslessly; clips become strips and GIFs; grids have one cell per (row, model)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from diffusion_align.evaluate.media import (
    GridRow,
    comparison_grid,
    fit_size,
    gif_bytes,
    load_frames,
    save_sample,
    write_atomic,
)


def test_image_round_trips_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    assert save_sample(pixels, tmp_path / "a.png") == 1
    (frame,) = load_frames(tmp_path / "a.png", 1)
    np.testing.assert_array_equal(np.asarray(frame), pixels)


def test_clip_is_stored_as_a_strip_and_split_back(tmp_path):
    clip = np.random.default_rng(1).integers(0, 256, size=(5, 8, 12, 3), dtype=np.uint8)
    assert save_sample(clip, tmp_path / "clip.png") == 5
    assert Image.open(tmp_path / "clip.png").size == (5 * 12, 8)
    frames = load_frames(tmp_path / "clip.png", 5)
    np.testing.assert_array_equal(np.stack([np.asarray(f) for f in frames]), clip)
    with pytest.raises(ValueError, match="not a multiple of num_frames=7"):
        load_frames(tmp_path / "clip.png", 7)


def test_bad_pixels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_sample(np.zeros((8, 8, 3), dtype=np.float32), tmp_path / "x.png")


def test_gif_is_animated_with_every_frame():
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(4)]
    gif = Image.open(io.BytesIO(gif_bytes(frames, frames_per_second=10)))
    assert gif.format == "GIF" and gif.n_frames == 4 and gif.info["duration"] == 100


def test_fit_size_scales_the_longer_side():
    assert fit_size(Image.new("RGB", (32, 16)), 128).size == (128, 64)
    assert fit_size(Image.new("RGB", (512, 256)), 128).size == (128, 64)


def test_grid_has_a_header_label_column_and_captions():
    image = Image.new("RGB", (32, 32), (200, 0, 0))
    rows = [GridRow(f"prompt {i}", [image, image, image], ["clip: 1.0\nhps: 2.0"] * 3) for i in range(2)]
    grid = comparison_grid(["base", "aligned", "other"], rows, cell_size=64)
    assert grid.width > 3 * 64 and grid.height > 2 * 64
    red = (np.asarray(grid) == (200, 0, 0)).all(axis=-1)
    assert red.sum() == 6 * 64 * 64  # six 64 px cells, nothing drawn over them
    with pytest.raises(ValueError, match="2 images for 3 columns"):
        comparison_grid(["a", "b", "c"], [GridRow("p", [image, image], ["", ""])])


def test_write_atomic_leaves_no_temporary_file_on_failure(tmp_path):
    def fail(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(tmp_path / "out.json", fail)
    assert list(tmp_path.iterdir()) == []
    write_atomic(tmp_path / "out.json", lambda path: path.write_text("{}"))
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_sample_is_named(tmp_path, damage):
    path = tmp_path / "sample.png"
    save_sample(np.random.default_rng(2).integers(0, 256, size=(32, 32, 3), dtype=np.uint8), path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a png" * 4}[damage])
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable image")):
        load_frames(path, 1)
    with pytest.raises(FileNotFoundError):
        load_frames(tmp_path / "missing.png", 1)
