"""Prompt sets for evaluation: your own file, the Shapes held-out split, and the common public benchmarks.

Public sets are read from a local copy (nothing is downloaded); a missing copy raises ``FileNotFoundError`` naming
the exact file expected and where it is published:

==========================  =========================================================  ==============================
loader                      file(s) read                                               source
==========================  =========================================================  ==============================
load_partiprompts           ``PartiPrompts.tsv`` (columns Prompt, Category, ...)        google-research/parti (1,632)
load_hpdv2_test             ``anime.json concept-art.json paintings.json photo.json``  HF dataset zhwang/HPDv2,
                            (each a JSON list of prompts)                               ``benchmark/`` (4 x 800)
load_pickapic_test_unique   ``test_unique-*.parquet`` (column ``caption``)              HF yuvalkirstain/pickapic_v2
                                                                                        ``data/`` (500 captions)
load_geneval                ``evaluation_metadata.jsonl`` (keys ``prompt``, ``tag``)    djghosh13/geneval ``prompts/``
                                                                                        (553)
==========================  =========================================================  ==============================

Every loader returns a :class:`PromptSet` and takes ``limit`` / ``subset_seed`` (see :func:`select_prompts`). A file
that cannot be read as its suffix says (not UTF-8, invalid JSON, a corrupt Parquet file) raises ``ValueError`` naming
it and, for text, the line; an empty cell (null, or a field missing from a short CSV/TSV row) in the prompt or
category column raises ``ValueError`` naming the file, row and column: every prompt has a category when categories
are read.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from diffusion_align.io import parse_json, read_csv, read_json, read_parquet, read_parquet_schema, read_text

HPDV2_STYLES = ("anime", "concept-art", "paintings", "photo")
PROMPT_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class PromptSet:
    """An ordered list of prompts with an optional category per prompt.

    Attributes:
        name: what the set is (``"partiprompts"``, a file name, ...): shown in reports.
        prompts: the prompt texts; a prompt's index in this list is its ``prompt_index`` (and fixes its seeds).
        categories: one label per prompt (Parti category, HPDv2 style, GenEval tag, Shapes combination) or ``None``.
    """

    name: str
    prompts: tuple[str, ...]
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"prompt set {self.name!r}: no prompts")
        for i, prompt in enumerate(self.prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt set {self.name!r}: prompt {i} is {prompt!r}; expected a non-empty string")
        if self.categories is not None and len(self.categories) != len(self.prompts):
            raise ValueError(
                f"prompt set {self.name!r}: {len(self.categories)} categories for {len(self.prompts)} prompts"
            )

    def __len__(self) -> int:
        return len(self.prompts)


def as_prompt_set(prompts: PromptSet | Sequence[str], name: str = "prompts") -> PromptSet:
    """A :class:`PromptSet` as is, or a plain list of strings wrapped into one."""
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, str):
        raise TypeError("prompts: expected a PromptSet or a sequence of strings, got a single string")
    return PromptSet(name, tuple(prompts))


def select_prompts(
    name: str, prompts: Sequence[str], categories: Sequence[str] | None, limit: int | None, subset_seed: int | None
) -> PromptSet:
    """Build a :class:`PromptSet`, keeping ``limit`` prompts when given.

    Args:
        limit: how many prompts to keep (``None``: all). Without ``subset_seed`` the first ``limit`` are kept.
        subset_seed: draw ``limit`` prompts at random with this seed instead, kept in their original order (a
            fair subset of a set sorted by category).
    """
    indices = list(range(len(prompts)))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"prompt set {name!r}: limit={limit}; expected a positive integer or null")
        if subset_seed is None:
            indices = indices[:limit]
        else:
            indices = sorted(random.Random(subset_seed).sample(indices, min(limit, len(indices))))
    chosen_categories = None if categories is None else tuple(categories[i] for i in indices)
    return PromptSet(name, tuple(prompts[i] for i in indices), chosen_categories)


def _require_file(path: Path, what: str, source: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file {path} is missing; get it from {source} and pass its path")
    return path


def _table_rows(path: Path) -> list[dict]:
    """Rows of a .csv / .tsv / .jsonl / .parquet file as dicts."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")[1]
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(read_text(path).split("\n"), start=1):
            if line.strip():
                row = parse_json(line, path, number)
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if suffix == ".parquet":
        return read_parquet(path).to_pylist()
    raise ValueError(f"{path}: expected a .csv, .tsv, .jsonl or .parquet table")


def _column(rows: list[dict], column: str, path: Path) -> list:
    for i, row in enumerate(rows):
        if column not in row:
            raise KeyError(f"{path}: row {i} has no column {column!r}; found {sorted(row)}")
        if row[column] is None:
            raise ValueError(
                f"{path}: row {i} column {column!r} is empty (null, or missing from a short row); expected a value"
            )
    return [row[column] for row in rows]


def load_prompt_file(
    path: str | Path,
    column: str = "prompt",
    category_column: str | None = None,
    limit: int | None = None,
    subset_seed: int | None = None,
) -> PromptSet:
    """Prompts from a file of your own.

    Formats by suffix: ``.txt`` (one prompt per line, blank lines skipped), ``.json`` (a list of strings),
    ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` (a ``column`` of prompts, optionally a ``category_column``).
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in PROMPT_FILE_SUFFIXES:
        raise ValueError(f"prompt file {path}: expected a suffix in {PROMPT_FILE_SUFFIXES}")
    _require_file(path, "prompt file", "your own prompt list")
    categories = None
    if path.suffix.lower() == ".txt":
        prompts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    elif path.suffix.lower() == ".json":
        prompts = read_json(path)
        if not isinstance(prompts, list):
            raise ValueError(f"prompt file {path}: expected a JSON list of strings, got {type(prompts).__name__}")
    else:
        rows = _table_rows(path)
        prompts = _column(rows, column, path)
        categories = None if category_column is None else [str(c) for c in _column(rows, category_column, path)]
    return select_prompts(path.name, prompts, categories, limit, subset_seed)


def load_shapes_held_out(limit: int | None = None, subset_seed: int | None = None) -> PromptSet:
    """The Shapes world's held-out prompts (compositions never seen in training); category = the combination."""
    from diffusion_align.shapes.world import split_prompts

    held_out = split_prompts("held_out")
    categories = [" ".join(prompt.combination) for prompt in held_out]
    return select_prompts("shapes_held_out", [prompt.text for prompt in held_out], categories, limit, subset_seed)


def load_moving_shapes_held_out(limit: int | None = None, subset_seed: int | None = None) -> PromptSet:
    """The Moving Shapes world's held-out prompts (the image world's held-out combinations, every motion);
    category = the (colour, shape, background) combination."""
    from diffusion_align.moving_shapes.world import split_prompts

    held_out = split_prompts("held_out")
    categories = [" ".join(prompt.combination) for prompt in held_out]
    return select_prompts(
        "moving_shapes_held_out", [prompt.text for prompt in held_out], categories, limit, subset_seed
    )


def load_partiprompts(path: str | Path, limit: int | None = None, subset_seed: int | None = None) -> PromptSet:
    """PartiPrompts (Yu et al. 2022): ``PartiPrompts.tsv`` (or a .csv / .parquet copy), columns ``Prompt``, ``Category``."""
    path = _require_file(
        Path(path).expanduser(), "PartiPrompts", "https://github.com/google-research/parti (PartiPrompts.tsv)"
    )
    rows = _table_rows(path)
    return select_prompts(
        "partiprompts", _column(rows, "Prompt", path), _column(rows, "Category", path), limit, subset_seed
    )


def load_hpdv2_test(directory: str | Path, limit: int | None = None, subset_seed: int | None = None) -> PromptSet:
    """HPDv2 benchmark prompts (Wu et al. 2023): four JSON lists, one per style; category = the style."""
    directory = Path(directory).expanduser()
    prompts, categories = [], []
    for style in HPDV2_STYLES:
        path = _require_file(
            directory / f"{style}.json",
            "HPDv2 test prompts",
            "the Hugging Face dataset zhwang/HPDv2, folder benchmark/ (anime, concept-art, paintings, photo .json)",
        )
        style_prompts = read_json(path)
        if not isinstance(style_prompts, list):
            raise ValueError(f"{path}: expected a JSON list of prompts, got {type(style_prompts).__name__}")
        prompts += style_prompts
        categories += [style] * len(style_prompts)
    return select_prompts("hpdv2_test", prompts, categories, limit, subset_seed)


def load_pickapic_test_unique(
    path: str | Path, limit: int | None = None, subset_seed: int | None = None
) -> PromptSet:
    """Pick-a-Pic ``test_unique`` captions: a Parquet file, or a folder of ``test_unique-*.parquet`` shards.

    Only the ``caption`` column is read (not the images); repeated captions are kept once, in first-seen order.
    """
    path = Path(path).expanduser()
    source = "the Hugging Face dataset yuvalkirstain/pickapic_v2, data/test_unique-*.parquet"
    shards = sorted(path.glob("test_unique-*.parquet")) if path.is_dir() else [path]
    if not shards:
        raise FileNotFoundError(f"Pick-a-Pic test_unique: no test_unique-*.parquet in {path}; get it from {source}")
    captions: dict[str, None] = {}
    for shard in shards:
        _require_file(shard, "Pick-a-Pic test_unique", source)
        if "caption" not in read_parquet_schema(shard).names:
            raise KeyError(f"{shard}: no 'caption' column; is it a Pick-a-Pic shard?")
        captions.update(dict.fromkeys(read_parquet(shard, ["caption"]).column("caption").to_pylist()))
    return select_prompts("pickapic_test_unique", list(captions), None, limit, subset_seed)


def load_geneval(path: str | Path, limit: int | None = None, subset_seed: int | None = None) -> PromptSet:
    """GenEval prompts (Ghosh et al. 2023): ``evaluation_metadata.jsonl``; category = the ``tag`` (task)."""
    path = _require_file(
        Path(path).expanduser(), "GenEval prompts", "https://github.com/djghosh13/geneval (prompts/evaluation_metadata.jsonl)"
    )
    rows = _table_rows(path)
    return select_prompts("geneval", _column(rows, "prompt", path), _column(rows, "tag", path), limit, subset_seed)
