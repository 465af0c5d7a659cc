"""reward_models.scoring.run: folders and Parquet tables end to end, through conf/score.yaml."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch
from contract import assert_scores_close
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from reward_models.scoring import run

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_score(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="score", overrides=overrides)


def pickscore_overrides(kwargs: dict[str, str]) -> list[str]:
    return ["reward=pickscore", f"reward.model={kwargs['model']}", f"reward.processor={kwargs['processor']}"]


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_folder_with_metadata_jsonl_to_parquet(tiny_reward_kwargs, pickscore_model, image_folder, reward_prompts, tmp_path):
    lines = [json.dumps({"file_name": f"img_{i}.png", "prompt": p}) for i, p in enumerate(reward_prompts)]
    (image_folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    output = tmp_path / "out" / "scores.parquet"
    cfg = compose_score([*pickscore_overrides(tiny_reward_kwargs("pickscore")), f"input={image_folder}", f"output={output}"])
    assert run(cfg) == output
    table = pq.read_table(output)
    assert table.column_names == ["file_name", "prompt", "score"]
    assert table["file_name"].to_pylist() == [f"img_{i}.png" for i in range(4)]
    assert table["prompt"].to_pylist() == reward_prompts
    images = [image_folder / f"img_{i}.png" for i in range(4)]
    from PIL import Image

    expected = pickscore_model.score([Image.open(p).convert("RGB") for p in images], reward_prompts)
    assert_scores_close(torch.tensor(table["score"].to_pylist()), expected, relative=1e-5)
    assert table.schema.metadata[b"reward"] == b"PickScoreReward"
    assert [p.name for p in output.parent.iterdir()] == ["scores.parquet"]  # no temporary file left behind


def test_folder_with_prompts_csv_to_csv(tiny_reward_kwargs, image_folder, tmp_path):
    rows = "file_name,caption\n" + "".join(f'img_{i}.png,"caption, number {i}"\n' for i in range(4))
    (image_folder / "prompts.csv").write_text(rows)
    output = tmp_path / "scores.csv"
    overrides = [*pickscore_overrides(tiny_reward_kwargs("pickscore")), "prompt_column=caption", "batch_size=3"]
    run(compose_score([*overrides, f"input={image_folder}", f"output={output}"]))
    table = pa_csv.read_csv(output)
    assert table["prompt"].to_pylist() == [f"caption, number {i}" for i in range(4)]
    assert table.num_rows == 4


def test_folder_without_sidecar_reads_prompts_from_file_names(tiny_reward_kwargs, image_folder, tmp_path):
    output = tmp_path / "scores.parquet"
    run(compose_score([*pickscore_overrides(tiny_reward_kwargs("pickscore")), f"input={image_folder}", f"output={output}"]))
    assert pq.read_table(output)["prompt"].to_pylist() == [f"img {i}" for i in range(4)]


def test_sidecar_problems_name_the_file(tiny_reward_kwargs, image_folder, tmp_path):
    overrides = [*pickscore_overrides(tiny_reward_kwargs("pickscore")), f"input={image_folder}", f"output={tmp_path / 's.csv'}"]
    (image_folder / "metadata.jsonl").write_text(json.dumps({"file_name": "img_0.png", "prompt": "only one"}) + "\n")
    with pytest.raises(ValueError, match=r"metadata\.jsonl: no prompt for image file\(s\) \['img_1.png'"):
        run(compose_score(overrides))
    (image_folder / "prompts.csv").write_text("file_name,prompt\n")
    with pytest.raises(ValueError, match="keep one prompt sidecar"):
        run(compose_score(overrides))


def test_parquet_with_bytes_and_struct_columns_long_format(tiny_reward_kwargs, pickscore_model, reward_images, reward_prompts, tmp_path):
    source = tmp_path / "pairs.parquet"
    table = pa.table(
        {
            "caption": reward_prompts[:2],
            "jpg_0": [png_bytes(reward_images[0]), png_bytes(reward_images[1])],
            "jpg_1": [{"bytes": png_bytes(reward_images[2]), "path": None}, {"bytes": png_bytes(reward_images[3]), "path": None}],
        }
    )
    pq.write_table(table, source)
    output = tmp_path / "scores.parquet"
    overrides = [*pickscore_overrides(tiny_reward_kwargs("pickscore")), "prompt_column=caption", "image_columns=[jpg_0,jpg_1]"]
    run(compose_score([*overrides, "batch_size=1", f"input={source}", f"output={output}"]))
    scores = pq.read_table(output)
    assert scores.column_names == ["row", "image_column", "prompt", "score"]
    assert scores["row"].to_pylist() == [0, 0, 1, 1]
    assert scores["image_column"].to_pylist() == ["jpg_0", "jpg_1", "jpg_0", "jpg_1"]
    order = [reward_images[i] for i in (0, 2, 1, 3)]
    prompts = [reward_prompts[0], reward_prompts[0], reward_prompts[1], reward_prompts[1]]
    assert_scores_close(torch.tensor(scores["score"].to_pylist()), pickscore_model.score(order, prompts), relative=1e-5)


def test_parquet_missing_column_is_named(tiny_reward_kwargs, tmp_path):
    source = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "picture": [b"..."]}), source)
    cfg = compose_score([*pickscore_overrides(tiny_reward_kwargs("pickscore")), f"input={source}", f"output={tmp_path / 'o.csv'}"])
    with pytest.raises(KeyError, match=r"bad\.parquet: missing column\(s\) \['image'\]"):
        run(cfg)


def test_bad_output_suffix_and_missing_input_are_refused(image_folder, tmp_path):
    reward = {"_target_": "reward_models.PickScoreReward"}  # never built: the paths are checked first
    common = {"reward": reward, "prompt_column": "prompt", "image_columns": ["image"], "batch_size": 2, "device": "cpu"}
    with pytest.raises(ValueError, match=r"scores\.json: expected a suffix"):
        run(OmegaConf.create({**common, "input": str(image_folder), "output": str(tmp_path / "scores.json")}))
    with pytest.raises(FileNotFoundError, match="absent"):
        run(OmegaConf.create({**common, "input": str(tmp_path / "absent"), "output": str(tmp_path / "s.csv")}))


def test_default_ensemble_config_runs_on_tiny_members(tiny_reward_kwargs, image_folder, tmp_path):
    pick, hps, clip = tiny_reward_kwargs("pickscore"), tiny_reward_kwargs("hps"), tiny_reward_kwargs("clip_score")
    overrides = [
        f"reward.models.pickscore.model={pick['model']}",
        f"reward.models.pickscore.processor={pick['processor']}",
        f"reward.models.hps_v2_1.checkpoint={hps['checkpoint']}",
        f"reward.models.hps_v2_1.architecture={hps['architecture']}",
        f"reward.models.hps_v2_1.model_config={hps['model_config']}",
        f"reward.models.clip_score.model={clip['model']}",
        f"input={image_folder}",
        f"output={tmp_path / 'scores.parquet'}",
        "batch_size=2",
    ]
    run(compose_score(overrides))
    table = pq.read_table(tmp_path / "scores.parquet")
    assert table.column_names == ["file_name", "prompt", "score", "score_pickscore", "score_hps_v2_1", "score_clip_score"]
    ensemble_scores = torch.tensor(table["score"].to_pylist())
    assert ensemble_scores.mean().abs() < 1e-5  # the mean of z-scores over the whole folder is zero
