"""Numerical faults in ``diffalign train``: a NaN/inf loss or gradient skips the whole optimizer step (counted, with a
warning) or stops the run with the last good checkpoint intact, as ``trainer.on_nonfinite`` says.

Faults are injected into the real loop by wrapping its ``preference_step``: ``loss`` multiplies the loss by NaN,
``grad`` leaves the loss finite and turns its gradient into NaN (an overflow in backward).
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from diffusion_align.train import loop
from diffusion_align.train.checkpoint import list_checkpoints, validate_checkpoint
from robustness.helpers import copy_run, snapshot, train_logged


def inject_faults(monkeypatch, faults: dict[int, str]) -> None:
    """Make micro-batch ``n`` (1-based, in call order) of the next runs faulty: ``faults[n]`` is loss or grad."""
    original, calls = loop.preference_step, itertools.count(1)

    def faulty(*args, **kwargs):
        out = original(*args, **kwargs)
        kind = faults.get(next(calls))
        if kind == "loss":
            out.loss = out.loss * math.nan
        elif kind == "grad":
            out.loss.register_hook(lambda grad: grad * math.nan)
        return out

    monkeypatch.setattr(loop, "preference_step", faulty)


def trainable(out, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoints" / f"checkpoint-{step}" / "trainable.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0], ids=["clipped", "unclipped"])
def test_nonfinite_gradient_with_finite_loss_skips_the_step(max_grad_norm, monkeypatch, tiny_pairs, tmp_path):
    inject_faults(monkeypatch, {2: "grad"})
    out = tmp_path / "run"
    log = train_logged(out, f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.checkpoint_every=1",
                       "trainer.checkpoints_keep=3", "trainer.optimizer.lr=0.01", f"trainer.max_grad_norm={max_grad_norm}")
    assert "Non-finite steps skipped: 1." in (out / "README.md").read_text()
    assert re.search(r"WARNING\] - non-finite gradient norm nan at step 2: step skipped \(1 so far\)", log), log
    assert_same(trainable(out, 1), trainable(out, 2))  # step 2 changed nothing
    assert any(not torch.equal(trainable(out, 2)[k], trainable(out, 3)[k]) for k in trainable(out, 3))
    assert all(torch.isfinite(v).all() for v in load_file(out / "pytorch_lora_weights.safetensors").values())


def test_a_nonfinite_micro_batch_skips_its_whole_accumulated_step(monkeypatch, run_train, tiny_pairs, tmp_path):
    """Micro-batch 1 of step 1's two is NaN: the finite micro-batch 2 must not update alone (LoRA B stays 0)."""
    inject_faults(monkeypatch, {1: "loss"})
    out = run_train(tmp_path / "run", f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=2",
                    "trainer.gradient_accumulation_steps=2", "trainer.checkpoint_every=1", "trainer.optimizer.lr=0.01")
    step_1, step_2 = trainable(out, 1), trainable(out, 2)
    assert all(v.abs().max() == 0 for k, v in step_1.items() if "lora_B" in k), "a skipped step updated LoRA B"
    assert any(v.abs().max() > 0 for k, v in step_2.items() if "lora_B" in k), "step 2 did not train"
    assert "Non-finite steps skipped: 1." in (out / "README.md").read_text()


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_stop_policy_leaves_earlier_outputs_untouched(kind, monkeypatch, finished_run, run_train, tiny_pairs, tmp_path):
    """A resumed run meets a NaN at step 3 and stops: the checkpoints, LoRA and card of steps 1-2 are unchanged,
    and the run resumes from them once the fault is gone."""
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    inject_faults(monkeypatch, {1: kind})
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.checkpoint_every=1", "trainer.max_steps=4"]
    with pytest.raises(FloatingPointError, match=rf"non-finite {'loss nan' if kind == 'loss' else 'gradient norm nan'} "
                       r"at step 3 \(metrics \{.*\}\); the last checkpoint is intact"):
        run_train(out, *common, "trainer.on_nonfinite=stop")
    assert snapshot(out) == before
    assert validate_checkpoint(list_checkpoints(out / "checkpoints")[-1]).step == 2
    monkeypatch.undo()
    run_train(out, *common)
    assert "4 optimizer steps" in (out / "README.md").read_text()


def test_check_finite_off_lets_nan_through_as_documented(monkeypatch, run_train, tiny_pairs, tmp_path):
    """``trainer.check_finite=false`` removes the per-step host sync, and with it the protection."""
    inject_faults(monkeypatch, {1: "grad"})
    out = run_train(tmp_path / "run", f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=1",
                    "trainer.check_finite=false", "trainer.max_grad_norm=0")
    weights = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(not torch.isfinite(v).all() for v in weights.values())
    assert "Non-finite steps skipped: 0." in (out / "README.md").read_text()
