"""Map-style datasets over Parquet preference data, yielding the items :func:`collate_preference` batches.

An item is a dict: ``index`` (int, the item's position in the dataset: seeds its augmentation, prompt dropout and
the trainer's noise), ``prompt`` (str, ``""`` when dropped), ``pixel_values`` ``[K, 3, H, W]`` (video
``[K, F, 3, H, W]``) float32 in [-1, 1] with the winner (or best rank) first, and per dataset ``label`` (0-dim
float32), ``scores`` ``[K]``, ``desirable`` ``[K]`` bool, ``segment_label`` ``[S]``.

Augmentation and prompt dropout are fixed by ``(seed, epoch, index)``: call :meth:`set_epoch` before each epoch
(with ``persistent_workers=True`` the workers keep the epoch they were started with, so leave it off).
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffusion_align.data.formats import (
    PAIRWISE_COLUMNS,
    BadRowReport,
    DataFormatError,
    cell_bytes,
    check_columns,
    check_finite,
    check_label,
    check_label_1,
    check_text,
    decode_image,
)
from diffusion_align.data.parquet import ParquetRows
from diffusion_align.data.transforms import PreferenceTransform, SamplingSettings, item_rng
from diffusion_align.losses.ties import resolve_ties

BAD_ROW_MODES = ("error", "skip")


def check_max_rows(max_rows: int | None) -> None:
    """``max_rows`` is ``None`` (all items) or a non-negative count (a negative one would silently keep nothing)."""
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows {max_rows}: expected None (all items) or a non-negative number of items")


@dataclass
class RawItem:
    """One item before augmentation: the caption, K decoded candidates in item order, and tensor metadata."""

    prompt: str
    candidates: list
    meta: dict[str, Tensor]


class PreferenceDataset(Dataset, abc.ABC):
    """What every on-disk dataset shares: seeded augmentation, prompt dropout, bad-row policy and cache hooks.

    Args:
        files: the Parquet files read.
        resolution, random_crop: see :class:`PreferenceTransform`.
        sampling: per-item random choices (:class:`SamplingSettings`).
        on_bad_row: ``error`` raises the first :class:`DataFormatError`; ``skip`` counts bad rows in
            :attr:`bad_rows` and leaves them out. A file whose columns are missing or mistyped always raises.
    """

    def __init__(
        self,
        files: ParquetRows,
        resolution: int,
        random_crop: bool,
        sampling: SamplingSettings,
        on_bad_row: str,
    ) -> None:
        if on_bad_row not in BAD_ROW_MODES:
            raise ValueError(f"on_bad_row '{on_bad_row}': expected one of {', '.join(BAD_ROW_MODES)}")
        self.files = files
        self.transform = PreferenceTransform(resolution, random_crop)
        self.sampling = sampling
        self.on_bad_row = on_bad_row
        self.bad_rows = BadRowReport()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation and prompt dropout the next items use."""
        self.epoch = epoch

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items."""

    @abc.abstractmethod
    def read(self, index: int) -> RawItem:
        """Decode item ``index`` (no augmentation, no prompt dropout)."""

    @abc.abstractmethod
    def content_options(self) -> dict:
        """The constructor options that change the items (recorded in the cache fingerprint)."""

    def reject(self, error: DataFormatError, rows: int = 1) -> None:
        """Raise ``error`` (``on_bad_row="error"``) or count it in :attr:`bad_rows` (``"skip"``)."""
        if self.on_bad_row == "error":
            raise error
        self.bad_rows.add(error, rows)

    def candidate_pixels(self, candidate: Image.Image, flip: bool, rng) -> Tensor:
        """One decoded candidate -> ``[3, H, W]`` in [-1, 1] (video datasets return ``[F, 3, H, W]``)."""
        return self.transform(candidate, flip, rng)

    def _checked_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0 .. {len(self) - 1}")
        return index

    def __getitem__(self, index: int) -> dict:
        index = self._checked_index(index)
        raw = self.read(index)
        flips = self.sampling.flips(self.epoch, index, len(raw.candidates))
        rng = item_rng(self.sampling.seed, self.epoch, index, "crop")
        pixels = torch.stack([self.candidate_pixels(c, flip, rng) for c, flip in zip(raw.candidates, flips)])
        prompt = "" if self.sampling.drop_prompt(self.epoch, index) else raw.prompt
        return {"index": index, "prompt": prompt, "pixel_values": pixels, **raw.meta}

    def cache_source(self, index: int) -> tuple[str, Tensor, dict[str, Tensor]]:
        """What the latent cache stores for one item: the caption before dropout, the pixels in every orientation
        the sampling can pick (``[O, K, ...]``: O = 2, unflipped then flipped, when ``hflip`` is on, else 1), and
        the metadata tensors."""
        if self.transform.random_crop:
            raise ValueError(
                "random_crop=True cannot be cached (every epoch crops anew): use random_crop=False"
            )
        index = self._checked_index(index)
        raw = self.read(index)
        rng = item_rng(self.sampling.seed, 0, index, "crop")  # unused by center crops
        orientations = (False, True) if self.sampling.hflip else (False,)
        pixels = [
            torch.stack([self.candidate_pixels(c, flip, rng) for c in raw.candidates])
            for flip in orientations
        ]
        return raw.prompt, torch.stack(pixels), raw.meta

    def content_fingerprint(self) -> dict:
        """Everything that determines the cached tensors (files with sizes and mtimes, transforms, options)."""
        return {
            "dataset": type(self).__name__,
            "files": self.files.fingerprint(),
            "transform": self.transform.describe(),
            "hflip": self.sampling.hflip,
            "num_items": len(self),
            **self.content_options(),
        }


class PairwiseParquetDataset(PreferenceDataset):
    """Pick-a-Pic style pairs (see :mod:`diffusion_align.data.formats`), winner first.

    Args:
        paths: Parquet files, directories or globs.
        resolution: square training size in pixels.
        tie_policy: ``drop`` (default, for any dataset) | ``half`` | ``smooth`` (:func:`resolve_ties`).
        label_smoothing: ε for ``smooth``.
        random_crop, hflip, same_flip_for_pair, proportion_empty_prompts, seed: see :class:`SamplingSettings`
            and :class:`PreferenceTransform`.
        on_bad_row: ``error`` raises on the first bad row; ``skip`` drops it and counts it in :attr:`bad_rows`.
        max_rows: keep only the first ``max_rows`` items (after ties and bad rows).
        score_prefix: read per-image scores from ``<prefix>_0``/``<prefix>_1`` (e.g. ``ps_score``) as ``scores``.
        check_images: decode every image once at construction, so corrupt ones follow ``on_bad_row``; otherwise a
            corrupt image raises :class:`DataFormatError` when its item is read.
        row_group_cache: row groups of image bytes kept in memory per worker.
    """

    media_columns: tuple[str, str] = ("jpg_0", "jpg_1")
    uid_columns: tuple[str, str] = ("image_0_uid", "image_1_uid")  # Pick-a-Pic's image identities
    required_columns: dict[str, str] = PAIRWISE_COLUMNS

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        resolution: int,
        tie_policy: str = "drop",
        label_smoothing: float = 0.0,
        random_crop: bool = False,
        hflip: bool = True,
        same_flip_for_pair: bool = False,
        proportion_empty_prompts: float = 0.0,
        seed: int = 0,
        on_bad_row: str = "error",
        max_rows: int | None = None,
        score_prefix: str | None = None,
        check_images: bool = False,
        row_group_cache: int = 4,
    ) -> None:
        check_max_rows(max_rows)
        sampling = SamplingSettings(seed, hflip, same_flip_for_pair, proportion_empty_prompts)
        super().__init__(ParquetRows(paths, row_group_cache), resolution, random_crop, sampling, on_bad_row)
        # validate the policy and the smoothing up front, not at the first file
        resolve_ties(torch.ones(1), policy=tie_policy, label_smoothing=label_smoothing)
        self.tie_policy, self.label_smoothing = tie_policy, label_smoothing
        self.max_rows, self.check_images = max_rows, check_images
        self.score_prefix = score_prefix
        self.score_columns = (f"{score_prefix}_0", f"{score_prefix}_1") if score_prefix else ()
        self.num_ties_dropped = 0
        self._scan()
        if check_images:
            self._check_media()

    def __len__(self) -> int:
        return len(self._file)

    def content_options(self) -> dict:
        return {
            "tie_policy": self.tie_policy,
            "label_smoothing": self.label_smoothing,
            "score_prefix": self.score_prefix,
            "on_bad_row": self.on_bad_row,
            "max_rows": self.max_rows,
            "check_images": self.check_images,
        }

    def locate(self, index: int) -> tuple[Path, int]:
        """The file and row (in that file) an item comes from."""
        return self.files.paths[int(self._file[index])], int(self._row[index])

    def item_labels(self) -> np.ndarray:
        """``[N]`` float32: every item's label (1 = its first candidate preferred, 0.5 = a tie kept by ``half``)."""
        return self._label.copy()

    def image_keys(self) -> np.ndarray:
        """``[N, 2]`` identities (str) of every item's two candidates, in item order (winner first).

        Pick-a-Pic's ``image_0_uid``/``image_1_uid`` (``"uid:<value>"``) when every file has both columns; else the
        SHA-256 of each cell's encoded bytes (``"sha256:<hex>"``), which reads every image once.

        Raises:
            DataFormatError: a uid column is mistyped, a uid is null, or (hashing) a cell is null or empty.
        """
        by_uid = all(
            set(self.uid_columns) <= set(self.files.schema(i).names) for i in range(len(self.files.paths))
        )
        keys = np.empty((len(self), 2), dtype=object)
        for file_index in range(len(self.files.paths)):
            positions = {int(self._row[i]): i for i in np.flatnonzero(self._file == file_index)}
            if positions:
                file_keys = self._uid_keys if by_uid else self._hashed_keys
                for row, pair in file_keys(file_index, positions).items():
                    keys[positions[row]] = pair
        keys[self._swap] = keys[self._swap][:, ::-1]
        return keys

    def _uid_keys(self, file_index: int, rows: Collection[int]) -> dict[int, tuple[str, str]]:
        path = self.files.paths[file_index]
        check_columns(path, self.files.schema(file_index), {}, {name: "id" for name in self.uid_columns})
        columns = self.files.read_columns(file_index, self.uid_columns)
        keys = {}
        for row in rows:
            for name in self.uid_columns:
                if columns[name][row] is None:
                    raise DataFormatError(
                        path, "expected an image uid, got null", row=row, field=name, reason=f"{name}: null"
                    )
            keys[row] = tuple(f"uid:{columns[name][row]}" for name in self.uid_columns)
        return keys

    def _hashed_keys(self, file_index: int, rows: Collection[int]) -> dict[int, tuple[str, str]]:
        path, keys = self.files.paths[file_index], {}
        for first, columns in self.files.iter_row_groups(file_index, self.media_columns, rows):
            for offset in range(len(columns[self.media_columns[0]])):
                row = first + offset
                if row in rows:
                    keys[row] = tuple(
                        "sha256:" + hashlib.sha256(cell_bytes(columns[n][offset], path, row, n)).hexdigest()
                        for n in self.media_columns
                    )
        return keys

    # ---- scanning: small columns only --------------------------------------------------------------------------
    def optional_columns(self) -> dict[str, str]:
        return {"label_1": "number"}

    def parse_row(self, file_index: int, row: int, values: dict) -> dict:
        """Validate one row's small columns; return ``prompt``, ``label_0``, ``scores`` (and subclass fields)."""
        path = self.files.paths[file_index]
        prompt = check_text(values["caption"], path, row, "caption")
        label_0 = check_label(values["label_0"], path, row)
        if "label_1" in values:
            check_label_1(label_0, values["label_1"], path, row)
        scores = [check_finite(values[name], path, row, name) for name in self.score_columns]
        return {"prompt": prompt, "label_0": label_0, "scores": scores}

    def check_schema(
        self, path: Path, schema: pa.Schema, required: dict[str, str], optional: dict[str, str]
    ) -> None:
        """Raise :class:`DataFormatError` if one file's columns are missing or mistyped (see :func:`check_columns`)."""
        check_columns(path, schema, required, optional)

    def _scan(self) -> None:
        records: list[dict] = []
        for file_index in range(len(self.files.paths)):
            if self.max_rows is not None and len(records) >= self.max_rows:
                break
            records.extend(self._resolve_ties(self._scan_file(file_index)))
        self._store(records[: self.max_rows])

    def _scan_file(self, file_index: int) -> list[dict]:
        """Check one file's columns, then every row's small columns; return the valid rows' records."""
        path, schema = self.files.paths[file_index], self.files.schema(file_index)
        optional = self.optional_columns()
        required = {**self.required_columns, **{name: "number" for name in self.score_columns}}
        self.check_schema(path, schema, required, optional)
        names = [n for n in required if n not in self.media_columns]
        names += [n for n in optional if n in schema.names]
        columns = self.files.read_columns(file_index, names)
        valid = []
        for row in range(self.files.num_rows(file_index)):
            try:
                parsed = self.parse_row(file_index, row, {n: columns[n][row] for n in names})
            except DataFormatError as error:
                self.reject(error)
                continue
            valid.append({"file": file_index, "row": row, **parsed})
        return valid

    def _resolve_ties(self, records: list[dict]) -> list[dict]:
        """Apply the tie policy; order each kept pair winner first (scores and segment labels follow)."""
        if not records:
            return []
        labels = torch.tensor([r["label_0"] for r in records], dtype=torch.float64)
        keep, swap, label = resolve_ties(labels, policy=self.tie_policy, label_smoothing=self.label_smoothing)
        kept = []
        for record, k, s, p in zip(records, keep.tolist(), swap.tolist(), label.tolist()):
            if not k:
                self.num_ties_dropped += 1
                continue
            record.update(swap=s, label=p, scores=record["scores"][::-1] if s else record["scores"])
            if "segment_label" in record and s:
                record["segment_label"] = [1.0 - v for v in record["segment_label"]]
            kept.append(record)
        return kept

    def _store(self, records: list[dict]) -> None:
        """Keep the per-item fields as arrays (cheap to share with forked DataLoader workers)."""
        self._file = np.array([r["file"] for r in records], dtype=np.int32)
        self._row = np.array([r["row"] for r in records], dtype=np.int64)
        self._swap = np.array([r["swap"] for r in records], dtype=bool)
        self._label = np.array([r["label"] for r in records], dtype=np.float32)
        self._prompts = pa.array([r["prompt"] for r in records], type=pa.string())
        self._scores = np.array([r["scores"] for r in records], dtype=np.float32).reshape(
            len(records), len(self.score_columns)
        )
        segments = len(records[0].get("segment_label", [])) if records else 0
        self._segments = np.array([r.get("segment_label", []) for r in records], dtype=np.float32).reshape(
            len(records), segments
        )

    def _select(self, keep: np.ndarray) -> None:
        for name in ("_file", "_row", "_swap", "_label", "_scores", "_segments"):
            setattr(self, name, getattr(self, name)[keep])
        self._prompts = self._prompts.filter(pa.array(keep))

    # ---- media ------------------------------------------------------------------------------------------------
    def decode_media(self, file_index: int, row: int, cells: dict) -> list:
        """Decode the pair's cells in file order (``jpg_0`` then ``jpg_1``)."""
        path = self.files.paths[file_index]
        return [decode_image(cell_bytes(cells[n], path, row, n), path, row, n) for n in self.media_columns]

    def _check_media(self) -> None:
        keep = np.ones(len(self), dtype=bool)
        for file_index in range(len(self.files.paths)):
            positions = {int(self._row[i]): i for i in np.flatnonzero(self._file == file_index)}
            for first, columns in self.files.iter_row_groups(file_index, self.media_columns, positions):
                for offset in range(len(columns[self.media_columns[0]])):
                    position = positions.get(first + offset)
                    if position is None:
                        continue
                    try:
                        self.decode_media(
                            file_index, first + offset, {n: columns[n][offset] for n in self.media_columns}
                        )
                    except DataFormatError as error:
                        self.reject(error)
                        keep[position] = False
        self._select(keep)

    def read(self, index: int) -> RawItem:
        file_index, row = int(self._file[index]), int(self._row[index])
        candidates = self.decode_media(file_index, row, self.files.cells(file_index, row, self.media_columns))
        if self._swap[index]:
            candidates.reverse()
        meta = {"label": torch.tensor(float(self._label[index]))}
        if self.score_columns:
            meta["scores"] = torch.from_numpy(self._scores[index].copy())
        if self._segments.shape[1]:
            meta["segment_label"] = torch.from_numpy(self._segments[index].copy())
        return RawItem(self._prompts[index].as_py(), candidates, meta)


# how ``datasets`` must read the Pick-a-Pic columns for the official DPO scripts (``datasets.Value`` dtypes)
PICKAPIC_FEATURES = {
    "caption": ("string", "large_string"),
    "jpg_0": ("binary", "large_binary"),
    "jpg_1": ("binary", "large_binary"),
    "label_0": ("float64", "float32"),
}


def load_pickapic_compatible(paths: str | Path | Sequence[str | Path], cache_dir: str | Path | None = None):
    """Read pairwise files with ``datasets.load_dataset("parquet", ...)``, as the official DPO scripts would.

    Every file is checked first, since ``datasets`` merges files silently (a column one file lacks becomes nulls, a
    column of another type is cast): its columns as ``datasets`` reads them (``caption``, ``jpg_0``, ``jpg_1`` and
    ``label_0`` as string, binary, binary and float features; the same columns and types as the first file) and
    every row's labels (``label_0`` in {0, 0.5, 1}; ``label_1``, if present, ``1 - label_0``).

    Returns:
        the ``datasets.Dataset`` (split ``train``).

    Raises:
        DataFormatError: naming the file (and the row, for a bad label): a column is missing, has another type
            than expected or than in the first file, or a label is not 0, 0.5 or 1.
    """
    import datasets

    files = ParquetRows(paths)
    features = [_check_pickapic_file(files, file_index) for file_index in range(len(files.paths))]
    first = features[0] if features else {}
    for path, found in zip(files.paths[1:], features[1:]):
        differing = [n for n in sorted(set(found) | set(first)) if found.get(n) != first.get(n)]
        if differing:
            detail = ", ".join(
                f"'{n}' {_feature_words(found.get(n))} here, {_feature_words(first.get(n))} there"
                for n in differing
            )
            raise DataFormatError(
                path,
                f"columns differ from the first file {files.paths[0]}: {detail}; expected the same columns and "
                "types in every file (datasets would fill a column missing here with nulls, cast one of another type)",
                reason="columns differ from the first file",
            )
    return datasets.load_dataset(
        "parquet",
        data_files=[str(p) for p in files.paths],
        split="train",
        cache_dir=cache_dir and str(cache_dir),
    )


def _feature_words(feature) -> str:
    return "absent" if feature is None else repr(feature)


def _check_pickapic_file(files: ParquetRows, file_index: int):
    """One file's Pick-a-Pic columns as ``datasets`` reads them, and its labels; returns its ``datasets.Features``."""
    import datasets

    path, schema = files.paths[file_index], files.schema(file_index)
    check_columns(path, schema, PAIRWISE_COLUMNS, {"label_1": "number"})
    features = datasets.Features.from_arrow_schema(schema)
    for name, dtypes in PICKAPIC_FEATURES.items():
        feature = features[name]
        if not isinstance(feature, datasets.Value) or feature.dtype not in dtypes:
            raise DataFormatError(
                path, f"datasets reads {feature!r}, expected Value({' or '.join(dtypes)})", field=name
            )
    names = ["label_0", "label_1"] if "label_1" in schema.names else ["label_0"]
    labels = files.read_columns(file_index, names)
    for row, value in enumerate(labels["label_0"]):
        label_0 = check_label(value, path, row)
        if "label_1" in labels:
            check_label_1(label_0, labels["label_1"][row], path, row)
    return features
