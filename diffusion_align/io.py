"""Atomic file writes: readers (and a resumed job after a kill) see the old file or the new one, never half of one.

And :func:`read_text`: UTF-8 text whose decoding errors name the file and line; :func:`prompts_fingerprint`, what
resumable jobs record of their prompt list.
"""

from __future__ import annotations

import hashlib
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
