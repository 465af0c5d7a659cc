"""Results of one small evaluation: the table, files on disk, reloading, merging, re-scoring, statistics."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion_align.evaluate import load_results, merge_results, score_results
from diffusion_align.evaluate.results import ROW_COLUMNS, EvaluationResults
from diffusion_align.evaluate.sampling import sample_seed


def test_table_has_a_row_per_model_prompt_and_sample_with_identical_seeds(evaluation, evaluation_prompts):
    results, _ = evaluation
    prompts = evaluation_prompts
    table = results.table
    assert len(table) == 2 * len(prompts) * 2
    assert list(table.columns[: len(ROW_COLUMNS)]) == ROW_COLUMNS
    assert {"score/clip", "score/ens", "score/ens/clip", "score/ens/aesthetic"} <= set(table.columns)
    for model in ("base", "aligned"):
        rows = results.rows_of(model)
        assert list(rows["seed"]) == [sample_seed(0, i, k) for i in range(3) for k in range(2)]
        assert list(rows["prompt"]) == [p for p in prompts for _ in range(2)]
        assert list(rows["category"]) == [c for c in ("circle", "square", "triangle") for _ in range(2)]
    assert results.score_matrix("aligned", "clip").shape == (3, 2)


def test_ensemble_is_normalised_across_all_models_rows(evaluation, ensemble_reward):
    results, _ = evaluation
    members = {name: torch.tensor(results.table[f"score/ens/{name}"].to_numpy(copy=True)) for name in ("clip", "aesthetic")}
    np.testing.assert_allclose(results.table["score/ens"], ensemble_reward.combine(members).numpy(), rtol=1e-5)
    base = (results.table["model"] == "base").to_numpy()
    base_alone = ensemble_reward.combine({name: values[torch.from_numpy(base.copy())] for name, values in members.items()})
    assert not np.allclose(base_alone.numpy(), results.table.loc[base, "score/ens"], atol=1e-3)  # not per model or batch


def test_raw_scores_equal_scoring_the_saved_images_directly(evaluation, clip_reward):
    from PIL import Image

    results, _ = evaluation
    rows = results.rows_of("aligned")
    images = [Image.open(path).convert("RGB") for path in rows["image"]]
    np.testing.assert_allclose(rows["score/clip"], clip_reward.score(images, list(rows["prompt"])).numpy(), rtol=1e-5)


def test_files_reload_to_the_same_results(evaluation):
    results, out_dir = evaluation
    loaded = load_results(out_dir)
    assert loaded.models == results.models and loaded.rewards == results.rewards
    pd.testing.assert_frame_equal(loaded.table, results.table, check_dtype=False)
    parquet = pd.read_parquet(out_dir / "results.parquet")
    assert parquet["image"].iloc[0].startswith("images/")  # relative inside the output folder
    document = json.loads((out_dir / "results.json").read_text())
    assert {s["model"] for s in document["summary"]} == {"base", "aligned"}
    assert [(w["model"], w["opponent"], w["reward"]) for w in document["win_rates"]] == [
        ("aligned", "base", "clip"), ("aligned", "base", "ens")]
    assert document["models"]["aligned"]["lora"] is not None and document["settings"]["sampling"]["seed"] == 0


def test_win_rates_agree_with_the_table(evaluation):
    results, _ = evaluation
    clip = results.win_rates()[0]
    difference = results.score_matrix("aligned", "clip") - results.score_matrix("base", "clip")
    assert clip.wins == int((difference > 0).sum()) and clip.losses == int((difference < 0).sum())
    assert clip.mean_difference == pytest.approx(difference.mean())
    assert clip.low <= clip.win_rate <= clip.high


def test_summary_has_a_mean_with_interval_per_model_and_reward(evaluation):
    results, _ = evaluation
    summary = results.summary()
    assert len(summary) == 4
    for entry in summary:
        scores = results.score_matrix(entry["model"], entry["reward"])
        assert entry["mean"] == pytest.approx(scores.mean()) and entry["low"] <= entry["mean"] <= entry["high"]


def test_two_result_files_merge_and_rescore(evaluation, clip_reward):
    results, out_dir = evaluation
    loaded = load_results(out_dir / "results.json")
    base = EvaluationResults(loaded.rows_of("base"), {"base": loaded.models["base"]}, loaded.rewards, loaded.settings)
    aligned = EvaluationResults(loaded.rows_of("aligned"), {"aligned": loaded.models["aligned"]},
                                {"clip": loaded.rewards["clip"]}, loaded.settings)
    merged = merge_results([base, aligned])
    assert merged.model_names == ["base", "aligned"] and merged.reward_names == ["clip"]
    assert merged.win_rates()[0].win_rate == results.win_rates()[0].win_rate
    rescored = score_results(merged, {"again": clip_reward})
    np.testing.assert_allclose(rescored.table["score/again"], rescored.table["score/clip"], rtol=1e-5)
    with pytest.raises(ValueError, match=r"model name\(s\) \['base'\] appear in two results"):
        merge_results([base, base])


def test_different_seeds_are_not_compared(evaluation):
    results, _ = evaluation
    table = results.table.copy()
    table.loc[table["model"] == "aligned", "seed"] += 1
    shifted = EvaluationResults(table, results.models, results.rewards, results.settings)
    with pytest.raises(ValueError, match="not sampled on the same prompts and seeds"):
        shifted.win_rates()


def test_unknown_names_are_reported(evaluation, tmp_path):
    results, _ = evaluation
    with pytest.raises(KeyError, match="model 'nope'"):
        results.score_matrix("nope", "clip")
    with pytest.raises(KeyError, match="reward 'nope'"):
        results.score_matrix("base", "nope")
    with pytest.raises(FileNotFoundError, match="no results file"):
        load_results(tmp_path)


def _document(**changes) -> dict:
    row = {"model": "base", "prompt_index": 0, "sample_index": 0, "prompt": "a cat", "category": None, "seed": 1,
           "image": "base/0.png", "num_frames": 1, "score/clip": 0.5}
    return {"format": "diffalign-evaluate/1", "models": {"base": {}}, "rewards": {}, "settings": {}, "rows": [row],
            **changes}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line 1, column 1: not valid JSON"),
        (json.dumps(_document())[:-40], "not valid JSON"),
        ("[]", r"a JSON list; expected the results.json of `diffalign evaluate` \(a JSON object\)"),
        (json.dumps({k: v for k, v in _document().items() if k != "rows"}), "key 'rows' is missing; expected a JSON list"),
        (json.dumps(_document(models=[])), "key 'models' is a JSON list; expected a JSON dict"),
        (json.dumps(_document(rows=[{"model": "base"}])), r"rows\[0\]: expected an object with the columns"),
        ("\xff", "line 1: byte 0xff is not UTF-8"),
    ],
)
def test_damaged_results_file_is_named(tmp_path, text, expected):
    path = tmp_path / "results.json"
    path.write_bytes(text.encode("latin-1") if text == "\xff" else text.encode())
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + f".*{expected}"):
        load_results(tmp_path)
    path.write_text(json.dumps(_document()))
    assert load_results(path).table["image"].tolist() == [str((tmp_path / "base/0.png").resolve())]
