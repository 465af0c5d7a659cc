"""Procedural renderer of the Shapes world: the ground truth the tiny pipeline is trained on.

Each image is drawn at 4x resolution and downsampled (anti-aliased edges), with jitter in size, position and
colour so that a prompt maps to a distribution of images rather than one picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from diffusion_align.shapes.world import (
    COLORS,
    HALF_EXTENT,
    IMAGE_SIZE,
    POSITION_CENTERS,
    ShapesPrompt,
)

SUPERSAMPLE = 4


@dataclass(frozen=True)
class Jitter:
    """Random variation of rendered images.

    Attributes:
        size: relative half-extent jitter, uniform in ``[-size, size]``.
        position: centre jitter in pixels, uniform per axis in ``[-position, position]``, for placed objects.
        color: per-channel RGB jitter of the object colour, uniform in ``[-color, color]``.
        background: per-channel RGB jitter of the background colour.
    """

    size: float = 0.15
    position: float = 3.0
    color: float = 12.0
    background: float = 8.0


NO_JITTER = Jitter(0.0, 0.0, 0.0, 0.0)


def jittered_rgb(rgb: tuple[int, int, int], amount: float, rng: np.random.Generator) -> tuple[int, ...]:
    noisy = np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, size=3)
    return tuple(int(v) for v in np.clip(np.rint(noisy), 0, 255))


def object_geometry(
    prompt: ShapesPrompt, rng: np.random.Generator, jitter: Jitter = Jitter()
) -> tuple[float, float, float]:
    """Centre ``(x, y)`` and half-extent of the object, in pixels; unplaced objects land anywhere they fit."""
    half = HALF_EXTENT[prompt.size] * (1.0 + rng.uniform(-jitter.size, jitter.size))
    if prompt.position is None:
        low, high = half + 1.0, IMAGE_SIZE - half - 1.0
        return float(rng.uniform(low, high)), float(rng.uniform(low, high)), float(half)
    cx, cy = POSITION_CENTERS[prompt.position]
    dx, dy = rng.uniform(-jitter.position, jitter.position, size=2)
    return float(cx + dx), float(cy + dy), float(half)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float, fill) -> None:
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # triangle, pointing up, filling its bounding box
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)


def render(prompt: ShapesPrompt, rng: np.random.Generator, jitter: Jitter = Jitter()) -> np.ndarray:
    """Render one image of ``prompt``.

    Returns:
        ``uint8`` array ``[64, 64, 3]`` (RGB).
    """
    cx, cy, half = object_geometry(prompt, rng, jitter)
    background = jittered_rgb(COLORS[prompt.bg], jitter.background, rng)
    fill = jittered_rgb(COLORS[prompt.color], jitter.color, rng)
    return draw_antialiased(IMAGE_SIZE, background, prompt.shape, cx, cy, half, fill)


def draw_antialiased(size: int, background, shape: str, cx: float, cy: float, half: float, fill) -> np.ndarray:
    """One ``size`` x ``size`` image of ``shape`` (centre and half-extent in its pixels) on a flat background, drawn
    at :data:`SUPERSAMPLE` x resolution and box-downsampled: ``uint8 [size, size, 3]``."""
    s = SUPERSAMPLE
    canvas = Image.new("RGB", (size * s, size * s), background)
    draw_shape(ImageDraw.Draw(canvas), shape, cx * s, cy * s, half * s, fill)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))


def render_batch(prompts: list[ShapesPrompt], seed: int, jitter: Jitter = Jitter()) -> np.ndarray:
    """Render ``prompts`` with one generator seeded by ``seed``: ``uint8 [N, 64, 64, 3]``, reproducible."""
    rng = np.random.default_rng(seed)
    return np.stack([render(p, rng, jitter) for p in prompts])
