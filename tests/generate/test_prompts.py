"""load_prompts: text files, CSV and Parquet columns, the Shapes named sets, and errors naming the culprit."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffusion_align.generate import NAMED_PROMPT_SETS, load_prompts
from diffusion_align.moving_shapes.world import split_prompts as moving_split_prompts
from diffusion_align.shapes.world import split_prompts


def test_text_file_one_prompt_per_line_blank_lines_skipped(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("  a cat  \n\na dog, sleeping\n   \nthe moon\n")
    assert load_prompts(path) == ["a cat", "a dog, sleeping", "the moon"]
    assert load_prompts(str(path), limit=2) == ["a cat", "a dog, sleeping"]


def test_csv_and_parquet_columns(tmp_path):
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text('id,caption\n1,"a cat, orange"\n2,a dog\n')
    assert load_prompts(csv_path, column="caption") == ["a cat, orange", "a dog"]
    parquet_path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["one", "two", "three"], "n": [1, 2, 3]}), parquet_path)
    assert load_prompts(parquet_path) == ["one", "two", "three"]


@pytest.mark.parametrize("world", ["shapes", "moving_shapes"])
def test_named_sets_are_each_worlds_split(world):
    assert sorted(NAMED_PROMPT_SETS) == ["moving_shapes_held_out", "moving_shapes_train", "shapes_held_out", "shapes_train"]
    split = (split_prompts if world == "shapes" else moving_split_prompts)
    train, held_out = load_prompts(f"{world}_train"), load_prompts(f"{world}_held_out")
    assert train == [p.text for p in split("train")]
    assert held_out == [p.text for p in split("held_out")]
    assert not set(train) & set(held_out)
    assert load_prompts(f"{world}_train", limit=5) == train[:5]


def test_errors_name_the_file_row_and_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="'missing.txt': no such file and not a named set"):
        load_prompts("missing.txt")
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("caption\na cat\n")
    with pytest.raises(KeyError, match=r"p\.csv: no column 'prompt' \(columns: caption\)"):
        load_prompts(csv_path)
    parquet_path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["fine", None]}), parquet_path)
    with pytest.raises(ValueError, match="row 1 column 'prompt': expected a non-empty string, got None"):
        load_prompts(parquet_path)
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a .txt, .csv or .parquet file"):
        load_prompts(tmp_path / "p.json")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts found"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="limit 0"):
        load_prompts("shapes_train", limit=0)


@pytest.mark.parametrize("suffix", [".txt", ".csv"])
def test_text_that_is_not_utf8_is_named(tmp_path, suffix):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(b"prompt\na cat\nna\xefve caf\xe9\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3: byte 0xef is not UTF-8") + ".*expected UTF-8 text"):
        load_prompts(path)


def test_corrupt_parquet_and_malformed_csv_are_named(tmp_path):
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["one", "two"]}), path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable Parquet file")):
        load_prompts(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable Parquet file")):
        load_prompts(path)
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text("prompt\na cat\n" + "x" * 200_000 + "\n")  # over csv's field size limit
    with pytest.raises(ValueError, match=re.escape(f"{csv_path}: line 3: ") + ".*expected a CSV file"):
        load_prompts(csv_path)
