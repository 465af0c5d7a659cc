"""Prompt lists for the generator: a text file, a CSV or Parquet column, or a named prompt set.

Sources, by what ``source`` names:

* a named set (a key of :data:`NAMED_PROMPT_SETS`): ``shapes_train``, ``shapes_held_out`` (the Shapes world's
  split, :func:`diffusion_align.shapes.world.split_prompts`), ``moving_shapes_train``, ``moving_shapes_held_out``
  (the Moving Shapes world's, :func:`diffusion_align.moving_shapes.world.split_prompts`);
* ``*.txt``: one prompt per line; blank lines are skipped, surrounding whitespace is stripped;
* ``*.csv`` / ``*.parquet``: the column ``column`` (every value a non-empty string).

Prompts keep the source's order: a prompt's position in the list is its ``prompt_index`` (it seeds the images).
A file that cannot be read as its suffix says (not UTF-8 text, a malformed CSV, a corrupt Parquet file) raises
``ValueError`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diffusion_align.io import read_csv, read_parquet, read_parquet_schema, read_text

TABLE_SUFFIXES = (".csv", ".parquet")


def shapes_prompts(split: str) -> list[str]:
    """The sentences of the Shapes world's ``train`` or ``held_out`` split, in the world's fixed order."""
    from diffusion_align.shapes.world import split_prompts

    return [prompt.text for prompt in split_prompts(split)]


def moving_shapes_prompts(split: str) -> list[str]:
    """The sentences of the Moving Shapes world's ``train`` or ``held_out`` split, in the world's fixed order."""
    from diffusion_align.moving_shapes.world import split_prompts

    return [prompt.text for prompt in split_prompts(split)]


NAMED_PROMPT_SETS: dict[str, Callable[[], list[str]]] = {
    "shapes_train": lambda: shapes_prompts("train"),
    "shapes_held_out": lambda: shapes_prompts("held_out"),
    "moving_shapes_train": lambda: moving_shapes_prompts("train"),
    "moving_shapes_held_out": lambda: moving_shapes_prompts("held_out"),
}


def read_text_prompts(path: Path) -> list[str]:
    """Non-blank lines of a UTF-8 text file, stripped."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def _read_csv_column(path: Path, column: str) -> list:
    names, rows = read_csv(path)
    if column not in names:
        raise KeyError(f"{path}: no column '{column}' (columns: {', '.join(names)})")
    return [row[column] for row in rows]


def _read_parquet_column(path: Path, column: str) -> list:
    names = read_parquet_schema(path).names
    if column not in names:
        raise KeyError(f"{path}: no column '{column}' (columns: {', '.join(names)})")
    return read_parquet(path, [column]).column(column).to_pylist()


def read_column_prompts(path: Path, column: str) -> list[str]:
    """Column ``column`` of a CSV (header row) or Parquet file; every value must be a non-empty string."""
    values = _read_csv_column(path, column) if path.suffix == ".csv" else _read_parquet_column(path, column)
    for row, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}: row {row} column '{column}': expected a non-empty string, got {value!r}")
    return [value.strip() for value in values]


def load_prompts(source: str | Path, column: str = "prompt", limit: int | None = None) -> list[str]:
    """The prompt list named by ``source`` (see the module docstring), optionally cut to its first ``limit``.

    Raises:
        FileNotFoundError: ``source`` is neither a named set nor an existing file.
        ValueError: an unsupported suffix, a bad value, or no prompts at all.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"prompts limit {limit}: expected a positive number or None")
    text = str(source)
    if text in NAMED_PROMPT_SETS:
        prompts = NAMED_PROMPT_SETS[text]()
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"prompts '{text}': no such file and not a named set ({', '.join(sorted(NAMED_PROMPT_SETS))})"
            )
        if path.suffix == ".txt":
            prompts = read_text_prompts(path)
        elif path.suffix in TABLE_SUFFIXES:
            prompts = read_column_prompts(path, column)
        else:
            raise ValueError(f"prompts '{path}': expected a .txt, .csv or .parquet file")
    if not prompts:
        raise ValueError(f"prompts '{text}': no prompts found")
    return prompts[:limit]
