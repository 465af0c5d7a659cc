"""The on-disk layout of a generated dataset: manifest, shards written atomically, completion markers.

::

    out_dir/
      manifest.json              the generation config and the shard plan (written once; a re-run must match it)
      README.md                  the dataset card (written when every shard is complete)
      <table>/shard-00000.parquet  one file per shard and table (``ranked``, ``pairs``, ``dense_pairs``)
      shards/shard-00000.json    the completion marker of shard 0, with its statistics

The unit of work is a shard: a contiguous range of prompts. Each Parquet file is written under a hidden temporary
name (``.shard-00000.parquet.<host>.<pid>.tmp``, which no ``*.parquet`` glob matches) and renamed into place; the
marker is renamed into place last. Every file is flushed to disk before its rename or link. A shard is complete
when its marker holds a JSON object with the keys :meth:`ShardStore.write` writes: a killed run leaves at most an
incomplete shard, redone (deterministically, to the same rows) by the next run. A damaged marker (a crash or a disk
error) counts as no marker: the shard is redone, with a warning naming the file, rather than stopping the run or
trusting its statistics. A damaged ``manifest.json`` raises :class:`ManifestMismatchError` naming it. Shards go to
workers by ``shard index % worker count``, so any number of processes or array jobs share one ``out_dir`` without
locks.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from diffusion_align.io import temporary_path, write_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MARKERS = "shards"
FORMAT = "diffusion-align-generate/1"
MARKER_KEYS = ("shard", "prompts", "rows", "stats", "worker")


class ManifestMismatchError(ValueError):
    """``out_dir`` holds a dataset generated with another configuration, or a manifest that cannot be read."""


@dataclass(frozen=True)
class Shard:
    """Prompts ``start`` .. ``stop - 1`` (indices into the prompt list)."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


@dataclass(frozen=True)
class Worker:
    """This worker's place among all workers: it owns the shards with ``index % count == self.index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"worker index {self.index}: expected 0 <= index < count ({self.count})")

    def owns(self, shard: Shard) -> bool:
        return shard.index % self.count == self.index


def plan_shards(num_prompts: int, prompts_per_shard: int) -> list[Shard]:
    """Consecutive shards of ``prompts_per_shard`` prompts (the last may be shorter)."""
    if prompts_per_shard < 1:
        raise ValueError(f"prompts_per_shard {prompts_per_shard}: expected a positive integer")
    starts = range(0, num_prompts, prompts_per_shard)
    return [Shard(i, start, min(start + prompts_per_shard, num_prompts)) for i, start in enumerate(starts)]


def replace_atomically(path: Path, write) -> Path:
    """Call ``write(temporary path)``, flush it to disk, then rename it to ``path``; the temporary never stays."""
    return write_atomic(path, write, durable=True)


def write_json(path: Path, payload: dict) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True)))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(node, dict):
        return {prefix: node}
    items: dict[str, Any] = {}
    for key, value in node.items():
        items.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return items


class ShardStore:
    """One generated dataset directory.

    Args:
        out_dir: the dataset directory.
        tables: the table names every shard writes (one subdirectory each).
        row_group_size: rows per Parquet row group (small groups keep random access cheap for the readers).
    """

    def __init__(self, out_dir: str | Path, tables: tuple[str, ...], row_group_size: int = 64) -> None:
        self.out_dir = Path(out_dir).expanduser()
        self.tables, self.row_group_size = tables, row_group_size

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST

    def open(self, config: dict, shards: list[Shard]) -> None:
        """Create the manifest, or check that the existing one records the same ``config``.

        Creation is atomic (a hard link of a complete temporary file, flushed to disk first): of several workers
        starting at once, one writes it and the others compare against it.

        Raises:
            ManifestMismatchError: the manifest records another configuration (each differing key is named), or is
                not a JSON object (corrupt).
        """
        config = json.loads(json.dumps(config))  # tuples -> lists, as the manifest stores them
        manifest = {"format": FORMAT, "config": config, "tables": list(self.tables),
                    "shards": [[s.start, s.stop] for s in shards]}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        temporary = temporary_path(self.manifest_path)
        try:
            with temporary.open("w", encoding="utf-8") as handle:
                handle.write(json.dumps(manifest, indent=2, sort_keys=True))
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, self.manifest_path)
        except FileExistsError:
            self._check(self._read_manifest(), manifest)
        finally:
            temporary.unlink(missing_ok=True)

    def _read_manifest(self) -> dict:
        try:
            found = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            found, problem = None, f"not valid JSON ({exc})"
        else:
            problem = f"a JSON {type(found).__name__}"
        if not isinstance(found, dict):
            raise ManifestMismatchError(
                f"{self.manifest_path}: {problem}; expected the JSON object a generate run writes. If you are "
                "resuming with the same configuration, delete it and run again (complete shards are kept); "
                "otherwise use a new out_dir"
            )
        return found

    def _check(self, found: dict, wanted: dict) -> None:
        if found.get("format") != FORMAT:
            raise ManifestMismatchError(f"{self.manifest_path}: format {found.get('format')!r}, expected {FORMAT!r}")
        old = flatten({"config": found.get("config"), "tables": found.get("tables")})
        new = flatten({"config": wanted["config"], "tables": wanted["tables"]})
        changed = [f"{k}: {old.get(k, '<absent>')!r} (manifest) != {new.get(k, '<absent>')!r} (now)"
                   for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        if changed:
            raise ManifestMismatchError(
                f"{self.manifest_path} was written by a run with another configuration; resuming would mix "
                "datasets. Use a new out_dir, or restore the settings:\n  " + "\n  ".join(changed[:20])
            )

    def table_path(self, table: str, shard: Shard) -> Path:
        return self.out_dir / table / f"{shard.name}.parquet"

    def marker_path(self, shard: Shard) -> Path:
        return self.out_dir / MARKERS / f"{shard.name}.json"

    def read_marker(self, shard: Shard) -> dict | None:
        """The marker of ``shard``; ``None`` when there is none or it is damaged (logged: the shard is redone)."""
        path = self.marker_path(shard)
        if not path.is_file():
            return None
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            marker, problem = None, f"not valid JSON ({exc})"
        else:
            problem = f"expected a JSON object with the keys {list(MARKER_KEYS)}"
        if not isinstance(marker, dict) or any(key not in marker for key in MARKER_KEYS):
            log.warning("completion marker %s is damaged (%s): %s counts as incomplete; the run of the worker "
                        "that owns it generates it again", path, problem, shard.name)
            return None
        return marker

    def is_complete(self, shard: Shard) -> bool:
        return self.read_marker(shard) is not None

    def remove_stale(self, shard: Shard) -> None:
        """Delete temporaries a killed run left for ``shard`` (its owner is the only writer of its files)."""
        for path in [*(self.table_path(table, shard) for table in self.tables), self.marker_path(shard)]:
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def write(self, shard: Shard, tables: dict[str, pa.Table], stats: dict, worker: Worker) -> None:
        """Write every table of ``shard`` atomically, then its marker (``stats`` and the ``worker`` that wrote it):
        the shard is complete."""
        if set(tables) != set(self.tables):
            raise ValueError(f"{shard.name}: got tables {sorted(tables)}, expected {sorted(self.tables)}")
        for name, table in tables.items():
            replace_atomically(
                self.table_path(name, shard),
                lambda tmp, t=table: pq.write_table(t, tmp, row_group_size=self.row_group_size),
            )
        self.write_marker(shard, {"shard": shard.index, "prompts": [shard.start, shard.stop],
                                  "rows": {name: t.num_rows for name, t in tables.items()}, "stats": stats,
                                  "worker": [worker.index, worker.count]})

    def write_marker(self, shard: Shard, payload: dict) -> None:
        write_json(self.marker_path(shard), payload)

    def markers(self, shards: list[Shard]) -> Iterator[dict]:
        """The markers of the complete shards, in shard order (a damaged marker's shard is not complete)."""
        for shard in shards:
            if (marker := self.read_marker(shard)) is not None:
                yield marker
