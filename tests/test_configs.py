"""Config coverage (DESIGN.md, test kind (c)): the conf/ folder is the registry, so every file in it is checked.

Every YAML composes inside its top-level config with its group override and resolves; every ``_target_`` passes the
allow-list and imports; every reproduction preset under ``conf/experiment/`` trains 2 steps on the tiny model of its
family; the sweep presets compose in multirun form and one real 2 x 2 multirun trains on the tiny model.
"""

from __future__ import annotations

import csv
import importlib
import importlib.resources
import importlib.util
import json
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from hydra import compose, initialize_config_module
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from diffusion_align.cli import main
from diffusion_align.config import check_targets, iter_targets

CONF_DIR = Path(str(importlib.resources.files("diffusion_align.conf")))  # what pkg://diffusion_align.conf reads
TOP_LEVEL = ("train", "train-lrm", "generate", "score", "evaluate", "demo")  # one per `diffalign <command>`
# Every group folder and the top-level config it composes in; a new folder must be added here to be covered.
GROUP_PRIMARY = {
    "data": "train",
    "debug": "train",
    "evaluate/prompts": "evaluate",
    "experiment": "train",
    "method": "train",
    "model": "train",
    "reference": "train",
    "reward": "score",
    "timesteps": "train",
    "trainer": "train",
    "trainer/optimizer": "train",
    "world": "demo",
}
# train.yaml's defaults list has no `experiment` entry: presets are appended (`+experiment=name`), after every group.
APPENDED_GROUPS = {"experiment"}
EXPECTED_FILE_COUNT = 83  # YAML files under conf/ outside hydra/ and accelerate/: update when adding one (and check it is covered)
BITSANDBYTES_MISSING = importlib.util.find_spec("bitsandbytes") is None
# Options that resolve the shipped Moving Shapes video pipeline (${shapes_model:video_pipeline}). Until it is trained and
# shipped (issue 14), resolving them must fail with the error naming the missing directory and the training command.
NEEDS_VIDEO_PIPELINE = {"model/moving_shapes.yaml", "world/moving_shapes.yaml"}


def video_pipeline_shipped() -> bool:
    from diffusion_align.moving_shapes.assets import PIPELINE_DIR

    return (PIPELINE_DIR / "model_index.json").is_file()


def _load_train_cli():
    """``train_cli`` of tests/train/conftest.py (a conftest, so imported by path rather than by package name)."""
    spec = importlib.util.spec_from_file_location("tests_train_conftest", Path(__file__).parent / "train" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train_cli


train_cli = _load_train_cli()


def conf_files() -> list[Path]:
    """The hydra config tree: hydra/ holds hydra's own groups, accelerate/ holds `accelerate launch` config files."""
    return sorted(p for p in CONF_DIR.rglob("*.yaml") if p.relative_to(CONF_DIR).parts[0] not in ("hydra", "accelerate"))


def group_of(path: Path) -> str:
    return path.parent.relative_to(CONF_DIR).as_posix()


def is_sweep(path: Path) -> bool:
    return "sweeper" in OmegaConf.to_container(OmegaConf.load(path)).get("hydra", {})


GROUP_FILES = [p for p in conf_files() if p.parent != CONF_DIR]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if not is_sweep(p))
SWEEPS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if is_sweep(p))


def compose_config(config_name: str, overrides: list[str], hydra_node: bool = False) -> DictConfig:
    """``hydra.compose`` of ``conf/<config_name>.yaml``, as ``diffalign <config_name>`` would (no job is run)."""
    with initialize_config_module(config_module="diffusion_align.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_node)


def option_override(group: str, option: str) -> str:
    return f"{'+' if group in APPENDED_GROUPS else ''}{group}={option}"


def compose_experiment(name: str) -> DictConfig:
    return compose_config("train", [option_override("experiment", name)], hydra_node=True)


def leaves(node, prefix: str = "") -> dict[str, object]:
    """``{dotted key: raw value}`` of every leaf of a plain container (interpolations left as text)."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def file_body(path: Path) -> dict:
    body = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    body.pop("defaults", None)
    return body


def file_package(path: Path) -> str:
    """Where hydra puts a group file's keys: the root for ``# @package _global_``, else the group path."""
    return "" if "# @package _global_" in path.read_text() else group_of(path).replace("/", ".")


# (a) every file composes


def test_conf_file_count_is_the_expected_one():
    found = [p.relative_to(CONF_DIR).as_posix() for p in conf_files()]
    assert len(found) == EXPECTED_FILE_COUNT, f"conf/ now holds {len(found)} YAML files: {found}"
    assert {p.stem for p in conf_files() if p.parent == CONF_DIR} == set(TOP_LEVEL)
    assert {group_of(p) for p in GROUP_FILES} == set(GROUP_PRIMARY)


@pytest.mark.parametrize("path", conf_files(), ids=lambda p: p.relative_to(CONF_DIR).as_posix())
def test_every_yaml_loads_as_a_mapping(path):
    assert isinstance(OmegaConf.load(path), DictConfig)


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_config_composes(name):
    cfg = compose_config(name, [])
    assert cfg.keys() >= file_body(CONF_DIR / f"{name}.yaml").keys() - {"hydra"}


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: p.relative_to(CONF_DIR).as_posix())
def test_group_option_composes_in_its_command(path):
    """The option composes and resolves, and every value it sets is in the composed config where hydra puts it."""
    group = group_of(path)
    cfg = compose_config(GROUP_PRIMARY[group], [option_override(group, path.stem)], hydra_node=True)
    package = file_package(path)
    composed = OmegaConf.to_container(OmegaConf.select(cfg, package) if package else cfg, resolve=False)
    expected = leaves(file_body(path))
    assert {key: leaves(composed).get(key, "<absent>") for key in expected} == expected
    # Every interpolation and resolver resolves; `output_dir` (${hydra:runtime.output_dir}) exists only in a job.
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in ("hydra", "output_dir")])
    if path.relative_to(CONF_DIR).as_posix() in NEEDS_VIDEO_PIPELINE and not video_pipeline_shipped():
        with pytest.raises(InterpolationResolutionError, match="the shipped Moving Shapes pipeline is missing.*train_pipeline"):
            OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
        return
    OmegaConf.to_container(job, resolve=True, throw_on_missing=False)


def test_optimizer_group_switches_the_whole_optimizer():
    cfg = compose_config("train", ["trainer/optimizer=adafactor"])
    assert cfg.trainer.optimizer._target_ == "transformers.optimization.Adafactor"
    assert "betas" not in cfg.trainer.optimizer  # nothing of AdamW leaks into another optimizer
    assert compose_config("train", []).trainer.optimizer._target_ == "torch.optim.AdamW"


# (b) every _target_ is allowed and importable


def all_targets() -> list[tuple[str, str]]:
    targets = []
    for path in conf_files():
        for key, target in iter_targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False)):
            targets.append((f"{path.relative_to(CONF_DIR).as_posix()}:{key}", target))
    return targets


def locate(target: str) -> object:
    """Import the module part of a dotted ``_target_`` and walk the attributes (``pkg.module.Class.method``)."""
    parts = target.split(".")
    obj = importlib.import_module(parts[0])
    for depth in range(1, len(parts)):
        try:
            obj = getattr(obj, parts[depth])
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: depth + 1]))
    return obj


def test_every_target_is_literal_and_allowed():
    for where, target in all_targets():
        assert "${" not in target, f"{where}: interpolated _target_ {target!r}"
    for path in conf_files():
        check_targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False))


@pytest.mark.parametrize(
    ("where", "target"),
    [
        pytest.param(
            where,
            target,
            id=where,
            marks=pytest.mark.skipif(
                target.startswith("bitsandbytes.") and BITSANDBYTES_MISSING, reason="bitsandbytes is not installed"
            ),
        )
        for where, target in all_targets()
    ],
)
def test_every_target_resolves_to_an_attribute(where, target):
    assert callable(locate(target)), f"{where}: {target} is not callable"


@pytest.mark.skipif(not BITSANDBYTES_MISSING, reason="bitsandbytes is installed")
def test_bitsandbytes_targets_name_the_missing_package():
    targets = [target for _, target in all_targets() if target.startswith("bitsandbytes.")]
    assert targets == ["bitsandbytes.optim.AdamW8bit"]
    with pytest.raises(ModuleNotFoundError) as missing:
        locate(targets[0])
    assert missing.value.name == "bitsandbytes"


@pytest.mark.skipif(not BITSANDBYTES_MISSING, reason="bitsandbytes is installed")
def test_training_with_8bit_adam_fails_naming_bitsandbytes(tmp_path):
    with pytest.raises(InstantiationException, match="bitsandbytes.optim.AdamW8bit") as error:
        train_cli(tmp_path, "trainer/optimizer=adamw8bit", "trainer.max_steps=1")
    assert "No module named 'bitsandbytes'" in str(error.value.__cause__)
    assert "Are you sure that module 'bitsandbytes' is installed?" in str(error.value.__cause__)


# (c) every reproduction preset trains 2 steps on the tiny model of its family


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    from diffusion_align.testing.data import write_tiny_pairwise_parquet, write_tiny_ranked_parquet

    pairs, ranked = tmp_path_factory.mktemp("pairs"), tmp_path_factory.mktemp("ranked")
    write_tiny_pairwise_parquet(pairs, n_rows=8, resolution=32, ties=2)
    write_tiny_ranked_parquet(ranked, n_prompts=4, k=4, resolution=32)
    return {"pairs": pairs, "ranked": ranked}


# Where each data option reads its files, and which tiny data it gets.
DATA_PATH_KEYS = {
    "pickapic": ("data.dataset.paths", "pairs"),
    "unpaired": ("data.dataset.source.paths", "pairs"),
    "ranked": ("data.dataset.paths", "ranked"),
}
# The engineering kept, besides model.finetune, method, reference and timesteps (compared whole).
KEPT_TRAINER_KEYS = ("gradient_checkpointing", "max_grad_norm", "lr_scheduler", "optimizer")


def tiny_overrides(preset: DictConfig, data: dict[str, Path]) -> list[str]:
    """Swap the preset's model for the tiny one of its family and its data for tiny data; keep everything else.

    The preset is appended after `debug=tiny`, so its step count wins over debug's and is set again here. Mixed precision
    is a GPU setting (float32 on this CPU), accumulation drops to 1 and the batch to at most 2.
    """
    choices = preset.hydra.runtime.choices
    path_key, kind = DATA_PATH_KEYS[choices.data]
    overrides = [
        f"model=tiny_{choices.model}",
        "model.resolution=32",
        f"{path_key}={data[kind]}",
        f"data.loader.batch_size={min(2, preset.data.loader.batch_size)}",
        "data.loader.num_workers=0",
        "data.loader.pin_memory=false",
        "trainer.max_steps=2",
        "trainer.gradient_accumulation_steps=1",
        "trainer.mixed_precision=no",
    ]
    if preset.trainer.optimizer._target_.startswith("bitsandbytes.") and BITSANDBYTES_MISSING:
        # 8-bit AdamW needs bitsandbytes (and a GPU), absent here: AdamW with the preset's lr trains instead.
        overrides.append("trainer/optimizer=adamw")
    return overrides


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_reproduction_preset_trains_two_steps_on_the_tiny_model(name, tiny_data, tmp_path):
    preset = compose_experiment(name)
    assert preset.hydra.runtime.choices.data in DATA_PATH_KEYS, f"{name}: add its data option to DATA_PATH_KEYS"
    path_key, _ = DATA_PATH_KEYS[preset.hydra.runtime.choices.data]
    parent, _, leaf = path_key.rpartition(".")
    assert OmegaConf.is_missing(OmegaConf.select(preset, parent), leaf), "a preset leaves its data paths to the user"
    out = train_cli(tmp_path, option_override("experiment", name), *tiny_overrides(preset, tiny_data))
    ran = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert ran.trainer.max_steps == 2 and ran.model.adapter.path != preset.model.adapter.path
    for key in ("method", "reference", "timesteps", "model.finetune"):
        assert OmegaConf.to_container(OmegaConf.select(ran, key)) == OmegaConf.to_container(OmegaConf.select(preset, key))
    for key in KEPT_TRAINER_KEYS:
        if key == "optimizer" and ran.trainer.optimizer._target_ != preset.trainer.optimizer._target_:
            assert ran.trainer.optimizer.lr == preset.trainer.optimizer.lr  # bitsandbytes swapped for AdamW
            continue
        assert ran.trainer[key] == preset.trainer[key], f"trainer.{key}"
    if preset.model.finetune.mode == "lora":
        assert (out / "pytorch_lora_weights.safetensors").is_file()
    else:
        assert (out / "pipeline" / "model_index.json").is_file()
    assert "Non-finite steps skipped: 0" in (out / "README.md").read_text()


# (d) the sweep presets compose with -m, and one real multirun trains


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_preset_lists_options_that_exist(name):
    """Every swept group lists options that are files of that group; every swept key is a key of the config."""
    preset = compose_experiment(name)
    params = preset.hydra.sweeper.params
    assert params, f"{name}: hydra.sweeper.params is empty"
    for key, values in params.items():
        if key in GROUP_PRIMARY:
            for option in str(values).split(","):
                assert (CONF_DIR / key / f"{option}.yaml").is_file(), f"{name}: {key}={option}"
        else:
            parent, _, leaf = key.rpartition(".")
            assert leaf in OmegaConf.select(preset, parent), f"{name}: {key} is not a config key"


def test_accelerate_configs_are_accelerate_launch_configs():
    """conf/accelerate/*.yaml are read by `accelerate launch --config_file` (accelerate's own schema), not hydra."""
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted((CONF_DIR / "accelerate").glob("*.yaml"))
    assert [p.name for p in files] == ["deepspeed_zero2.yaml", "fsdp.yaml", "multi_gpu.yaml"]
    ddp = load_config_from_file(str(CONF_DIR / "accelerate" / "multi_gpu.yaml"))
    assert (ddp.distributed_type, ddp.num_machines, ddp.use_cpu) == ("MULTI_GPU", 1, False)
    fsdp = load_config_from_file(str(CONF_DIR / "accelerate" / "fsdp.yaml"))
    assert (fsdp.distributed_type, fsdp.num_machines, fsdp.use_cpu) == ("FSDP", 1, False)
    assert fsdp.fsdp_config["fsdp_version"] == 2  # the only FSDP diffalign train accepts
    zero = load_config_from_file(str(CONF_DIR / "accelerate" / "deepspeed_zero2.yaml"))
    assert (zero.distributed_type, zero.deepspeed_config["zero_stage"]) == ("DEEPSPEED", 2)  # ZeRO-3 is refused


def test_sweep_methods_lists_offline_pairwise_methods():
    for method in compose_experiment("sweep_methods").hydra.sweeper.params.method.split(","):
        spec = OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml")
        assert (spec.inputs, spec.noising) == ("pairwise", "forward"), method


def test_sweep_lora_rank_keeps_the_lora_scale_at_one():
    cfg = compose_config("train", ["+experiment=sweep_lora_rank", "model.finetune.rank=16"])
    assert cfg.model.finetune.mode == "lora" and cfg.model.finetune.alpha == 16


def test_multirun_over_methods_and_beta_trains_four_jobs(tiny_data, tmp_path, monkeypatch):
    """`diffalign train -m`: the command-line lists replace sweep_methods' list, giving 2 methods x 2 β = 4 jobs.

    train_cli runs single jobs (hydra.run.dir), so the multirun calls the CLI itself, with train_cli's two settings:
    hydra re-raises job errors, and accelerate's process-wide state starts clean.
    """
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    AcceleratorState._reset_state(reset_partial_state=True)
    sweep_dir = tmp_path / "sweep"
    main(["train", "-m", "debug=tiny", "+experiment=sweep_methods", "method=dpo,mapo", "method.loss.beta=0.1,5000",
          f"data.dataset.paths={tiny_data['pairs']}", f"hydra.sweep.dir={sweep_dir}", "hydra/job_logging=disabled",
          "hydra/hydra_logging=disabled"])
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    runs = set()
    for job in jobs:
        assert (job / "pytorch_lora_weights.safetensors").is_file()
        ran = OmegaConf.load(job / ".hydra" / "config.yaml")
        runs.add((ran.method.name, ran.method.loss.beta))
    assert runs == {("dpo", 0.1), ("dpo", 5000), ("mapo", 0.1), ("mapo", 5000)}
    # the sweep summary (diffusion_align/sweep.py): one row per job, overrides as columns, final metrics
    with (sweep_dir / "sweep_summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["job"], row["method"], row["method.loss.beta"], row["status"]) for row in rows] == [
        ("0", "dpo", "0.1", "completed"), ("1", "dpo", "5000", "completed"),
        ("2", "mapo", "0.1", "completed"), ("3", "mapo", "5000", "completed")]
    for row, job in zip(rows, jobs, strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        assert row["step"] == str(metrics["step"]) and float(row["train/loss"]) == metrics["train/loss"]
    assert {"train/rewards/accuracies", "train/mapo/or_loss"} <= set(rows[0])  # dpo and mapo metrics side by side
