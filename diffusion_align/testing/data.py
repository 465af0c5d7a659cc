"""Writers of small, seeded, synthetic datasets in the on-disk layouts of :mod:`diffusion_align.data.formats`.

Images are a coloured square on a plain background (the caption says which colours), so a grid of decoded items
is easy to eyeball. Sizes alternate between landscape and portrait so resize and crop are exercised; encodings
cycle through JPEG, PNG and WebP. Row groups are small (4 rows by default) so row-group-wise reads are exercised.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from diffusion_align.data.formats import PAIRWISE_SCHEMA, RANKED_SCHEMA, VIDEO_PAIR_SCHEMA, encode_video

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (250, 140, 30),
}
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
PAIRWISE_TEST_SCHEMA = (
    PAIRWISE_SCHEMA.append(pa.field("model_0", pa.string()))
    .append(pa.field("model_1", pa.string()))
    .append(pa.field("ps_score_0", pa.float64()))
    .append(pa.field("ps_score_1", pa.float64()))
)
RANKED_TEST_SCHEMA = RANKED_SCHEMA.append(pa.field("score_pickscore", pa.float64())).append(
    pa.field("score_hps", pa.float64())
)


def square_image(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, str]:
    """A uint8 ``[height, width, 3]`` image of a square on a background, and a caption describing it."""
    background, square = rng.choice(list(COLOURS), size=2, replace=False)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = COLOURS[background]
    side = int(rng.integers(min(width, height) // 3, min(width, height) // 2 + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    pixels[top : top + side, left : left + side] = COLOURS[square]
    article = "an" if square[0] in "aeiou" else "a"
    return pixels, f"{article} {square} square on a {background} background"


def encode_image(pixels: np.ndarray, image_format: str = "PNG") -> bytes:
    """Encode uint8 ``[H, W, 3]`` pixels as JPEG (quality 95), PNG or WebP (lossless) bytes."""
    buffer = io.BytesIO()
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(image_format, {})
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def solid_image(
    colour: tuple[int, int, int], image_format: str = "PNG", width: int = 40, height: int = 32
) -> bytes:
    """Encoded bytes of a ``width`` x ``height`` image of one colour (exact after decoding with PNG/WebP)."""
    return encode_image(np.full((height, width, 3), colour, dtype=np.uint8), image_format)


def normalized_colour(colour: tuple[int, int, int]) -> np.ndarray:
    """What the transforms turn a solid colour into: ``[3]`` float32 in [-1, 1]."""
    return (np.asarray(colour, dtype=np.float32) / 255.0 - 0.5) / 0.5


def pairwise_row(
    caption: str | None, label_0: float | None, colours=((255, 0, 0), (0, 255, 0)), **extra
) -> dict:
    """One hand-made Pick-a-Pic row with solid-colour images; ``label_1 = 1 - label_0`` unless given."""
    row = {
        "caption": caption,
        "jpg_0": solid_image(colours[0]),
        "jpg_1": solid_image(colours[1]),
        "label_0": label_0,
    }
    if "label_1" not in extra and label_0 is not None:
        row["label_1"] = 1.0 - label_0
    row.update(extra)
    return row


def write_pairwise_rows(path: str | Path, rows: list[dict], row_group_size: int = 2) -> Path:
    """Write hand-made pairwise rows with the full test schema (keys a row lacks become nulls)."""
    full = [{name: row.get(name) for name in PAIRWISE_TEST_SCHEMA.names} for row in rows]
    return write_table(path, full, PAIRWISE_TEST_SCHEMA, row_group_size=row_group_size)


def write_table(
    path: str | Path, rows: list[dict], schema: pa.Schema | None = None, row_group_size: int = 4
) -> Path:
    """Write ``rows`` (dicts) to one Parquet file with small row groups; ``schema`` None infers it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def _split_write(
    directory: str | Path,
    rows: list[dict],
    schema: pa.Schema,
    n_files: int,
    row_group_size: int,
    stem: str = "train",
) -> list[Path]:
    parts = np.array_split(np.arange(len(rows)), n_files)
    return [
        write_table(
            Path(directory) / f"{stem}-{i:05d}.parquet", [rows[j] for j in part], schema, row_group_size
        )
        for i, part in enumerate(parts)
    ]


def _labels(n_rows: int, ties: int) -> list[float]:
    """``ties`` rows of 0.5 spread over the table; the others alternate 1, 0, 1, ..."""
    tie_rows = {int((j + 0.5) * n_rows / ties) for j in range(ties)} if ties else set()
    labels, decisive = [], 0
    for row in range(n_rows):
        if row in tie_rows:
            labels.append(0.5)
        else:
            labels.append(1.0 if decisive % 2 == 0 else 0.0)
            decisive += 1
    return labels


def _size(row: int, resolution: int) -> tuple[int, int]:
    long_side = resolution * 5 // 4
    return (long_side, resolution) if row % 2 == 0 else (resolution, long_side)


def write_tiny_pairwise_parquet(
    path: str | Path,
    n_rows: int = 16,
    resolution: int = 32,
    seed: int = 0,
    ties: int = 2,
    n_files: int = 1,
    row_group_size: int = 4,
) -> list[Path]:
    """Write a Pick-a-Pic-format pairwise dataset into directory ``path`` (``train-00000.parquet`` ...).

    Columns: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` (``ties`` rows at 0.5, the others alternating 1 and
    0, so the winner-first swap is exercised), ``label_1 = 1 - label_0``, ``model_0``/``model_1`` and
    ``ps_score_0``/``ps_score_1`` (the preferred image scores higher; ties score equal).

    Returns:
        the written files, in order.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for row, label_0 in enumerate(_labels(n_rows, ties)):
        width, height = _size(row, resolution)
        (image_0, caption), (image_1, _) = square_image(rng, width, height), square_image(rng, width, height)
        fmt = IMAGE_FORMATS[row % len(IMAGE_FORMATS)]
        base = float(rng.uniform(18.0, 22.0))
        rows.append(
            {
                "caption": caption,
                "jpg_0": encode_image(image_0, fmt),
                "jpg_1": encode_image(image_1, fmt),
                "label_0": label_0,
                "label_1": 1.0 - label_0,
                "model_0": "tiny-a",
                "model_1": "tiny-b",
                "ps_score_0": base + label_0,
                "ps_score_1": base + 1.0 - label_0,
            }
        )
    return _split_write(path, rows, PAIRWISE_TEST_SCHEMA, n_files, row_group_size)


def write_tiny_ranked_parquet(
    path: str | Path,
    n_prompts: int = 4,
    k: int = 4,
    resolution: int = 32,
    seed: int = 0,
    n_files: int = 1,
    row_group_size: int = 4,
) -> list[Path]:
    """Write a ranked table into directory ``path``: ``k`` rows per ``prompt_id`` in shuffled order.

    Columns: ``prompt_id`` (``p0000`` ...), ``prompt``, ``image`` (PNG/JPEG/WebP), ``generator``, ``seed``,
    ``score_pickscore``, ``score_hps``, ``score`` (their mean) and ``rank`` (0 = highest ``score``).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for prompt_index in range(n_prompts):
        _, prompt = square_image(rng, resolution, resolution)
        pickscore, hps = rng.normal(21.0, 1.0, size=k), rng.normal(0.27, 0.02, size=k)
        score = (pickscore + hps) / 2.0
        ranks = np.argsort(np.argsort(-score))
        for j in range(k):
            image, _ = square_image(rng, *_size(j, resolution))
            rows.append(
                {
                    "prompt_id": f"p{prompt_index:04d}",
                    "prompt": prompt,
                    "image": encode_image(image, IMAGE_FORMATS[j % len(IMAGE_FORMATS)]),
                    "generator": f"tiny-{j % 2}",
                    "seed": 1000 * prompt_index + j,
                    "score": float(score[j]),
                    "rank": int(ranks[j]),
                    "score_pickscore": float(pickscore[j]),
                    "score_hps": float(hps[j]),
                }
            )
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return _split_write(path, rows, RANKED_TEST_SCHEMA, n_files, row_group_size)


def moving_square_video(
    rng: np.random.Generator, num_frames: int, width: int, height: int
) -> tuple[np.ndarray, str]:
    """uint8 frames ``[F, height, width, 3]`` of a square sliding right over a background, and its caption."""
    first, caption = square_image(rng, width, height)
    return np.stack([np.roll(first, shift=2 * f, axis=1) for f in range(num_frames)]), caption


def write_tiny_video_pairs_parquet(
    path: str | Path,
    n_rows: int = 8,
    num_frames: int = 4,
    resolution: int = 32,
    segments: int = 2,
    seed: int = 0,
    ties: int = 1,
    n_files: int = 1,
    row_group_size: int = 4,
) -> list[Path]:
    """Write video pairs into directory ``path``: ``caption``, ``video_0``/``video_1`` (``.npz`` frames),
    ``label_0`` (as the pairwise writer), ``label_1`` and ``segment_label_0`` (``segments`` values in {0, 0.5, 1})."""
    rng = np.random.default_rng(seed)
    rows = []
    for row, label_0 in enumerate(_labels(n_rows, ties)):
        width, height = _size(row, resolution)
        (clip_0, caption), (clip_1, _) = (
            moving_square_video(rng, num_frames, width, height) for _ in range(2)
        )
        rows.append(
            {
                "caption": caption,
                "video_0": encode_video(clip_0),
                "video_1": encode_video(clip_1),
                "label_0": label_0,
                "label_1": 1.0 - label_0,
                "segment_label_0": [float(v) for v in rng.choice([0.0, 0.5, 1.0], size=segments)],
            }
        )
    return _split_write(path, rows, VIDEO_PAIR_SCHEMA, n_files, row_group_size)
