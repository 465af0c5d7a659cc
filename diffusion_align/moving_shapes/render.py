"""Procedural renderer of the Moving Shapes world: the ground-truth clips a tiny video pipeline is trained on.

Each frame is drawn at 4x resolution with the image renderer's drawing helper and box-downsampled
(anti-aliased edges), like :func:`diffusion_align.shapes.render.render`. Jitter (:class:`ClipJitter`) varies
size, speed, start position, object colour and background colour once per clip; the direction is exact, and
the object keeps its size and colour in every frame and moves in a straight line at a constant speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffusion_align.moving_shapes.world import (
    DIRECTIONS,
    EDGE_MARGIN,
    FRAME_SIZE,
    FRAMES,
    HALF_EXTENT,
    SPEED,
    MovingShapesPrompt,
)
from diffusion_align.shapes.render import draw_antialiased, jittered_rgb
from diffusion_align.shapes.world import COLORS


@dataclass(frozen=True)
class ClipJitter:
    """Random variation of rendered clips, drawn once per clip.

    Attributes:
        size: relative half-extent jitter, uniform in ``[-size, size]``.
        speed: relative speed jitter, uniform in ``[-speed, speed]``.
        position: how much of the free room the trajectory's midpoint may use, per axis, in [0, 1]: 0 centres
            the trajectory in the frame, 1 places it uniformly anywhere it fits (whole box inside the frame,
            with ``EDGE_MARGIN`` to spare, in every frame).
        color: per-channel RGB jitter of the object colour, uniform in ``[-color, color]``.
        background: per-channel RGB jitter of the background colour.
    """

    size: float = 0.06
    speed: float = 0.05
    position: float = 1.0
    color: float = 12.0
    background: float = 8.0


NO_CLIP_JITTER = ClipJitter(0.0, 0.0, 0.0, 0.0, 0.0)


def trajectory(
    prompt: MovingShapesPrompt,
    rng: np.random.Generator,
    jitter: ClipJitter = ClipJitter(),
    frames: int = FRAMES,
) -> tuple[np.ndarray, float]:
    """Object centres of every frame and the object's half-extent.

    Args:
        prompt: what moves, where to and how fast.
        rng: source of the jitter (size, speed, then the midpoint's x and y).
        jitter: how much to vary; :data:`NO_CLIP_JITTER` gives the nominal, centred trajectory.
        frames: number of frames ``F >= 2``.

    Returns:
        ``(centres, half)``: ``float64 [F, 2]`` centres ``(x, y)`` in pixels, moving ``speed`` px per frame
        along the prompt's direction, and the half-extent in pixels.

    Raises:
        ValueError: when ``frames < 2``, or when the jittered trajectory cannot fit inside the frame.
    """
    if frames < 2:
        raise ValueError(f"frames {frames}: a clip needs at least 2 frames")
    half = HALF_EXTENT[prompt.size] * (1.0 + rng.uniform(-jitter.size, jitter.size))
    speed = SPEED[prompt.speed] * (1.0 + rng.uniform(-jitter.speed, jitter.speed))
    step = speed * np.asarray(DIRECTIONS[prompt.direction])
    travel = np.abs(step) * (frames - 1)  # [2] extent of the centre's path along x and y
    room = FRAME_SIZE - 2.0 * (half + EDGE_MARGIN) - travel  # [2] free play of the path's midpoint
    if (room < 0).any():
        raise ValueError(
            f"'{prompt.text}' over {frames} frames: the path ({travel.max():.1f} px) and the object "
            f"(half-extent {half:.2f} px) need more than the {FRAME_SIZE} px frame"
        )
    midpoint = FRAME_SIZE / 2 + rng.uniform(-jitter.position, jitter.position, size=2) * room / 2
    offsets = np.arange(frames, dtype=np.float64)[:, None] - (frames - 1) / 2
    return midpoint + offsets * step, float(half)


def render_clip(
    prompt: MovingShapesPrompt,
    rng: np.random.Generator,
    jitter: ClipJitter = ClipJitter(),
    frames: int = FRAMES,
) -> np.ndarray:
    """Render one clip of ``prompt``.

    Returns:
        ``uint8`` array ``[F, 32, 32, 3]`` (RGB), ``F = frames``.
    """
    centres, half = trajectory(prompt, rng, jitter, frames)
    background = jittered_rgb(COLORS[prompt.bg], jitter.background, rng)
    fill = jittered_rgb(COLORS[prompt.color], jitter.color, rng)
    return np.stack([draw_antialiased(FRAME_SIZE, background, prompt.shape, cx, cy, half, fill) for cx, cy in centres])


def render_clips(
    prompts: Sequence[MovingShapesPrompt], seed: int, jitter: ClipJitter = ClipJitter(), frames: int = FRAMES
) -> np.ndarray:
    """Render ``prompts`` with one generator seeded by ``seed``: ``uint8 [N, F, 32, 32, 3]``, reproducible."""
    if not prompts:
        raise ValueError("prompts: expected at least one Moving Shapes prompt, got none")
    rng = np.random.default_rng(seed)
    return np.stack([render_clip(p, rng, jitter, frames) for p in prompts])
