"""The on-disk dataset schemas, their validation, and the decoding of image and video cells.

Three layouts, all Parquet (``datasets.load_dataset("parquet", ...)`` reads each of them):

* **Pairwise** (Pick-a-Pic v2 column names, so DiffusionDPO, the diffusers DPO scripts and MaPO read our files):
  ``caption`` (string, may be empty, never null), ``jpg_0``/``jpg_1`` (encoded JPEG, PNG or WebP bytes),
  ``label_0`` (float: 1 = ``jpg_0`` preferred, 0 = ``jpg_1`` preferred, 0.5 = tie), optional ``label_1``
  (must equal ``1 - label_0``) and optional per-image score columns ``<prefix>_0``/``<prefix>_1``
  (e.g. SmPO's ``ps_score_0``/``ps_score_1``). Other columns (``model_0``, ``user_id`` ...) are ignored.
* **Ranked** (one row per candidate, K rows per ``prompt_id``): ``prompt_id`` (string or integer), ``prompt``,
  ``image`` (bytes), ``generator`` (string), ``seed`` (integer), ``score_<reward>`` (raw per-reward-model scores),
  ``score`` (the ensemble score) and ``rank`` (0 = best).
* **Video pairs**: ``caption``, ``video_0``/``video_1``, ``label_0``, optional ``label_1`` and optional
  ``segment_label_0`` (list of floats in {0, 0.5, 1}, one per temporal segment, 1 = ``video_0`` better there).
  A video cell is the bytes of an ``.npz`` archive (``numpy.savez``/``savez_compressed``) holding one array
  ``frames``: uint8 ``[F, H, W, 3]`` RGB.

An image column may also be a ``struct<bytes: binary, path: string>`` (the layout ``datasets.Image`` writes); only
its bytes are read: a ``path`` in a dataset is never opened or written to.
Every error is a :class:`DataFormatError` naming the file, the row (its index in that file) and the field.

Captions: an empty caption is a valid row (the unconditional prompt, as prompt dropout makes it); a caption longer
than the text encoder's window (77 CLIP tokens; T5's ``max_sequence_length``) is kept here and truncated when it is
encoded, by the pipeline's own ``encode_prompt``, which logs a warning quoting the dropped words: the official
Diffusion-DPO scripts and diffusers' pipelines at inference truncate the same way, so training and sampling see the
same tokens.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.types as pat
from PIL import Image

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # refuse to decode larger images (a corrupt header can claim any size)
VIDEO_FRAMES_KEY = "frames"
FLOAT32_MAX = float(np.finfo(np.float32).max)

PAIRWISE_SCHEMA = pa.schema(
    [
        pa.field("caption", pa.string()),
        pa.field("jpg_0", pa.binary()),
        pa.field("jpg_1", pa.binary()),
        pa.field("label_0", pa.float64()),
        pa.field("label_1", pa.float64()),
    ]
)
RANKED_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("generator", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("score", pa.float64()),
        pa.field("rank", pa.int32()),
    ]
)
VIDEO_PAIR_SCHEMA = pa.schema(
    [
        pa.field("caption", pa.string()),
        pa.field("video_0", pa.binary()),
        pa.field("video_1", pa.binary()),
        pa.field("label_0", pa.float64()),
        pa.field("label_1", pa.float64()),
        pa.field("segment_label_0", pa.list_(pa.float64())),
    ]
)

# column kind -> (predicate on the Arrow type, words for the error message)
_KINDS = {
    "string": (
        lambda t: pat.is_string(t) or pat.is_large_string(t) or pat.is_string_view(t),
        "a string column",
    ),
    "bytes": (
        lambda t: _is_binary(t) or _is_image_struct(t),
        "a binary column (or struct<bytes: binary, path: string>)",
    ),
    "number": (lambda t: pat.is_floating(t) or pat.is_integer(t), "a float or integer column"),
    "integer": (pat.is_integer, "an integer column"),
    "id": (
        lambda t: pat.is_integer(t) or pat.is_string(t) or pat.is_large_string(t),
        "a string or integer column",
    ),
    "number_list": (
        lambda t: (
            (pat.is_list(t) or pat.is_large_list(t))
            and (pat.is_floating(t.value_type) or pat.is_integer(t.value_type))
        ),
        "a list<float> column",
    ),
}
PAIRWISE_COLUMNS = {"caption": "string", "jpg_0": "bytes", "jpg_1": "bytes", "label_0": "number"}
RANKED_COLUMNS = {
    "prompt_id": "id",
    "prompt": "string",
    "image": "bytes",
    "generator": "string",
    "seed": "integer",
    "score": "number",
    "rank": "integer",
}
VIDEO_PAIR_COLUMNS = {"caption": "string", "video_0": "bytes", "video_1": "bytes", "label_0": "number"}


def _is_binary(arrow_type: pa.DataType) -> bool:
    return pat.is_binary(arrow_type) or pat.is_large_binary(arrow_type) or pat.is_binary_view(arrow_type)


def _is_image_struct(arrow_type: pa.DataType) -> bool:
    """``struct<bytes: binary, ...>`` (large_binary too), the layout ``datasets.Image`` writes; ``bytes`` as a
    string is refused (its cells are text, not encoded images)."""
    return (
        pat.is_struct(arrow_type)
        and arrow_type.get_field_index("bytes") >= 0
        and _is_binary(arrow_type.field("bytes").type)
    )


class DataFormatError(ValueError):
    """A dataset file, row or cell does not match its schema.

    Attributes:
        file: the file (as given or globbed).
        row: the row's index in that file (``None`` for file-level errors).
        field: the column.
        reason: a short category (``"label_0: not in {0, 0.5, 1}"``) used to count skipped rows.
    """

    def __init__(
        self,
        file: str | Path,
        detail: str,
        *,
        row: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.file, self.row, self.field = str(file), row, field
        self.reason = reason or (f"{field}: {detail}" if field else detail)
        where = (
            self.file + (f" row {row}" if row is not None else "") + (f" field '{field}'" if field else "")
        )
        super().__init__(f"{where}: {detail}")


@dataclass
class BadRowReport:
    """What ``on_bad_row="skip"`` left out: skipped rows per reason, and the first few full messages."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 10

    def add(self, error: DataFormatError, rows: int = 1) -> None:
        self.counts[error.reason] += rows
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        lines = [f"{self.total} rows skipped"] + [
            f"  {n:>8}  {reason}" for reason, n in self.counts.most_common()
        ]
        return "\n".join(lines)


def check_columns(
    file: str | Path, schema: pa.Schema, required: dict[str, str], optional: dict[str, str]
) -> None:
    """Raise :class:`DataFormatError` if a required column is missing or any known column has the wrong type.

    Args:
        file: named in the message.
        schema: the file's Arrow schema.
        required, optional: column name -> kind (``string``, ``bytes``, ``number``, ``integer``, ``id``,
            ``number_list``).
    """
    present = schema.names
    for name in required:
        if name not in present:
            raise DataFormatError(
                file,
                f"missing column '{name}' (required: {', '.join(required)}; present: {', '.join(present)})",
            )
    for name, kind in {**required, **optional}.items():
        if name in present:
            accepts, words = _KINDS[kind]
            arrow_type = schema.field(name).type
            if not accepts(arrow_type):
                raise DataFormatError(
                    file, f"expected {words}, got {arrow_type}", field=name, reason=f"{name}: type"
                )


def check_text(value: object, file: str | Path, row: int, name: str) -> str:
    """A caption or prompt: any string, empty allowed; null rejected."""
    if value is None:
        raise DataFormatError(
            file, "expected a string (empty allowed), got null", row=row, field=name, reason=f"{name}: null"
        )
    if not isinstance(value, str):
        raise DataFormatError(file, f"expected a string, got {type(value).__name__}", row=row, field=name)
    return value


def check_finite(value: object, file: str | Path, row: int, name: str) -> float:
    """A score: a finite number that stays finite as float32 (scores are stored and trained on as float32)."""
    if value is None:
        raise DataFormatError(
            file, "expected a finite number, got null", row=row, field=name, reason=f"{name}: null"
        )
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        overflow = f" (beyond float32's ±{FLOAT32_MAX:.4g}, the dtype scores are kept in)" if math.isfinite(value) else ""
        raise DataFormatError(
            file,
            f"expected a finite number, got {value}{overflow}",
            row=row,
            field=name,
            reason=f"{name}: not finite",
        )
    return float(value)


def check_label(value: object, file: str | Path, row: int, name: str = "label_0") -> float:
    """A Pick-a-Pic label: exactly 0, 0.5 or 1 (NaN and null rejected)."""
    if value is None:
        raise DataFormatError(
            file, "expected 0, 0.5 or 1, got null", row=row, field=name, reason=f"{name}: null"
        )
    if isinstance(value, float) and math.isnan(value):
        raise DataFormatError(
            file, "expected 0, 0.5 or 1, got NaN", row=row, field=name, reason=f"{name}: NaN"
        )
    if value not in (0, 0.5, 1):
        raise DataFormatError(
            file,
            f"expected 0, 0.5 or 1, got {value}",
            row=row,
            field=name,
            reason=f"{name}: not in {{0, 0.5, 1}}",
        )
    return float(value)


def check_label_1(label_0: float, label_1: object, file: str | Path, row: int) -> None:
    """``label_1``, when the column exists, must be ``1 - label_0``."""
    if label_1 is None or label_1 != 1.0 - label_0:  # NaN differs from everything
        raise DataFormatError(
            file,
            f"expected 1 - label_0 = {1.0 - label_0}, got {label_1}",
            row=row,
            field="label_1",
            reason="label_1: not 1 - label_0",
        )


def check_segment_labels(
    value: object, file: str | Path, row: int, name: str = "segment_label_0"
) -> list[float]:
    """Per-segment labels: a non-empty list of values in {0, 0.5, 1}."""
    if value is None or len(value) == 0:
        raise DataFormatError(
            file,
            f"expected a non-empty list of 0, 0.5 or 1, got {value}",
            row=row,
            field=name,
            reason=f"{name}: empty",
        )
    return [check_label(v, file, row, name) for v in value]


def cell_bytes(value: object, file: str | Path, row: int, name: str) -> bytes:
    """The encoded bytes of an image/video cell (binary or ``struct<bytes, path>``); null or empty rejected."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if value is None or len(value) == 0:
        kind = "null" if value is None else "empty"
        raise DataFormatError(
            file, f"expected encoded bytes, got {kind}", row=row, field=name, reason=f"{name}: {kind}"
        )
    return bytes(value)


def decode_image(data: bytes, file: str | Path, row: int, name: str) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to an RGB PIL image; corrupt or truncated bytes raise :class:`DataFormatError`."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS or width == 0 or height == 0:
                raise ValueError(f"image size {width}x{height} outside 1 .. {MAX_IMAGE_PIXELS} pixels")
            image.load()
            return image.convert("RGB")
    except (
        Exception
    ) as exc:  # PIL reports corrupt data as OSError, SyntaxError, ValueError, struct.error, ...
        raise DataFormatError(
            file,
            f"expected JPEG, PNG or WebP bytes, got {len(data)} bytes that do not decode ({exc})",
            row=row,
            field=name,
            reason=f"{name}: undecodable image",
        ) from exc


def decode_video(data: bytes, file: str | Path, row: int, name: str) -> np.ndarray:
    """Decode an ``.npz`` video cell to uint8 frames ``[F, H, W, 3]``; anything else raises :class:`DataFormatError`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            frames = archive[VIDEO_FRAMES_KEY]
    except Exception as exc:  # zipfile, zlib and numpy report corrupt archives with many exception types
        raise DataFormatError(
            file,
            f"expected an .npz archive with a '{VIDEO_FRAMES_KEY}' array, got {len(data)} bytes that do not "
            f"decode ({exc!r})",
            row=row,
            field=name,
            reason=f"{name}: undecodable video",
        ) from exc
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) == 0:
        raise DataFormatError(
            file,
            f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {list(frames.shape)}",
            row=row,
            field=name,
            reason=f"{name}: bad frame array",
        )
    return frames


def encode_video(frames: np.ndarray) -> bytes:
    """The documented video cell encoding: ``frames`` uint8 ``[F, H, W, 3]`` in a compressed ``.npz``."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{VIDEO_FRAMES_KEY: frames})
    return buffer.getvalue()
