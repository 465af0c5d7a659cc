"""Ranked (Syn-Pic style) data: K candidates per prompt, best first, with their scores (RankDPO)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from diffusion_align.data.datasets import PreferenceDataset, RawItem, check_max_rows
from diffusion_align.data.formats import (
    RANKED_COLUMNS,
    DataFormatError,
    cell_bytes,
    check_columns,
    check_finite,
    check_text,
    decode_image,
)
from diffusion_align.data.parquet import ParquetRows
from diffusion_align.data.transforms import SamplingSettings


class RankedParquetDataset(PreferenceDataset):
    """Rows of the ranked table grouped by ``prompt_id``; an item holds K candidates ordered by ``rank``.

    Rows of one ``prompt_id`` may lie in several files; items come in order of each group's first row. Within a
    group the prompts must agree and the ranks must be 0 .. n-1 once each.

    Args:
        paths: Parquet files, directories or globs.
        resolution: square training size in pixels.
        k: candidates per item: the ``k`` best of each group (groups with fewer rows are bad). ``None``: all of
            them, and every group must have the same size.
        score_column: the column returned as ``scores`` ``[K]``: ``score`` (the ensemble) or a ``score_<reward>``
            (one reward model's raw scores); any other name is refused.
        random_crop, hflip, same_flip_for_pair, proportion_empty_prompts, seed: as for the pairwise dataset.
        on_bad_row: ``error`` | ``skip`` (a bad row takes its whole group with it; :attr:`bad_rows` counts rows).
        max_rows: keep only the first ``max_rows`` items (prompts).
        check_images: decode every image at construction (see the pairwise dataset).
        row_group_cache: row groups of image bytes kept in memory per worker.
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        resolution: int,
        k: int | None = None,
        score_column: str = "score",
        random_crop: bool = False,
        hflip: bool = True,
        same_flip_for_pair: bool = False,
        proportion_empty_prompts: float = 0.0,
        seed: int = 0,
        on_bad_row: str = "error",
        max_rows: int | None = None,
        check_images: bool = False,
        row_group_cache: int = 4,
    ) -> None:
        if score_column != "score" and not score_column.startswith("score_"):
            raise ValueError(
                f"score_column '{score_column}': expected 'score' (the ensemble) or a 'score_<reward>' column of "
                "the ranked table (e.g. 'score_pickscore')"
            )
        check_max_rows(max_rows)
        sampling = SamplingSettings(seed, hflip, same_flip_for_pair, proportion_empty_prompts)
        super().__init__(ParquetRows(paths, row_group_cache), resolution, random_crop, sampling, on_bad_row)
        if k is not None and k < 1:
            raise ValueError(f"k {k}: expected a positive number of candidates or None")
        self.k, self.score_column, self.max_rows, self.check_images = k, score_column, max_rows, check_images
        groups = self._read_groups()
        self._store([g for g in groups if self._check_group(g, groups)][:max_rows])
        if check_images:
            self._check_media()

    def __len__(self) -> int:
        return len(self._members)

    def content_options(self) -> dict:
        return {
            "k": self.k,
            "score_column": self.score_column,
            "on_bad_row": self.on_bad_row,
            "max_rows": self.max_rows,
            "check_images": self.check_images,
        }

    def _read_groups(self) -> list[dict]:
        """Validate every row's small columns and group them by ``prompt_id`` (bad rows mark their group bad)."""
        groups: dict[object, dict] = {}
        for file_index, path in enumerate(self.files.paths):
            schema = self.files.schema(file_index)
            score_names = [n for n in schema.names if n.startswith("score_")]
            required = {**RANKED_COLUMNS, self.score_column: "number"}
            check_columns(path, schema, required, {n: "number" for n in score_names})
            names = ["prompt_id", "prompt", "generator", "seed", "rank", "score", *score_names]
            columns = self.files.read_columns(file_index, names)
            for row in range(self.files.num_rows(file_index)):
                values = {n: columns[n][row] for n in names}
                group = groups.setdefault(
                    values["prompt_id"], {"id": values["prompt_id"], "rows": [], "bad": 0, "n": 0}
                )
                group["n"] += 1
                try:
                    group["rows"].append(self._parse_row(file_index, row, values, score_names))
                except DataFormatError as error:
                    self.reject(error)
                    group["bad"] += 1
        return list(groups.values())

    def _parse_row(self, file_index: int, row: int, values: dict, score_names: list[str]) -> dict:
        path = self.files.paths[file_index]
        if values["prompt_id"] is None:
            raise DataFormatError(
                path, "expected a prompt id, got null", row=row, field="prompt_id", reason="prompt_id: null"
            )
        prompt = check_text(values["prompt"], path, row, "prompt")
        check_text(values["generator"], path, row, "generator")
        for name in ("seed", "rank"):
            if values[name] is None or name == "rank" and values[name] < 0:
                raise DataFormatError(
                    path,
                    f"expected a non-negative integer, got {values[name]}",
                    row=row,
                    field=name,
                    reason=f"{name}: missing or negative",
                )
        scores = {n: check_finite(values[n], path, row, n) for n in ("score", *score_names)}
        return {
            "file": file_index,
            "row": row,
            "prompt": prompt,
            "rank": values["rank"],
            "score": scores[self.score_column],
        }

    def _group_error(self, group: dict, detail: str, field: str, reason: str) -> DataFormatError:
        first = group["rows"][0]
        rows = ", ".join(f"{self.files.paths[r['file']].name}:{r['row']}" for r in group["rows"])
        return DataFormatError(
            self.files.paths[first["file"]],
            f"prompt_id {group['id']!r} {detail} (rows {rows})",
            row=first["row"],
            field=field,
            reason=reason,
        )

    def _check_group(self, group: dict, groups: list[dict]) -> bool:
        """Whether a group is usable; a bad one is rejected (raised or counted) and left out."""
        rows = group["rows"]
        if group["bad"]:
            if rows:
                self.bad_rows.add(
                    self._group_error(group, "has a bad row", "prompt_id", "prompt_id: group has a bad row"),
                    len(rows),
                )
            return False
        ranks = sorted(r["rank"] for r in rows)
        size = self.k if self.k is not None else groups[0]["n"]
        error = None
        if len({r["prompt"] for r in rows}) > 1:
            error = self._group_error(
                group, "has different prompts", "prompt", "prompt: differs within a group"
            )
        elif ranks != list(range(len(rows))):
            error = self._group_error(
                group,
                f"has ranks {ranks}, expected 0 .. {len(rows) - 1} once each",
                "rank",
                "rank: not 0 .. n-1",
            )
        elif len(rows) < size or self.k is None and len(rows) != size:
            wanted = f"at least {self.k}" if self.k is not None else f"{size} (as the first group)"
            error = self._group_error(
                group, f"has {len(rows)} rows, expected {wanted}", "prompt_id", "group size"
            )
        if error is not None:
            self.reject(error, len(rows))
        return error is None

    def _store(self, groups: list[dict]) -> None:
        size = self.k if self.k is not None else (len(groups[0]["rows"]) if groups else 0)
        members = [sorted(g["rows"], key=lambda r: r["rank"])[:size] for g in groups]
        self._members = np.array(
            [[(r["file"], r["row"]) for r in m] for m in members], dtype=np.int64
        ).reshape(len(members), size, 2)
        self._scores = np.array([[r["score"] for r in m] for m in members], dtype=np.float32).reshape(
            len(members), size
        )
        self._prompts = pa.array([m[0]["prompt"] for m in members], type=pa.string())
        self._ids = [g["id"] for g in groups]

    def _check_media(self) -> None:
        keep = np.ones(len(self), dtype=bool)
        for index in range(len(self)):
            try:
                self.read(index)
            except DataFormatError as error:
                self.reject(error, self._members.shape[1])
                keep[index] = False
        self._members, self._scores = self._members[keep], self._scores[keep]
        self._prompts = self._prompts.filter(pa.array(keep))
        self._ids = [pid for pid, k in zip(self._ids, keep) if k]

    def prompt_id(self, index: int) -> object:
        return self._ids[index]

    def read(self, index: int) -> RawItem:
        candidates = []
        for file_index, row in self._members[index].tolist():
            path = self.files.paths[file_index]
            cell = self.files.cells(file_index, row, ("image",))["image"]
            candidates.append(decode_image(cell_bytes(cell, path, row, "image"), path, row, "image"))
        return RawItem(
            self._prompts[index].as_py(), candidates, {"scores": torch.from_numpy(self._scores[index].copy())}
        )
