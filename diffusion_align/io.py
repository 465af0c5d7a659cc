"""Atomic file writes: readers (and a resumed job after a kill) see the old file or the new one, never half of one."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path


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
