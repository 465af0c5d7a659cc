"""Kill ``diffalign train`` and ``diffalign generate`` with SIGKILL at random points, resume after each kill, and
check the end: complete, loadable outputs equal to an uninterrupted run's (no lost or repeated step, batch or row).

Each kill lands, in turn, during start-up (model load, data scan, resume), right after a checkpoint or shard is
saved, or mid-work (inside a step or a shard and the save that ends it); the last one while the final outputs are
written. The CI-sized tests kill 3 times each, in children of a fork server (the package imported once). The
``slow`` ones kill ``KILL_POINTS`` times (default 20) each, through the ``diffalign`` console script
(``KILL_LAUNCHER=fork`` for the fast launcher), and print the table of kill points:

    pytest tests/robustness/test_kill_resume.py -m slow -s
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from diffusion_align.adapters.lora import LORA_WEIGHT_NAME, check_lora_file
from diffusion_align.train.checkpoint import list_checkpoints, validate_checkpoint
from robustness.killing import ConsoleLauncher, ForkLauncher, KillReport, Workload, kill_and_resume, timed_run

PROMPTS_PER_SHARD = 2
SORT_KEYS = {"ranked": ["prompt_id", "candidate"], "pairs": ["prompt_id", "seed_0", "seed_1"]}


def slow_launcher(work: Path):
    return ForkLauncher(work / "warm-up.log") if os.environ.get("KILL_LAUNCHER") == "fork" else ConsoleLauncher()


def slow_points() -> int:
    return int(os.environ.get("KILL_POINTS", "20"))


def hidden_entries(directory: Path) -> int:
    """Hidden temporaries under ``directory`` (hydra's own ``.hydra`` record is not one)."""
    if not directory.is_dir():
        return 0
    return sum(1 for p in directory.rglob(".*") if ".hydra" not in p.parts)


# ---- training ------------------------------------------------------------------------------------------------------
def training(out: Path, data: Path, steps: int) -> Workload:
    args = ["train", "debug=tiny", f"hydra.run.dir={out}", f"data.dataset.paths={data}", f"trainer.max_steps={steps}",
            "trainer.checkpoint_every=1", "trainer.optimizer.lr=0.01"]

    def describe() -> tuple[str, int]:
        found = list_checkpoints(out / "checkpoints")
        weights = " + LoRA" if (out / LORA_WEIGHT_NAME).exists() else ""
        return f"{found[-1].name if found else 'no checkpoint'}{weights}", hidden_entries(out)

    return Workload(args, steps, lambda k: (out / "checkpoints" / f"checkpoint-{k}").is_dir(),
                    (out / LORA_WEIGHT_NAME).exists, describe)


def kill_training(launcher, points: int, data: Path, work: Path, seed: int) -> KillReport:
    """``4 x points`` steps (at least 12: 1.5 epochs of the 16 tiny pairs at batch 2), so the kills, about 2 steps
    apart, land all along the run, mid-epoch and across epoch boundaries."""
    steps = max(12, 4 * points)
    reference, out = work / "reference", work / "killed"
    timing = timed_run(launcher, training(reference, data, steps), work / "reference.log")
    report = kill_and_resume(launcher, training(out, data, steps), work, points, random.Random(seed), timing)
    assert validate_checkpoint(list_checkpoints(out / "checkpoints")[-1]).step == steps
    assert f"{steps} optimizer steps" in (out / "README.md").read_text()
    check_lora_loads(out / LORA_WEIGHT_NAME)
    resumed, straight = load_file(out / LORA_WEIGHT_NAME), load_file(reference / LORA_WEIGHT_NAME)
    assert resumed.keys() == straight.keys()
    for key in straight:  # every batch seen once, in order: the same weights to the bit
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    return report


def check_lora_loads(file: Path) -> None:
    from diffusers import UNet2DConditionModel

    from diffusion_align.config import resolve_tiny_model

    unet = UNet2DConditionModel.from_pretrained(resolve_tiny_model("sd15"), subfolder="unet")
    assert check_lora_file(file, unet, prefix="unet") > 0


def test_training_killed_at_3_random_points_ends_as_an_uninterrupted_run(tiny_pairs, tmp_path):
    report = kill_training(ForkLauncher(tmp_path / "warm-up.log"), 3, tiny_pairs, tmp_path, seed=0)
    print(f"\ntraining, 3 kill points:\n{report.table()}")
    assert len(report.points) == 3 and all(p.status == 137 for p in report.points), report.table()


@pytest.mark.slow
def test_training_killed_at_many_random_points(tiny_pairs, tmp_path):
    report = kill_training(slow_launcher(tmp_path), slow_points(), tiny_pairs, tmp_path, seed=1)
    print(f"\ntraining, {slow_points()} kill points:\n{report.table()}")
    assert all(p.status == 137 for p in report.points), report.table()


# ---- generation ----------------------------------------------------------------------------------------------------
def generation(out: Path, shards: int) -> Workload:
    args = ["generate", f"out_dir={out}", f"hydra.run.dir={out.parent / (out.name + '_hydra')}",
            "prompts.source=shapes_train", f"prompts.limit={shards * PROMPTS_PER_SHARD}", "reward=shapes",
            "+pipelines.shapes.path=${shapes_model:pipeline}", "+pipelines.shapes.call={num_inference_steps: 2}",
            "images_per_prompt=2", f"prompts_per_shard={PROMPTS_PER_SHARD}", "progress=false"]

    def marker(k: int) -> Path:  # unit k is shard k - 1
        return out / "shards" / f"shard-{k - 1:05d}.json"

    def describe() -> tuple[str, int]:
        complete = sum(marker(k).is_file() for k in range(1, shards + 1))
        card = " + card" if (out / "README.md").is_file() else ""
        return f"{complete}/{shards} shards{card}", hidden_entries(out)

    def last_output_started() -> bool:  # the last shard's first table is on disk, its marker and the card to come
        return (out / "ranked" / f"shard-{shards - 1:05d}.parquet").is_file()

    return Workload(args, shards, lambda k: marker(k).is_file(), last_output_started, describe)


def read_rows(out: Path, table: str) -> pa.Table:
    files = sorted((out / table).glob("*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files).sort_by([(k, "ascending") for k in SORT_KEYS[table]])


def kill_generation(launcher, points: int, work: Path, seed: int) -> KillReport:
    """``2 x points`` shards of 2 prompts (at least 6), so the kills, about 2 shards apart, land all along."""
    shards = max(6, 2 * points)
    reference, out = work / "reference", work / "killed"
    timing = timed_run(launcher, generation(reference, shards), work / "reference.log")
    report = kill_and_resume(launcher, generation(out, shards), work, points, random.Random(seed), timing)
    for table in SORT_KEYS:
        rows, expected = read_rows(out, table), read_rows(reference, table)
        keys = list(zip(*(rows.column(k).to_pylist() for k in SORT_KEYS[table])))
        assert len(set(keys)) == len(keys) == expected.num_rows, f"{table}: lost or duplicated rows"
        assert rows.equals(expected), f"{table}: rows differ from the uninterrupted run"
    assert read_rows(out, "ranked").num_rows == shards * PROMPTS_PER_SHARD * 2
    assert (out / "README.md").read_text() == (reference / "README.md").read_text().replace(str(reference), str(out))
    # a killed shard write leaves a hidden temporary, removed when the shard is redone (the dataset card's own
    # temporary is not: harmless, as no glob matches it, and counted in the report)
    assert not list(out.rglob(".shard-*.tmp")), "temporaries of a killed shard write were left behind"
    return report


def test_generation_killed_at_3_random_points_ends_as_an_uninterrupted_run(tmp_path):
    report = kill_generation(ForkLauncher(tmp_path / "warm-up.log"), 3, tmp_path, seed=0)
    print(f"\ngeneration, 3 kill points:\n{report.table()}")
    assert len(report.points) == 3 and all(p.status == 137 for p in report.points), report.table()


@pytest.mark.slow
def test_generation_killed_at_many_random_points(tmp_path):
    report = kill_generation(slow_launcher(tmp_path), slow_points(), tmp_path, seed=1)
    print(f"\ngeneration, {slow_points()} kill points:\n{report.table()}")
    assert all(p.status == 137 for p in report.points), report.table()
