"""SIGTERM / SIGINT during training: a checkpoint at the next optimizer-step boundary, then a clean exit with status
128 + signal (no traceback), and the same command resumes from that checkpoint to the uninterrupted result."""

from __future__ import annotations

import itertools
import os
import re
import signal

import pytest
import torch
from safetensors.torch import load_file

from diffusion_align.train import loop
from diffusion_align.train.checkpoint import list_checkpoints, validate_checkpoint
from diffusion_align.train.signals import StopSignals, TrainingInterrupted
from robustness.killing import ConsoleLauncher, wait_for_output


def test_first_signal_is_recorded_and_the_previous_handlers_come_back():
    def previous(signum, frame):
        raise AssertionError("the previous handler ran while StopSignals was active")

    original, term_before = signal.signal(signal.SIGINT, previous), signal.getsignal(signal.SIGTERM)
    try:
        with StopSignals() as stop:
            assert stop.received is None
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received == signal.SIGINT
            assert signal.getsignal(signal.SIGINT) is previous  # a second Ctrl-C acts at once
        assert signal.getsignal(signal.SIGINT) is previous
        with StopSignals():
            assert signal.getsignal(signal.SIGTERM) != term_before
        assert signal.getsignal(signal.SIGTERM) == term_before
    finally:
        signal.signal(signal.SIGINT, original)


def test_interrupted_error_exits_with_128_plus_signal():
    stopped = TrainingInterrupted(signal.SIGTERM, 7, "out/checkpoints/checkpoint-7")
    assert isinstance(stopped, SystemExit) and stopped.code == 143
    assert str(stopped) == "stopped by SIGTERM after step 7; checkpoint out/checkpoints/checkpoint-7 " \
                           "(run the same command to resume)"
    assert TrainingInterrupted(signal.SIGINT, 1, "c").code == 130


def test_sigint_mid_step_checkpoints_that_step_and_resume_equals_an_uninterrupted_run(
    monkeypatch, run_train, tiny_pairs, tmp_path
):
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.checkpoint_every=0", "trainer.optimizer.lr=0.01"]
    straight = run_train(tmp_path / "straight", *common, "trainer.max_steps=4")
    original, calls = loop.preference_step, itertools.count(1)

    def interrupted_in_step_2(*args, **kwargs):
        if next(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 2 computes
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "preference_step", interrupted_in_step_2)
    out = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted) as stopped:
        run_train(out, *common, "trainer.max_steps=4")
    assert stopped.value.code == 130 and stopped.value.step == 2
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-2"]
    assert not (out / "pytorch_lora_weights.safetensors").exists(), "an unfinished run wrote final weights"
    monkeypatch.undo()
    run_train(out, *common, "trainer.max_steps=4")
    a, b = load_file(straight / "pytorch_lora_weights.safetensors"), load_file(out / "pytorch_lora_weights.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_sigterm_to_a_real_diffalign_train_process(run_train, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    args = ["train", "debug=tiny", f"hydra.run.dir={out}", f"data.dataset.paths={tiny_pairs}",
            "trainer.max_steps=100000", "trainer.checkpoint_every=0"]
    run = ConsoleLauncher().start(args, tmp_path / "train.out")
    wait_for_output(run, r"\| [1-9]\d*/100000 ", timeout=240)  # a step is done: training is under way
    run.send(signal.SIGTERM)
    status = run.wait(timeout=120)
    output = run.output()
    assert status == 143, output[-3000:]
    assert "received SIGTERM: the run stops after this optimizer step, with a checkpoint" in output
    step = int(re.search(r"stopped by SIGTERM after step (\d+); checkpoint (\S+)/checkpoint-\1 ", output).group(1))
    assert "Traceback" not in output
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"checkpoint-{step}"]
    assert validate_checkpoint(out / "checkpoints" / f"checkpoint-{step}").step == step
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    run_train(out, f"data.dataset.paths={tiny_pairs}", f"trainer.max_steps={step + 1}")
    assert f"{step + 1} optimizer steps" in (out / "README.md").read_text()
