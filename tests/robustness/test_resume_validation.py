"""Resume validates what it loads. ``resume_from_checkpoint=latest`` skips a newer checkpoint that is incomplete or
damaged (with a warning naming it) for the previous good one, and refuses to start over when none is good; an
explicitly named checkpoint that is bad, or of another model or optimizer, is refused naming the file. A refused
resume changes nothing on disk."""

from __future__ import annotations

import re

import pytest

from diffusion_align.train.checkpoint import CheckpointError, list_checkpoints, validate_checkpoint
from robustness.helpers import copy_run, snapshot, train_logged


def truncate(path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A finished 2-step run with checkpoint-1 and checkpoint-2, to damage."""
    return copy_run(finished_run, tmp_path / "run")


DAMAGE = {
    "truncated_weights": (lambda c: truncate(c / "trainable.safetensors"),
                          r"trainable.safetensors: not a readable safetensors file"),
    "truncated_optimizer": (lambda c: truncate(c / "optimizer.pt", 500),
                            r"optimizer.pt: not a complete torch.save archive \(truncated or corrupt\)"),
    "missing_scheduler": (lambda c: (c / "scheduler.pt").unlink(), r"is incomplete: missing scheduler.pt"),
    "garbage_state": (lambda c: (c / "state.json").write_text("{\"step\": 2, \"epo"), r"state.json: not valid JSON"),
    "state_of_another_step": (lambda c: (c / "state.json").write_text(
        '{"step": 7, "epoch": 0, "batch_in_epoch": 14, "skipped_nonfinite": 0}'),
        r"state.json: step 7, but the directory is step 2"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_latest_skips_a_damaged_newest_checkpoint_for_the_previous_one(damage, run_copy, tiny_pairs):
    damage_fn, reason = DAMAGE[damage]
    newest = run_copy / "checkpoints" / "checkpoint-2"
    damage_fn(newest)
    log = train_logged(run_copy, f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3",
                       "trainer.checkpoint_every=1")
    assert re.search(rf"WARNING\] - not resuming from {re.escape(str(newest))}: .*{reason}", log), log
    assert "resumed from" in log and f"{run_copy}/checkpoints/checkpoint-1 at step 1" in log
    assert "3 optimizer steps" in (run_copy / "README.md").read_text()
    for path in list_checkpoints(run_copy / "checkpoints"):  # checkpoint-2 was written anew, whole
        validate_checkpoint(path)


def test_latest_refuses_to_start_over_when_every_checkpoint_is_damaged(run_copy, run_train, tiny_pairs):
    for checkpoint in list_checkpoints(run_copy / "checkpoints"):
        truncate(checkpoint / "trainable.safetensors")
    before = snapshot(run_copy)
    with pytest.raises(CheckpointError, match=r"no checkpoint in \S+ can be resumed from; remove them to start "
                                              r"over:\n  .*checkpoint-2/trainable.safetensors(.|\n)*checkpoint-1/"):
        run_train(run_copy, f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=4")
    assert snapshot(run_copy) == before


REFUSED = {
    "damaged_explicit_path": ([], lambda c: (c / "state.json").write_text("[1, 2]"),
                              r"state.json: expected integer fields \['batch_in_epoch', 'epoch', 'skipped_nonfinite', "
                              r"'step'\], got \[1, 2\]"),
    "another_lora_rank": (["model.finetune.rank=8", "model.finetune.alpha=8"], None,
                          r"checkpoint-2 does not match the model's trainable parameters: \[.*lora"),
    "another_optimizer": (["trainer/optimizer=adafactor"], None,
                          r"checkpoint-2 was written with optimizer AdamW; this run's trainer.optimizer is Adafactor"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_checkpoint_that_does_not_fit_is_refused_naming_it(case, run_copy, run_train, tiny_pairs):
    overrides, damage, pattern = REFUSED[case]
    checkpoint = run_copy / "checkpoints" / "checkpoint-2"
    if damage is not None:
        damage(checkpoint)
    before = snapshot(run_copy)
    with pytest.raises(CheckpointError, match=pattern):
        run_train(run_copy, f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=4",
                  f"trainer.resume_from_checkpoint={checkpoint}", *overrides)
    assert snapshot(run_copy) == before


def test_a_save_cut_short_is_invisible_and_cleaned_by_the_next_save(run_copy, run_train, tiny_pairs):
    """What a kill during a save leaves: a hidden, partial ``.checkpoint-3.*`` directory; a replacement or prune cut
    short leaves a hidden ``*.removing-*`` one."""
    partial = run_copy / "checkpoints" / ".checkpoint-3.k1ll3d"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"\x00" * 10)
    aside = run_copy / "checkpoints" / ".checkpoint-1.removing-999"
    aside.mkdir()
    assert [p.name for p in list_checkpoints(run_copy / "checkpoints")] == ["checkpoint-1", "checkpoint-2"]
    run_train(run_copy, f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.checkpoint_every=1")
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
