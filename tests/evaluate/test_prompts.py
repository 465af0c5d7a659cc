"""Prompt-set loaders: own files in every format, the Shapes held-out split, and the public sets from local copies."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffusion_align.evaluate.prompts import (
    HPDV2_STYLES,
    PromptSet,
    as_prompt_set,
    load_geneval,
    load_hpdv2_test,
    load_partiprompts,
    load_pickapic_test_unique,
    load_prompt_file,
    load_shapes_held_out,
)

PROMPTS = ["a cat", "a dog on a skateboard", "an astronaut riding a horse"]


def test_text_file_one_prompt_per_line_blank_lines_skipped(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\n  a dog on a skateboard  \nan astronaut riding a horse\n")
    prompt_set = load_prompt_file(path)
    assert prompt_set.prompts == tuple(PROMPTS) and prompt_set.name == "prompts.txt" and prompt_set.categories is None


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet", ".json"])
def test_table_formats_read_the_prompt_and_category_columns(tmp_path, suffix):
    rows = [{"text": p, "kind": k} for p, k in zip(PROMPTS, ["animal", "animal", "people"])]
    path = tmp_path / f"prompts{suffix}"
    if suffix in (".csv", ".tsv"):
        separator = "," if suffix == ".csv" else "\t"
        path.write_text("text" + separator + "kind\n" + "".join(f"{r['text']}{separator}{r['kind']}\n" for r in rows))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text(json.dumps(PROMPTS))
    if suffix == ".json":
        assert load_prompt_file(path).prompts == tuple(PROMPTS)
        return
    prompt_set = load_prompt_file(path, column="text", category_column="kind")
    assert prompt_set.prompts == tuple(PROMPTS) and prompt_set.categories == ("animal", "animal", "people")


def test_missing_column_names_the_file_row_and_column(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a cat"}\n{"caption": "a dog"}\n')
    with pytest.raises(KeyError, match=r"prompts.jsonl: row 1 has no column 'prompt'"):
        load_prompt_file(path)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt is missing"):
        load_prompt_file(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="expected a suffix"):
        load_prompt_file(tmp_path / "prompts.yaml")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompt_file(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="prompt 1"):
        PromptSet("x", ("a", ""))
    with pytest.raises(ValueError, match="2 categories for 1 prompts"):
        PromptSet("x", ("a",), ("c", "d"))


def test_limit_keeps_the_first_or_a_seeded_subset_in_order(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("".join(f"prompt {i}\n" for i in range(50)))
    assert load_prompt_file(path, limit=3).prompts == ("prompt 0", "prompt 1", "prompt 2")
    subset = load_prompt_file(path, limit=5, subset_seed=1)
    assert subset == load_prompt_file(path, limit=5, subset_seed=1)
    indices = [int(p.split()[1]) for p in subset.prompts]
    assert indices == sorted(indices) and len(set(indices)) == 5 and indices != [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="limit=0"):
        load_prompt_file(path, limit=0)


def test_shapes_held_out_are_the_worlds_held_out_sentences():
    from diffusion_align.shapes.world import parse_prompt, split_prompts

    held_out = load_shapes_held_out()
    assert len(held_out) == len(split_prompts("held_out")) == 324
    assert all(parse_prompt(text) for text in held_out.prompts[:20])
    assert held_out.categories[0] == " ".join(parse_prompt(held_out.prompts[0]).combination)
    assert len(load_shapes_held_out(limit=8, subset_seed=0)) == 8


def test_partiprompts_tsv(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\na red car\tVehicles\tColors\t\n")
    prompt_set = load_partiprompts(path)
    assert prompt_set.prompts == ("bond", "a red car") and prompt_set.categories == ("Abstract", "Vehicles")
    with pytest.raises(FileNotFoundError, match=r"PartiPrompts: file .*missing\.tsv is missing; get it from .*parti"):
        load_partiprompts(tmp_path / "missing.tsv")


def test_hpdv2_reads_four_styles_and_names_the_missing_one(tmp_path):
    for style in HPDV2_STYLES:
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} prompt 1", f"{style} prompt 2"]))
    prompt_set = load_hpdv2_test(tmp_path)
    assert len(prompt_set) == 8 and prompt_set.categories[::2] == HPDV2_STYLES
    (tmp_path / "paintings.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"HPDv2 test prompts: file .*paintings\.json is missing; .*zhwang/HPDv2"):
        load_hpdv2_test(tmp_path)


def test_pickapic_test_unique_reads_captions_of_every_shard_once(tmp_path):
    for shard, captions in enumerate([["a cat", "a dog"], ["a dog", "a fox"]]):
        table = pa.table({"caption": captions, "jpg_0": [b"x"] * len(captions)})
        pq.write_table(table, tmp_path / f"test_unique-0000{shard}-of-00002.parquet")
    assert load_pickapic_test_unique(tmp_path).prompts == ("a cat", "a dog", "a fox")
    assert load_pickapic_test_unique(tmp_path / "test_unique-00000-of-00002.parquet").prompts == ("a cat", "a dog")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no test_unique-\*\.parquet in .*empty; .*pickapic_v2"):
        load_pickapic_test_unique(empty)


def test_geneval_metadata_jsonl(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    rows = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
            {"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "a photo of two cats"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompt_set = load_geneval(path)
    assert prompt_set.prompts == ("a photo of a bench", "a photo of two cats")
    assert prompt_set.categories == ("single_object", "counting")
    with pytest.raises(FileNotFoundError, match=r"GenEval prompts: file .*nothere\.jsonl is missing; .*geneval"):
        load_geneval(tmp_path / "nothere.jsonl")


def test_plain_lists_become_prompt_sets():
    assert as_prompt_set(["a", "b"]).prompts == ("a", "b")
    with pytest.raises(TypeError, match="single string"):
        as_prompt_set("a cat")


def test_invalid_jsonl_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text('{"prompt": "a cat", "tag": "x"}\n\n{"prompt": "a dog", tag: "y"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3, column 21: not valid JSON")):
        load_geneval(path)
    path.write_text('{"prompt": "a cat", "tag": "x"}\n["a dog"]\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: expected a JSON object, got list")):
        load_prompt_file(path)


def test_invalid_json_lists_are_named(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text('[\n  "a cat",\n  "a dog" "a fox"\n]\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3, column ") + r"\d+: not valid JSON"):
        load_prompt_file(path)
    for style in HPDV2_STYLES:
        (tmp_path / f"{style}.json").write_text(json.dumps([f"{style} prompt"]))
    (tmp_path / "photo.json").write_text("")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'photo.json'}: line 1, column 1: not valid JSON")):
        load_hpdv2_test(tmp_path)


@pytest.mark.parametrize("suffix", [".txt", ".tsv", ".jsonl", ".json"])
def test_text_that_is_not_utf8_is_named(tmp_path, suffix):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(b"prompt\tCategory\n" + "a caf\xe9\tx\n".encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: byte 0xe9 is not UTF-8")):
        load_prompt_file(path)


def test_corrupt_parquet_is_named(tmp_path):
    path = tmp_path / "test_unique-00000-of-00001.parquet"
    pq.write_table(pa.table({"caption": PROMPTS}), path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable Parquet file")):
        load_pickapic_test_unique(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable Parquet file")):
        load_prompt_file(path)


def test_missing_category_is_a_row_error_in_both_loaders(tmp_path):
    """A short TSV row (no Category field) was kept as None by one loader and as the string "None" by the other."""
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\nbond\tAbstract\tBasic\na red car\n")
    expected = re.escape(f"{path}: row 1 column 'Category' is empty (null, or missing from a short row)")
    with pytest.raises(ValueError, match=expected):
        load_partiprompts(path)
    with pytest.raises(ValueError, match=expected):
        load_prompt_file(path, column="Prompt", category_column="Category")
    assert load_prompt_file(path, column="Prompt").categories is None  # categories not asked for: not read
    parquet = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "kind": ["x", None]}), parquet)
    with pytest.raises(ValueError, match=re.escape(f"{parquet}: row 1 column 'kind' is empty")):
        load_prompt_file(parquet, category_column="kind")
