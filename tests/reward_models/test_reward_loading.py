"""reward_models.loading: local-or-Hub sources, safe weight reading, errors naming the file and the keys."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from reward_models import PickScoreReward, WeightLoadingError
from reward_models.loading import (
    describe_key_mismatch,
    is_local_source,
    load_clip_model,
    load_clip_processor,
    load_state_dict_file,
    load_state_dict_strict,
)


def test_local_paths_and_hub_ids_are_told_apart(tmp_path):
    assert is_local_source(tmp_path)
    assert is_local_source(str(tmp_path))
    assert is_local_source("./not/here") and is_local_source("/abs/missing") and is_local_source("~/x")
    assert not is_local_source("yuvalkirstain/PickScore_v1")
    assert not is_local_source("openai/clip-vit-large-patch14")
    with pytest.raises(FileNotFoundError, match="neither an existing local path nor a Hub id"):
        is_local_source("some dir/with spaces/model")


def test_missing_model_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_clip_model(tmp_path / "nowhere")


def test_model_directory_without_weights_names_expected_files(tiny_reward_kwargs, tmp_path):
    copy = tmp_path / "no_weights"
    shutil.copytree(tiny_reward_kwargs("clip_score")["model"], copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{copy}: no weight file; expected one of model\.safetensors"):
        load_clip_model(copy)


def test_non_clip_config_is_refused(tiny_reward_kwargs, tmp_path):
    copy = tmp_path / "not_clip"
    shutil.copytree(tiny_reward_kwargs("clip_score")["model"], copy)
    (copy / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(WeightLoadingError, match=rf"{copy}: expected a CLIP model .* 'bert'"):
        load_clip_model(copy)


def test_weights_of_another_width_list_mismatched_keys(tiny_reward_kwargs, tmp_path):
    wide = Path(tiny_reward_kwargs("clip_score", width=48)["model"])
    narrow = Path(tiny_reward_kwargs("clip_score")["model"])
    mixed = tmp_path / "mixed"
    shutil.copytree(narrow, mixed)
    shutil.copy(wide / "model.safetensors", mixed / "model.safetensors")
    with pytest.raises(WeightLoadingError) as error:
        load_clip_model(mixed)
    assert str(mixed) in str(error.value) and "wrong shapes:" in str(error.value)


def test_pickscore_with_a_missing_processor_names_it(tiny_reward_kwargs, tmp_path):
    kwargs = {**tiny_reward_kwargs("pickscore"), "processor": str(tmp_path / "processor")}
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "processor")):
        PickScoreReward(**kwargs)


def test_processor_directory_without_tokenizer_is_named(tiny_reward_kwargs, tmp_path):
    copy = tmp_path / "processor"
    shutil.copytree(tiny_reward_kwargs("pickscore")["processor"], copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer file"):
        load_clip_processor(copy)


def test_state_dict_files_load_safely(tmp_path):
    weights = {"w": torch.ones(2)}
    torch.save(weights, tmp_path / "a.pth")
    torch.testing.assert_close(load_state_dict_file(tmp_path / "a.pth")["w"], torch.ones(2))
    torch.save({"w": torch.ones(2), "f": print}, tmp_path / "pickled.pth")  # arbitrary objects need full unpickling
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_state_dict_file(tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_state_dict_file(tmp_path / "absent.safetensors")


def test_strict_loading_lists_a_few_keys_and_the_count():
    module = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(8)])
    state = {f"{i}.weight": torch.zeros(2, 2) for i in range(8)}  # all biases missing
    state["extra"] = torch.zeros(1)
    with pytest.raises(WeightLoadingError) as error:
        load_state_dict_strict(module, state, "weights.pth")
    message = str(error.value)
    assert message.startswith("weights.pth: weights do not fit Sequential")
    assert "missing keys: 0.bias, 1.bias, 2.bias, 3.bias, 4.bias, ... (8 in all)" in message
    assert "unexpected keys: extra" in message


def test_describe_key_mismatch_shows_shapes():
    text = describe_key_mismatch([], [], [("proj.weight", (8, 32), (16, 32))])
    assert text == "wrong shapes: proj.weight (file (8, 32) vs model (16, 32))"
