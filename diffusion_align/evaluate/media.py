"""Images and clips on disk and in reports: lossless PNG storage, frame strips, animated GIFs, labelled grids.

A generated image is stored as a PNG; a clip of F frames as one PNG strip ``[H, F·W, 3]`` (frames left to right),
so scores computed from the file equal scores of the generated uint8 pixels. Grids put prompts in rows and models in
columns, each cell captioned with its scores: the picture people compare models by.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffusion_align.io import write_atomic

LINE_HEIGHT = 14  # pixels per caption line at FONT_SIZE
FONT_SIZE = 11
PADDING = 4  # pixels around captions
COLUMN_GAP = 6  # white pixels right of every grid column


def save_sample(pixels: np.ndarray, path: Path) -> int:
    """Save uint8 ``[H, W, 3]`` (an image) or ``[F, H, W, 3]`` (a clip, as a strip) as PNG; returns F (1 for images)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 [H, W, 3] or [F, H, W, 3] pixels, got {pixels.dtype} {pixels.shape}")
    strip = pixels if pixels.ndim == 3 else np.concatenate(list(pixels), axis=1)
    write_atomic(path, lambda temporary: Image.fromarray(strip).save(temporary, format="PNG"))
    return 1 if pixels.ndim == 3 else pixels.shape[0]


def load_frames(path: Path, num_frames: int) -> list[Image.Image]:
    """The frames of a stored sample: ``[image]`` for images, the F frames of a strip for clips.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated or not an image (the message names it).
    """
    try:
        with Image.open(path) as image:
            strip = image.convert("RGB")
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError) as error:  # PIL: truncated data, an unidentified format, a damaged PNG chunk
        raise ValueError(
            f"{path}: not a readable image ({error}); expected the PNG the evaluation saved (generate it again)"
        ) from error
    if strip.width % num_frames:
        raise ValueError(f"{path}: width {strip.width} px is not a multiple of num_frames={num_frames}")
    width = strip.width // num_frames
    return [strip.crop((i * width, 0, (i + 1) * width, strip.height)) for i in range(num_frames)]


def encode_image(image: Image.Image, image_format: str = "PNG") -> bytes:
    """PNG or JPEG (quality 90) bytes of ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def gif_bytes(frames: Sequence[Image.Image], frames_per_second: float = 8.0) -> bytes:
    """An animated, looping GIF of ``frames`` (palette-quantised: for viewing, never for scoring)."""
    buffer = io.BytesIO()
    first, *rest = list(frames)
    first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=round(1000 / frames_per_second), loop=0)
    return buffer.getvalue()


def fit_size(image: Image.Image, size: int) -> Image.Image:
    """Scale so the longer side is ``size`` px: nearest-neighbour up (tiny images stay crisp), Lanczos down."""
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class GridRow:
    """One row of a comparison grid: a label (the prompt) and one image and caption per column (model)."""

    label: str
    images: Sequence[Image.Image]
    captions: Sequence[str]


def _text_block(draw: ImageDraw.ImageDraw, font, text: str, box: tuple[int, int, int], fill=(20, 20, 20)) -> None:
    """Draw ``text`` wrapped to the width of ``box = (left, top, width)``."""
    left, top, width = box
    characters_per_line = max(8, width // 6)
    for line_number, line in enumerate(textwrap.wrap(text, characters_per_line)):
        draw.text((left + PADDING, top + PADDING + line_number * LINE_HEIGHT), line, fill=fill, font=font)


def comparison_grid(columns: Sequence[str], rows: Sequence[GridRow], cell_size: int = 160) -> Image.Image:
    """Prompts down, models across, scores under each image.

    Args:
        columns: column titles (model names).
        rows: one :class:`GridRow` per prompt (and sample), each with ``len(columns)`` images and captions.
        cell_size: the longer side of every image in pixels (clips' frame strips scale to this height instead).

    Returns:
        An RGB image: a header row of titles, then per row a label column and the captioned images.
    """
    font = ImageFont.load_default(size=FONT_SIZE)
    for row in rows:
        if len(row.images) != len(columns) or len(row.captions) != len(columns):
            raise ValueError(f"grid row {row.label!r}: {len(row.images)} images for {len(columns)} columns")
    cells = [[_cell_image(image, cell_size) for image in row.images] for row in rows]
    column_widths = [max(cell_row[i].width for cell_row in cells) + COLUMN_GAP for i in range(len(columns))]
    caption_lines = max(len(caption.splitlines()) for row in rows for caption in row.captions)
    label_width, header = cell_size + 40, LINE_HEIGHT + 2 * PADDING
    row_height = max(cell.height for cell_row in cells for cell in cell_row) + caption_lines * LINE_HEIGHT + 2 * PADDING
    canvas = Image.new("RGB", (label_width + sum(column_widths), header + row_height * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    lefts = np.cumsum([label_width, *column_widths[:-1]]).tolist()
    for left, title in zip(lefts, columns):
        draw.text((left + PADDING, PADDING), title, fill=(0, 0, 0), font=font)
    for row_number, (row, cell_row) in enumerate(zip(rows, cells)):
        top = header + row_number * row_height
        _text_block(draw, font, row.label, (0, top, label_width))
        for left, cell, caption in zip(lefts, cell_row, row.captions):
            canvas.paste(cell, (left, top))
            for line_number, line in enumerate(caption.splitlines()):
                position = (left + PADDING, top + cell.height + PADDING + line_number * LINE_HEIGHT)
                draw.text(position, line, fill=(40, 40, 40), font=font)
    return canvas


def _cell_image(image: Image.Image, cell_size: int) -> Image.Image:
    """Images fit a ``cell_size`` square; wide frame strips keep their aspect at ``cell_size`` height."""
    if image.width > 2 * image.height:
        scale = cell_size / image.height
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        return image.resize((round(image.width * scale), cell_size), resample)
    return fit_size(image, cell_size)
