"""The clip renderer: trajectories, pixels inside the frame, motion measured on pixels, reproducibility."""

import itertools

import numpy as np
import pytest

from diffusion_align.moving_shapes.render import (
    NO_CLIP_JITTER,
    ClipJitter,
    render_clip,
    render_clips,
    trajectory,
)
from diffusion_align.moving_shapes.world import (
    DIRECTIONS,
    EDGE_MARGIN,
    FRAME_SIZE,
    FRAMES,
    HALF_EXTENT,
    SPEED,
    MovingShapesPrompt,
    all_prompts,
)
from diffusion_align.shapes.world import COLORS, SIZES


def coverage_centroids(clip: np.ndarray, bg: str, color: str) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: centroid ``(x, y)`` and area of the object's coverage (its place on the bg-colour line)."""
    background, fill = np.array(COLORS[bg], dtype=float), np.array(COLORS[color], dtype=float)
    alpha = ((clip - background) @ (fill - background)) / ((fill - background) @ (fill - background))
    alpha = alpha.clip(0, 1)
    ys, xs = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE] + 0.5
    area = alpha.sum(axis=(1, 2))
    moments = np.stack([(alpha * xs).sum(axis=(1, 2)), (alpha * ys).sum(axis=(1, 2))], axis=1)
    return moments / area[:, None], area


def test_clips_are_uint8_rgb_and_reproducible_from_the_seed():
    prompts = [MovingShapesPrompt("red", "circle", "blue", "left"),
               MovingShapesPrompt("green", "triangle", "white", "up", "large", "quickly")]
    first, second = render_clips(prompts, seed=3), render_clips(prompts, seed=3)
    assert first.shape == (2, FRAMES, FRAME_SIZE, FRAME_SIZE, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, render_clips(prompts, seed=4))


def test_nominal_trajectory_is_centred_and_moves_at_the_named_speed():
    prompt = MovingShapesPrompt("red", "square", "blue", "right")
    centres, half = trajectory(prompt, np.random.default_rng(0), NO_CLIP_JITTER)
    expected_x = 16.0 + 1.2 * (np.arange(9) - 4)  # medium speed 1.2 px/frame, midpoint at the frame centre
    np.testing.assert_allclose(centres, np.stack([expected_x, np.full(9, 16.0)], axis=1))
    assert half == HALF_EXTENT[None] == 4.5


@pytest.mark.parametrize("direction, speed", itertools.product(DIRECTIONS, (None, "slowly", "quickly")))
def test_pixels_move_in_the_named_direction_by_speed_times_frames(direction, speed):
    prompt = MovingShapesPrompt("yellow", "square", "black", direction, "small", speed)
    clip = render_clip(prompt, np.random.default_rng(0), NO_CLIP_JITTER)
    centroids, _ = coverage_centroids(clip, "black", "yellow")
    centres, _ = trajectory(prompt, np.random.default_rng(0), NO_CLIP_JITTER)
    # drawn on the 4x supersampling grid (1/4 px), PIL's boxes including their far edge: within 0.15 px
    np.testing.assert_allclose(centroids, centres, atol=0.15)
    expected = SPEED[speed] * (FRAMES - 1) * np.array(DIRECTIONS[direction])
    np.testing.assert_allclose(centroids[-1] - centroids[0], expected, atol=0.15)


def test_any_number_of_frames_works():
    prompt = MovingShapesPrompt("white", "circle", "purple", "down", None, "quickly")
    clip = render_clip(prompt, np.random.default_rng(0), NO_CLIP_JITTER, frames=5)
    assert clip.shape == (5, FRAME_SIZE, FRAME_SIZE, 3)
    centroids, _ = coverage_centroids(clip, "purple", "white")
    np.testing.assert_allclose(centroids[-1] - centroids[0], (0.0, 4 * 1.8), atol=0.15)
    with pytest.raises(ValueError, match="frames 1: a clip needs at least 2 frames"):
        render_clip(prompt, np.random.default_rng(0), frames=1)
    with pytest.raises(ValueError, match="'a white circle moving down quickly on .*' over 20 frames"):
        render_clip(prompt, np.random.default_rng(0), frames=20)


def test_every_combination_stays_inside_the_frame_under_the_largest_jitter():
    jitter = ClipJitter()
    rng = np.random.default_rng(1)
    for size, speed, direction in itertools.product((None, *SIZES), (None, "slowly", "quickly"), DIRECTIONS):
        prompt = MovingShapesPrompt("red", "square", "green", direction, size, speed)
        for _ in range(60):
            centres, half = trajectory(prompt, rng, jitter)
            assert (centres - half >= EDGE_MARGIN - 1e-9).all()
            assert (centres + half <= FRAME_SIZE - EDGE_MARGIN + 1e-9).all()
    largest = HALF_EXTENT["large"] * (1 + jitter.size) + EDGE_MARGIN
    assert 2 * largest + SPEED["quickly"] * (1 + jitter.speed) * (FRAMES - 1) <= FRAME_SIZE


def test_rendered_objects_never_touch_the_frame_border():
    prompts = [p for p in all_prompts() if p.size == "large" and p.speed == "quickly"][::7]
    clips = render_clips(prompts, seed=2)
    for clip in clips:
        ring = np.concatenate([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], axis=1)  # [F, 128, 3]
        assert (ring == ring[0, 0]).all()  # the (jittered) background colour only


def test_jitter_varies_size_speed_and_start_but_never_the_direction():
    jitter = ClipJitter()
    rng = np.random.default_rng(3)
    prompt = MovingShapesPrompt("red", "circle", "green", "up", "large", "slowly")
    starts = []
    for _ in range(200):
        centres, half = trajectory(prompt, rng, jitter)
        steps = np.diff(centres, axis=0)
        assert abs(half / HALF_EXTENT["large"] - 1) <= jitter.size + 1e-9
        assert (steps[:, 0] == 0).all() and np.allclose(steps[:, 1], steps[0, 1])  # straight up, steadily
        assert abs(-steps[0, 1] / SPEED["slowly"] - 1) <= jitter.speed + 1e-9
        starts.append(centres[0])
    assert np.ptp(np.array(starts), axis=0).min() > 5.0  # the start moves around in x and y


def test_object_keeps_its_size_and_colour_over_the_clip():
    prompt = MovingShapesPrompt("orange", "circle", "blue", "left", "large", "quickly")
    clip = render_clip(prompt, np.random.default_rng(4), ClipJitter(color=0.0, background=0.0))
    centroids, areas = coverage_centroids(clip, "blue", "orange")
    np.testing.assert_allclose(areas, areas[0], rtol=0.02)  # up to 1.2% from the 1/4-px drawing grid
    centre_pixels = [tuple(frame[int(y), int(x)]) for frame, (x, y) in zip(clip, centroids)]
    assert set(centre_pixels) == {COLORS["orange"]}


def test_render_clips_refuses_an_empty_prompt_list():
    with pytest.raises(ValueError, match="at least one Moving Shapes prompt"):
        render_clips([], seed=0)
