"""config.build: the allow-list of _target_s, and the tiny-model resolver."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffusion_align.config import ALLOWED_TARGET_PREFIXES, ConfigError, build, check_targets, iter_targets


def test_iter_targets_walks_nested_dicts_and_lists():
    tree = {"a": {"_target_": "x.A", "b": [{"_target_": "x.B"}, 3]}, "c": {"d": {"_target_": "x.D"}}}
    assert list(iter_targets(tree)) == [("a", "x.A"), ("a.b[0]", "x.B"), ("c.d", "x.D")]


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run", "torch.load", "diffusion_alignx.evil"])
def test_build_refuses_targets_outside_the_allow_list(target):
    cfg = OmegaConf.create({"outer": {"inner": {"_target_": target, "_args_": ["echo pwned"]}}})
    expected = re.escape(f"config key 'outer.inner': _target_ '{target}' is not allowed")
    with pytest.raises(ConfigError, match=expected):
        build(cfg.outer)


def test_interpolated_target_is_checked_by_its_value():
    cfg = OmegaConf.create({"name": "os.system", "node": {"_target_": "${name}"}})
    with pytest.raises(ConfigError, match="os.system"):
        check_targets(cfg)


def test_build_instantiates_allowed_targets_with_runtime_objects():
    import torch

    param = torch.nn.Parameter(torch.zeros(3))
    cfg = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5})
    optimizer = build(cfg)(params=[param])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.5
    loss = build(OmegaConf.create({"_target_": "diffusion_align.types.LossOutput", "loss": 1, "losses": 2}))
    assert loss.loss == 1 and loss.metrics == {}
    assert isinstance(build(OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True})), functools.partial)


def test_allow_list_is_the_documented_one():
    assert ALLOWED_TARGET_PREFIXES == (
        "diffusion_align.",
        "reward_models.",
        "torch.optim.",
        "diffusers.",
        "transformers.",
        "peft.",
        "bitsandbytes.optim.",
    )


def slow_build(tmp, log):  # a build that takes a while and leaves a trace of every run
    import time

    with open(log, "a") as handle:
        handle.write("built\n")
    time.sleep(0.5)
    (tmp / "model_index.json").write_text("{}")


def build_in_a_process(final, log):
    from diffusion_align.config import build_once

    built = build_once(Path(final), slow_build, (log,), "pipeline", marker="model_index.json")
    assert (built / "model_index.json").is_file()


def test_concurrent_processes_build_a_tiny_model_once(tmp_path):
    """`accelerate launch` on a fresh cache: every process resolves ${tiny_model:...} at once; one builds."""
    import multiprocessing

    final, log = tmp_path / "cache" / "sd15-x", tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=build_in_a_process, args=(str(final), str(log))) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert log.read_text() == "built\n" and (final / "model_index.json").is_file()
    assert not [p.name for p in final.parent.iterdir() if p.name.startswith(".sd15-x.")]  # no temporary left


def build_recording_the_process(tmp, log):
    import os

    with open(log, "w") as handle:
        handle.write(str(os.getpid()))
    (tmp / "model_index.json").write_text("{}")


def test_under_a_process_group_the_build_runs_in_a_child_process(tmp_path, monkeypatch):
    """transformers writes weights on rank 0 of a process group only: the build goes to a process without one."""
    import os

    import diffusion_align.config as config

    monkeypatch.setattr(config, "torch_distributed_rank", lambda: 1)
    log = tmp_path / "pid"
    built = config.build_once(tmp_path / "sd15-x", build_recording_the_process, (str(log),), "pipeline",
                              marker="model_index.json")
    assert (built / "model_index.json").is_file() and int(log.read_text()) != os.getpid()
    with pytest.raises(RuntimeError, match="building this tiny pipeline failed in a child process"):
        config.build_once(tmp_path / "broken", build_recording_the_process, (str(tmp_path / "no" / "pid"),), "pipeline",
                           marker="model_index.json")
    assert not (tmp_path / "broken").exists()
