"""conf/data/*.yaml: each file builds its dataset through diffusion_align.config.build, with the documented keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffusion_align.config import build
from diffusion_align.data import (
    PairwiseParquetDataset,
    RankedParquetDataset,
    UnpairedDataset,
    VideoPairDataset,
)

CONF_DATA = Path(__file__).resolve().parents[2] / "conf" / "data"
EXPECTED = {
    "pickapic": ("tiny_pairs", PairwiseParquetDataset),
    "tiny": ("tiny_pairs", PairwiseParquetDataset),
    "ranked": ("tiny_ranked", RankedParquetDataset),
    "video_pairs": ("tiny_videos", VideoPairDataset),
    "unpaired": ("tiny_pairs", UnpairedDataset),
}


def test_every_data_config_is_covered():
    assert sorted(p.stem for p in CONF_DATA.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_data_config_builds_its_dataset(name, request):
    fixture, dataset_class = EXPECTED[name]
    files = request.getfixturevalue(fixture)
    data = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    assert set(data) == {"dataset", "cache", "loader"}
    assert set(data.cache) == {"enabled", "dir", "batch_size"} and set(data.loader) == {
        "batch_size",
        "num_workers",
        "pin_memory",
    }
    method = {"tie_policy": "drop", "label_smoothing": 0.0}
    root = OmegaConf.create({"seed": 0, "model": {"resolution": 16}, "method": method, "data": data})
    dataset_node = root.data.dataset.source if name == "unpaired" else root.data.dataset
    if name == "tiny":  # written on first use into the local cache
        assert dataset_node._get_node("paths")._value() == "${tiny_data:pairwise}"
    else:
        assert OmegaConf.is_missing(dataset_node, "paths")
    dataset_node.paths = str(files[0].parent)
    dataset = build(root.data.dataset)
    assert isinstance(dataset, dataset_class) and len(dataset) > 0
    assert dataset[0]["pixel_values"].shape[-2:] == (16, 16)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_data_config_composes_into_train(name):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="diffusion_align.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}", "model=sd15"])
    dataset = cfg.data.dataset.source if name == "unpaired" else cfg.data.dataset
    assert dataset.resolution == 512 and dataset.seed == cfg.seed
