"""Atomic file writes: readers (and a resumed job after a kill) see the old file or the new one, never half of one.

And readers whose errors name the file (and the line, for text): :func:`read_text` (UTF-8), :func:`parse_json` /
:func:`read_json`, :func:`read_csv`, :func:`read_parquet` / :func:`read_parquet_schema`; :func:`prompts_fingerprint`,
what resumable jobs record of their prompt list.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def prompts_fingerprint(prompts: Sequence[str]) -> dict[str, Any]:
    """``{"count", "sha256"}`` of a prompt list (order included): what a resumed job checks it is given again."""
    return {"count": len(prompts), "sha256": hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()}


def temporary_path(path: Path) -> Path:
    """A hidden sibling of ``path`` unique to this host and process (safe on file systems shared by nodes)."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def write_atomic(path: str | Path, write: Callable[[Path], None], *, durable: bool = False) -> Path:
    """Call ``write(temporary_path)`` next to ``path``, then rename the result onto ``path`` (``os.replace``).

    Args:
        path: the file to (re)place.
        write: writes the complete file at the path it is given.
        durable: ``fsync`` the file before the rename, so the new content survives a machine crash, not only a
            killed process (dataset shards and manifests).

    The temporary is removed if ``write`` fails; returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        write(temporary)
        if durable:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``.

    Raises:
        ValueError: a byte that is not UTF-8 (the message names the file, line and byte).
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line}: byte {data[error.start]:#04x} is not UTF-8 ({error.reason}); expected UTF-8 text"
        ) from error


def parse_json(text: str, path: str | Path, line: int | None = None) -> Any:
    """``json.loads(text)``; invalid JSON raises ``ValueError`` naming ``path`` and the line (``line``: the line of a
    ``.jsonl`` file that ``text`` is)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: line {line or error.lineno}, column {error.colno}: not valid JSON ({error.msg})"
        ) from error


def read_json(path: str | Path) -> Any:
    """The JSON document of a UTF-8 file; ``ValueError`` naming the file (and line) if it is not one."""
    return parse_json(read_text(path), path)


def read_csv(path: str | Path, delimiter: str = ",") -> tuple[list[str], list[dict]]:
    """Header and rows (dicts) of a UTF-8 CSV (or, with ``delimiter="\t"``, TSV) file with a header row.

    Raises:
        ValueError: not UTF-8, or malformed (the message names the file and line).
    """
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    try:
        return list(reader.fieldnames or []), list(reader)
    except csv.Error as error:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise ValueError(
            f"{path}: line {reader.reader.line_num}: {error}; expected a {kind} file with a header row"
        ) from error


def read_parquet_schema(path: str | Path):
    """The Arrow schema of a Parquet file; ``ValueError`` naming the file if it is not a readable one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from error


def read_parquet(path: str | Path, columns: list[str] | None = None):
    """A Parquet file as an Arrow table (``columns`` only, if given); ``ValueError`` naming the file if it is not a
    readable one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from error
