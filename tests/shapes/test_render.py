"""The procedural renderer: geometry, colours and reproducibility, measured on the pixels."""

import numpy as np
import pytest

from diffusion_align.shapes.render import NO_JITTER, Jitter, object_geometry, render, render_batch
from diffusion_align.shapes.world import COLORS, HALF_EXTENT, POSITION_CENTERS, ShapesPrompt


def _object_mask(image: np.ndarray, bg: str) -> np.ndarray:
    return np.abs(image.astype(int) - np.array(COLORS[bg])).sum(-1) > 60


def test_render_is_uint8_64x64_rgb_and_reproducible():
    prompts = [ShapesPrompt("red", "circle", "blue"), ShapesPrompt("green", "triangle", "white", "large")]
    first, second = render_batch(prompts, seed=3), render_batch(prompts, seed=3)
    assert first.shape == (2, 64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, render_batch(prompts, seed=4))


@pytest.mark.parametrize("position", list(POSITION_CENTERS))
def test_without_jitter_the_object_sits_at_its_position_with_its_size(position):
    prompt = ShapesPrompt("yellow", "square", "black", "small", position)
    image = render(prompt, np.random.default_rng(0), NO_JITTER)
    ys, xs = np.nonzero(_object_mask(image, "black"))
    cx, cy = POSITION_CENTERS[position]
    assert abs(xs.mean() + 0.5 - cx) < 0.6 and abs(ys.mean() + 0.5 - cy) < 0.6
    assert abs((xs.max() - xs.min() + 1) / 2 - HALF_EXTENT["small"]) <= 1.0
    assert tuple(image[0, 0]) == COLORS["black"]
    assert tuple(image[int(cy), int(cx)]) == COLORS["yellow"]


def test_fill_ratio_of_bounding_box_tells_the_shapes_apart():
    ratios = {}
    for shape in ("circle", "square", "triangle"):
        image = render(ShapesPrompt("white", shape, "blue", "large", "in the center"), np.random.default_rng(0), NO_JITTER)
        mask = _object_mask(image, "blue")
        ys, xs = np.nonzero(mask)
        ratios[shape] = mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    assert ratios["square"] > 0.95
    assert 0.72 < ratios["circle"] < 0.85
    assert 0.42 < ratios["triangle"] < 0.6


def test_jitter_stays_within_its_bounds():
    jitter = Jitter()
    rng = np.random.default_rng(0)
    prompt = ShapesPrompt("red", "circle", "green", "large", "at the top")
    for _ in range(200):
        cx, cy, half = object_geometry(prompt, rng, jitter)
        assert abs(cx - POSITION_CENTERS["at the top"][0]) <= jitter.position
        assert abs(cy - POSITION_CENTERS["at the top"][1]) <= jitter.position
        assert abs(half / HALF_EXTENT["large"] - 1) <= jitter.size + 1e-9


def test_unplaced_objects_always_fit_inside_the_image():
    rng = np.random.default_rng(1)
    for size in (None, "small", "large"):
        for _ in range(200):
            cx, cy, half = object_geometry(ShapesPrompt("red", "square", "green", size), rng)
            assert half < cx < 64 - half and half < cy < 64 - half
