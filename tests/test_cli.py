"""The diffalign console script: help, composed config, and every command wired to a function that exists."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from diffusion_align.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["diffalign", *args], capture_output=True, text=True, env=env, timeout=300)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("train", "generate", "score", "evaluate", "demo"):
        assert name in text


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "usage: diffalign" in capsys.readouterr().out


def test_unknown_command_names_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_composes_its_config(command):
    done = run_cli(command, "--cfg", "job")
    assert done.returncode == 0, done.stderr


def test_train_help_shows_groups_and_config():
    done = run_cli("train", "--help")
    assert done.returncode == 0, done.stderr
    for group in ("model:", "method:", "reference:", "trainer:", "data:"):
        assert group in done.stdout
    assert "diffalign train" in done.stdout


def test_train_cfg_job_takes_overrides():
    done = run_cli("train", "method=mapo", "model=sdxl", "trainer.max_steps=7", "--cfg", "job")
    assert done.returncode == 0, done.stderr
    assert "max_steps: 7" in done.stdout
    assert "mapo_loss" in done.stdout
    assert "SDXLAdapter" in done.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_runs_a_function_that_exists(command):
    module_name, function_name = COMMANDS[command].entry.split(":")
    assert callable(getattr(importlib.import_module(module_name), function_name))


def test_console_script_is_the_module_main():
    done = subprocess.run([sys.executable, "-m", "diffusion_align.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "commands:" in done.stdout
