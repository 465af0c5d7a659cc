"""Random access to the rows of one or many Parquet files without loading their image bytes all at once.

Small columns (captions, labels, scores) are read whole; the large ones (encoded images, videos) are read one row
group at a time from a memory-mapped file, keeping the last few row groups in a small per-process LRU. Random access
into a file with huge row groups is slow by nature of Parquet: build the latent cache (one sequential pass), or
write shards with small row groups (our writers use 64 rows).

A file whose bytes are not readable Parquet (truncated, bit-flipped, not Parquet at all) raises a
:class:`~diffusion_align.data.formats.DataFormatError` naming the file (and the row group, when only one is
damaged) instead of pyarrow's message, which names neither.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import os
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from diffusion_align.data.formats import DataFormatError

# what pyarrow raises for damaged files: ArrowInvalid, ArrowIOError / OSError (thrift, snappy, flatbuffers), and
# UnicodeDecodeError for string cells that are not UTF-8
PARQUET_READ_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)


def resolve_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand a glob, a directory (its ``*.parquet``), a file, or a list of those into a sorted list of files.

    A file reached twice (``[dir, dir/train-00000.parquet]``, two overlapping globs) is listed once, where it first
    appears: its rows are read once.

    Raises:
        FileNotFoundError: a pattern matches nothing, or a named file does not exist.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for entry in paths:
        text = os.path.expanduser(str(entry))
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"no files match '{entry}'")
            files.extend(Path(m) for m in matches)
        elif Path(text).is_dir():
            matches = sorted(Path(text).glob("*.parquet"))
            if not matches:
                raise FileNotFoundError(f"directory '{entry}' holds no *.parquet files")
            files.extend(matches)
        elif Path(text).is_file():
            files.append(Path(text))
        else:
            raise FileNotFoundError(f"dataset file '{entry}' does not exist")
    unique: dict[Path, Path] = {}  # resolved path -> the spelling it first appeared with
    for file in files:
        unique.setdefault(file.resolve(), file)
    return list(unique.values())


def file_fingerprint(path: Path) -> dict:
    """Identity of a data file for cache staleness checks: absolute path, size in bytes, mtime in ns."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class ParquetRows:
    """Row-group-wise reader over a list of Parquet files.

    Args:
        paths: files, directories or globs (see :func:`resolve_paths`).
        row_group_cache: row groups of large columns kept in memory per process.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], row_group_cache: int = 2) -> None:
        self.paths = resolve_paths(paths)
        self.row_group_cache = row_group_cache
        self._handles: dict[int, pq.ParquetFile] = {}
        self._groups: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._offsets = [self._row_group_offsets(i) for i in range(len(self.paths))]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_groups"] = {}, OrderedDict()
        return state

    @contextlib.contextmanager
    def reading(self, file_index: int, part: str = "") -> Iterator[None]:
        """Turn pyarrow's errors while reading ``part`` of a file (``"row group 3 (rows 12 .. 15)"``) into a
        :class:`DataFormatError` naming the file."""
        try:
            yield
        except PARQUET_READ_ERRORS as exc:
            where = f"{part} " if part else ""
            raise DataFormatError(
                self.paths[file_index], f"{where}is not readable Parquet ({type(exc).__name__}: {exc})".strip(),
                reason="unreadable Parquet",
            ) from exc

    def handle(self, file_index: int) -> pq.ParquetFile:
        if file_index not in self._handles:
            with self.reading(file_index):
                self._handles[file_index] = pq.ParquetFile(self.paths[file_index], memory_map=True)
        return self._handles[file_index]

    def _row_group_offsets(self, file_index: int) -> list[int]:
        metadata = self.handle(file_index).metadata
        offsets = [0]
        with self.reading(file_index, "the footer"):
            for group in range(metadata.num_row_groups):
                offsets.append(offsets[-1] + metadata.row_group(group).num_rows)
        return offsets

    def _group_part(self, file_index: int, group: int) -> str:
        offsets = self._offsets[file_index]
        return f"row group {group} (rows {offsets[group]} .. {offsets[group + 1] - 1})"

    def schema(self, file_index: int) -> pa.Schema:
        with self.reading(file_index, "the schema"):
            return self.handle(file_index).schema_arrow

    def num_rows(self, file_index: int) -> int:
        return self._offsets[file_index][-1]

    def read_columns(self, file_index: int, columns: Sequence[str]) -> dict[str, list]:
        """Whole small columns of one file as Python lists (column name -> values)."""
        with self.reading(file_index, f"columns {', '.join(columns)}"):
            table = self.handle(file_index).read(columns=list(columns))
            return {name: table.column(name).to_pylist() for name in columns}

    def iter_row_groups(
        self, file_index: int, columns: Sequence[str], rows: Collection[int] | None = None
    ) -> Iterator[tuple[int, dict[str, list]]]:
        """Yield ``(first row, column name -> values)`` for each row group of one file, in order.

        Args:
            rows: when given, row groups holding none of these rows are not read.
        """
        handle, offsets = self.handle(file_index), self._offsets[file_index]
        wanted = None if rows is None else {bisect.bisect_right(offsets, r) - 1 for r in rows}
        for group in range(handle.metadata.num_row_groups):
            if wanted is not None and group not in wanted:
                continue
            with self.reading(file_index, self._group_part(file_index, group)):
                table = handle.read_row_group(group, columns=list(columns))
                values = {name: table.column(name).to_pylist() for name in columns}
            yield offsets[group], values

    def cells(self, file_index: int, row: int, columns: tuple[str, ...]) -> dict[str, object]:
        """Python values of one row's ``columns``, reading (and caching) the row group of those columns."""
        offsets = self._offsets[file_index]
        if not 0 <= row < offsets[-1]:
            raise IndexError(f"{self.paths[file_index]}: row {row} outside 0 .. {offsets[-1] - 1}")
        group = bisect.bisect_right(offsets, row) - 1
        key = (file_index, group, columns)
        if key in self._groups:
            self._groups.move_to_end(key)
        else:
            with self.reading(file_index, self._group_part(file_index, group)):
                self._groups[key] = self.handle(file_index).read_row_group(group, columns=list(columns))
            while len(self._groups) > self.row_group_cache:
                self._groups.popitem(last=False)
        table = self._groups[key]
        with self.reading(file_index, self._group_part(file_index, group)):
            return {name: table.column(name)[row - offsets[group]].as_py() for name in columns}

    def fingerprint(self) -> list[dict]:
        return [file_fingerprint(path) for path in self.paths]
