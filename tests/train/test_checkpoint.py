"""Atomic checkpoints: round trip, validation on load, pruning, and no half-written checkpoint under a real name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusion_align.train.checkpoint import (
    LoopState,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)  # a frozen weight is not part of the trainable state
    return model


def make_training(model: nn.Module):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return optimizer, scheduler


def test_round_trip_restores_parameters_optimizer_scheduler_and_state(tmp_path):
    model = make_model(0)
    optimizer, scheduler = make_training(model)
    state = LoopState(step=7, epoch=1, batch_in_epoch=3, skipped_nonfinite=1)
    path = save_checkpoint(tmp_path, state, model, optimizer, scheduler, extra={"ema.x": torch.arange(3.0)})
    assert path.name == "checkpoint-7"

    fresh = make_model(1)
    fresh_opt, fresh_sched = make_training(fresh)
    loaded_state, extra = load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert loaded_state == state
    assert torch.equal(extra["ema.x"], torch.arange(3.0))
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        if p.requires_grad:
            assert torch.equal(p, q), name
    assert fresh_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    saved_exp_avg = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], saved_exp_avg)


def test_frozen_weights_are_not_saved(tmp_path):
    from safetensors.torch import load_file

    model = make_model()
    optimizer, scheduler = make_training(model)
    path = save_checkpoint(tmp_path, LoopState(step=1), model, optimizer, scheduler)
    assert set(load_file(path / "trainable.safetensors")) == {"0.bias", "1.weight", "1.bias"}


def test_pruning_keeps_the_newest(tmp_path):
    model = make_model()
    optimizer, scheduler = make_training(model)
    for step in (1, 2, 3, 10):
        save_checkpoint(tmp_path, LoopState(step=step), model, optimizer, scheduler, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-10"]
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    assert resolve_checkpoint(tmp_path / "nothing-here", "latest") is None
    assert resolve_checkpoint(tmp_path, None) is None


def test_interrupted_save_leaves_previous_checkpoint_and_no_partial_one(tmp_path, monkeypatch):
    model = make_model()
    optimizer, scheduler = make_training(model)
    save_checkpoint(tmp_path, LoopState(step=1), model, optimizer, scheduler)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, LoopState(step=2), model, optimizer, scheduler)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-1"


def test_load_refuses_a_checkpoint_of_another_model(tmp_path):
    model = make_model()
    optimizer, scheduler = make_training(model)
    path = save_checkpoint(tmp_path, LoopState(step=1), model, optimizer, scheduler)
    other = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    other_opt, other_sched = make_training(other)
    with pytest.raises(ValueError, match="does not match the model's trainable parameters"):
        load_checkpoint(path, other, other_opt, other_sched)


def test_load_names_missing_files(tmp_path):
    model = make_model()
    optimizer, scheduler = make_training(model)
    path = save_checkpoint(tmp_path, LoopState(step=1), model, optimizer, scheduler)
    (path / "optimizer.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing optimizer.pt"):
        load_checkpoint(path, model, optimizer, scheduler)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-99"))
