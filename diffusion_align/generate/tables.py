"""Arrow tables in the layouts the trainer's readers take (:mod:`diffusion_align.data.formats`).

* ranked (:class:`~diffusion_align.data.RankedParquetDataset`): ``prompt_id``, ``prompt``, ``image`` (PNG) or
  ``video`` (``.npz`` frames), ``generator``, ``seed``, ``score`` (ensemble), ``rank`` (0 = best), one
  ``score_<member>`` per reward model (raw, in its own scale), plus ``prompt_index`` and ``candidate`` (position
  in the prompt's group: generators in order, then slot); videos add ``frame_score_<member>`` (one per frame).
* pairs (:class:`~diffusion_align.data.PairwiseParquetDataset` / ``VideoPairDataset``, Pick-a-Pic columns):
  ``caption``, ``jpg_0``/``jpg_1`` (PNG bytes; ``video_0``/``video_1`` for clips), ``label_0``, ``label_1``,
  plus ``prompt_id``, ``model_0``/``model_1``, ``seed_0``/``seed_1``, ``rank_0``/``rank_1``, ``score_0``/
  ``score_1`` and ``score_<member>_0``/``_1`` (read as per-image scores with ``score_prefix``).

Images are stored as PNG: lossless (the pixels scored are the pixels trained on) and what every reader decodes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image
from torch import Tensor

from diffusion_align.data.formats import encode_video
from diffusion_align.generate.pairs import Pair

MEDIA_COLUMN = {"image": "image", "video": "video"}
PAIR_COLUMNS = {"image": ("jpg_0", "jpg_1"), "video": ("video_0", "video_1")}


def prompt_id(prompt_index: int) -> str:
    """The ``prompt_id`` of the prompt at ``prompt_index`` in the prompt list."""
    return f"p{prompt_index:07d}"


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_media(pixels: np.ndarray, media: str) -> bytes:
    """An image as PNG, a clip ``[F, H, W, 3]`` as the ``.npz`` video cell."""
    return encode_png(pixels) if media == "image" else encode_video(pixels)


@dataclass
class Candidate:
    """One generated image or clip of a prompt group, with its encoded bytes."""

    prompt_index: int
    prompt: str
    generator: str
    slot: int
    seed: int
    encoded: bytes


@dataclass
class Group:
    """One prompt's candidates (in candidate order) with raw member scores ``{name: [K]}``, ensemble and rank."""

    candidates: list[Candidate]
    raw: dict[str, Tensor]
    score: Tensor
    rank: Tensor
    frame_raw: dict[str, list[Tensor]] | None = None


def ranked_table(groups: Sequence[Group], media: str) -> pa.Table:
    """One row per candidate, prompt by prompt."""
    names = list(groups[0].raw)
    columns: dict[str, list] = {key: [] for key in (
        "prompt_id", "prompt_index", "prompt", MEDIA_COLUMN[media], "generator", "seed", "candidate",
        *(f"score_{n}" for n in names), "score", "rank",
        *((f"frame_score_{n}" for n in names) if media == "video" else ()))}
    for group in groups:
        for c, candidate in enumerate(group.candidates):
            columns["prompt_id"].append(prompt_id(candidate.prompt_index))
            columns["prompt_index"].append(candidate.prompt_index)
            columns["prompt"].append(candidate.prompt)
            columns[MEDIA_COLUMN[media]].append(candidate.encoded)
            columns["generator"].append(candidate.generator)
            columns["seed"].append(candidate.seed)
            columns["candidate"].append(c)
            for n in names:
                columns[f"score_{n}"].append(float(group.raw[n][c]))
                if media == "video":
                    columns[f"frame_score_{n}"].append([float(v) for v in group.frame_raw[n][c]])
            columns["score"].append(float(group.score[c]))
            columns["rank"].append(int(group.rank[c]))
    return pa.table(columns, schema=ranked_schema(names, media))


def ranked_schema(names: Sequence[str], media: str) -> pa.Schema:
    fields = [("prompt_id", pa.string()), ("prompt_index", pa.int64()), ("prompt", pa.string()),
              (MEDIA_COLUMN[media], pa.binary()), ("generator", pa.string()), ("seed", pa.int64()),
              ("candidate", pa.int32()), *((f"score_{n}", pa.float64()) for n in names),
              ("score", pa.float64()), ("rank", pa.int32())]
    if media == "video":
        fields += [(f"frame_score_{n}", pa.list_(pa.float64())) for n in names]
    return pa.schema(fields)


def pairs_table(groups: Sequence[Group], pairs: Sequence[Pair], media: str) -> pa.Table:
    """One row per selected pair, Pick-a-Pic columns first."""
    names = list(groups[0].raw)
    first_col, second_col = PAIR_COLUMNS[media]
    rows = []
    for pair in pairs:
        group = groups[pair.group]
        a, b = group.candidates[pair.first], group.candidates[pair.second]
        row = {"caption": a.prompt, first_col: a.encoded, second_col: b.encoded, "label_0": pair.label_0,
               "label_1": 1.0 - pair.label_0, "prompt_id": prompt_id(a.prompt_index), "model_0": a.generator,
               "model_1": b.generator, "seed_0": a.seed, "seed_1": b.seed,
               "rank_0": int(group.rank[pair.first]), "rank_1": int(group.rank[pair.second]),
               "score_0": float(group.score[pair.first]), "score_1": float(group.score[pair.second])}
        for n in names:
            row[f"score_{n}_0"] = float(group.raw[n][pair.first])
            row[f"score_{n}_1"] = float(group.raw[n][pair.second])
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=pairs_schema(names, media))


def pairs_schema(names: Sequence[str], media: str) -> pa.Schema:
    first_col, second_col = PAIR_COLUMNS[media]
    fields = [("caption", pa.string()), (first_col, pa.binary()), (second_col, pa.binary()),
              ("label_0", pa.float64()), ("label_1", pa.float64()), ("prompt_id", pa.string()),
              ("model_0", pa.string()), ("model_1", pa.string()), ("seed_0", pa.int64()), ("seed_1", pa.int64()),
              ("rank_0", pa.int32()), ("rank_1", pa.int32()), ("score_0", pa.float64()), ("score_1", pa.float64())]
    for n in names:
        fields += [(f"score_{n}_0", pa.float64()), (f"score_{n}_1", pa.float64())]
    return pa.schema(fields)
