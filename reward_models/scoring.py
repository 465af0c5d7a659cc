"""``diffalign score``: score a folder of images or a Parquet table with a reward model, write a score table.

Inputs (``cfg.input``):

* a folder of images (``.png .jpg .jpeg .webp .bmp``, sorted by name). Prompts come from a sidecar in the
  folder, ``prompts.csv`` (columns ``file_name`` and ``cfg.prompt_column``) or ``metadata.jsonl`` (one JSON
  object per line with those keys, the Hugging Face ``imagefolder`` convention); with no sidecar, from the file
  name (stem, ``_`` read as a space). Output columns: ``file_name, prompt, score``.
* a ``.parquet`` file with a prompt column and one or more image columns holding encoded image bytes (or
  ``{"bytes", "path"}`` structs as written by ``datasets``); Pick-a-Pic: ``prompt_column=caption
  image_columns=[jpg_0,jpg_1]``. Output: one row per (input row, image column): ``row, image_column, prompt,
  score``.

Ensembles add each member's raw score as ``score_<member>``; their ``score`` is normalised across the whole
input. The output (``.parquet`` or ``.csv``, by suffix) is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig
from PIL import Image

from diffusion_align.config import build
from diffusion_align.io import write_atomic
from reward_models.base import RewardModel
from reward_models.ensemble import RewardEnsemble

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROMPT_SIDECARS = ("prompts.csv", "metadata.jsonl")
OUTPUT_FORMATS = {".parquet": "parquet", ".csv": "csv"}

Chunk = tuple[dict[str, list], list[Image.Image], list[str]]  # (identifying columns, images, prompts)


def read_sidecar(path: Path, prompt_column: str) -> list[dict]:
    """Rows of ``prompts.csv`` or ``metadata.jsonl`` as dicts, each checked for ``file_name`` and the prompt."""
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        missing = [key for key in ("file_name", prompt_column) if not isinstance(row.get(key), str)]
        if missing:
            raise ValueError(f"{path}: row {i} has no string field(s) {missing}; found {sorted(row)}")
    return rows


def folder_prompts(folder: Path, files: list[str], prompt_column: str) -> list[str]:
    """One prompt per image file, from the folder's sidecar or the file names."""
    sidecars = [folder / name for name in PROMPT_SIDECARS if (folder / name).is_file()]
    if len(sidecars) > 1:
        raise ValueError(f"{folder}: found both {PROMPT_SIDECARS}; keep one prompt sidecar")
    if not sidecars:
        return [Path(name).stem.replace("_", " ") for name in files]
    prompts = {row["file_name"]: row[prompt_column] for row in read_sidecar(sidecars[0], prompt_column)}
    if unknown := sorted(prompts.keys() - set(files)):
        raise ValueError(f"{sidecars[0]}: lists files that are not images in {folder}: {unknown[:5]}")
    if unlisted := [name for name in files if name not in prompts]:
        raise ValueError(f"{sidecars[0]}: no prompt for image file(s) {unlisted[:5]}")
    return [prompts[name] for name in files]


def folder_chunks(folder: Path, prompt_column: str, chunk_size: int) -> Iterator[Chunk]:
    """Images of ``folder`` with their prompts, ``chunk_size`` at a time."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    prompts = folder_prompts(folder, files, prompt_column)
    for start in range(0, len(files), chunk_size):
        names = files[start : start + chunk_size]
        images = [Image.open(folder / name).convert("RGB") for name in names]
        yield {"file_name": names}, images, prompts[start : start + chunk_size]


def decode_image(value: object, where: str) -> Image.Image:
    """Encoded image bytes, or a ``{"bytes": ...}`` struct, -> RGB PIL image; ``where`` names the cell in errors."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes):
        raise ValueError(f"{where}: expected encoded image bytes or a {{'bytes': ...}} struct, got {type(data).__name__}")
    return Image.open(io.BytesIO(data)).convert("RGB")


def parquet_chunks(path: Path, prompt_column: str, image_columns: list[str], chunk_size: int) -> Iterator[Chunk]:
    """Images of a Parquet table (every image column of every row) with the row's prompt, by row batches."""
    parquet = pq.ParquetFile(path)
    available = parquet.schema_arrow.names
    if missing := [c for c in [prompt_column, *image_columns] if c not in available]:
        raise KeyError(f"{path}: missing column(s) {missing}; columns are {available}")
    first_row = 0
    for batch in parquet.iter_batches(batch_size=chunk_size, columns=[prompt_column, *image_columns]):
        data = batch.to_pydict()
        ids: dict[str, list] = {"row": [], "image_column": []}
        images, prompts = [], []
        for offset, prompt in enumerate(data[prompt_column]):
            row = first_row + offset
            if not isinstance(prompt, str):
                raise ValueError(f"{path}: row {row}, column '{prompt_column}': expected a string prompt, got {prompt!r}")
            for column in image_columns:
                images.append(decode_image(data[column][offset], f"{path}: row {row}, column '{column}'"))
                prompts.append(prompt)
                ids["row"].append(row)
                ids["image_column"].append(column)
        first_row += batch.num_rows
        yield ids, images, prompts


def score_chunks(model: RewardModel, chunks: Iterator[Chunk], batch_size: int) -> dict[str, list]:
    """Score every chunk; columns: the chunks' identifying columns, ``prompt``, ``score`` (+ ``score_<member>``)."""
    columns: dict[str, list] = {}
    raw: dict[str, list[torch.Tensor]] = {}
    for ids, images, prompts in chunks:
        for key, values in [*ids.items(), ("prompt", prompts)]:
            columns.setdefault(key, []).extend(values)
        if isinstance(model, RewardEnsemble):
            for name, scores in model.score_all(images, prompts, batch_size).items():
                raw.setdefault(name, []).append(scores)
        else:
            raw.setdefault("score", []).append(model.score(images, prompts, batch_size))
    totals = {name: torch.cat(parts) for name, parts in raw.items()}
    if isinstance(model, RewardEnsemble):
        columns["score"] = model.combine(totals).tolist()
        columns.update({f"score_{name}": scores.tolist() for name, scores in totals.items()})
    else:
        columns["score"] = totals["score"].tolist()
    return columns


def write_table_atomic(table: pa.Table, output: Path) -> Path:
    """Write ``table`` to ``output`` (``.parquet`` or ``.csv``) through a temporary file renamed into place."""
    fmt = OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise ValueError(f"output {output}: expected a suffix in {sorted(OUTPUT_FORMATS)}")
    writers = {"parquet": pq.write_table, "csv": pa_csv.write_csv}
    return write_atomic(output, lambda temporary: writers[fmt](table, temporary))


def run(cfg: DictConfig) -> Path:
    """Score ``cfg.input`` with ``cfg.reward`` and write ``cfg.output``; returns the output path.

    Config keys (``conf/score.yaml``): ``reward`` (a ``conf/reward`` node), ``input``, ``output``,
    ``prompt_column``, ``image_columns``, ``batch_size``, ``device``.
    """
    source, output = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"input {source}: no such folder or Parquet file")
    if source.is_file() and source.suffix != ".parquet":
        raise ValueError(f"input {source}: expected a folder of images or a .parquet file")
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"output {output}: expected a suffix in {sorted(OUTPUT_FORMATS)}")
    model: RewardModel = build(cfg.reward, device=cfg.device)
    if source.is_dir():
        chunks = folder_chunks(source, cfg.prompt_column, cfg.batch_size)
    else:
        chunks = parquet_chunks(source, cfg.prompt_column, list(cfg.image_columns), cfg.batch_size)
    columns = score_chunks(model, chunks, cfg.batch_size)
    table = pa.table(columns).replace_schema_metadata({"reward": type(model).__name__, "scale": model.scale})
    write_table_atomic(table, output)
    scores = torch.tensor(columns["score"])
    log.info("scored %d images with %s (%s): mean %.4f -> %s", len(scores), type(model).__name__, model.scale, scores.mean(), output)
    return output
