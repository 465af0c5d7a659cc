"""reference.precompute=true: the reference's errors computed in one pass before training give the run an inline
reference gives (same noise, timesteps and reference forwards, looked up by row and epoch), across epochs, gradient
accumulation, resume and methods; fixed references only, refused otherwise before any model loads."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from engine_runs import assert_lora_equals_one_process, launch, unet_weights
from safetensors.torch import load_file
from same_weights import assert_same_weights

from diffusion_align.config import ConfigError
from diffusion_align.reference import EpochErrors, PrecomputedReference
from diffusion_align.train.checkpoint import list_checkpoints
from diffusion_align.train.precompute import micro_batches_per_epoch, precompute_reference

# 16 rows in batches of 3 (5 per epoch, the last row dropped) and 2 micro-batches per step: 3 steps an epoch, the
# last of 1 micro-batch; 5 steps cross into a second epoch and stop inside it
CROSSING = ["data.loader.batch_size=3", "trainer.gradient_accumulation_steps=2", "trainer.max_steps=5",
            "trainer.optimizer.lr=1e-3"]


def pass_summary(run_dir) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k.removeprefix("reference/"): v for k, v in metrics.items() if k.startswith("reference/")}


def assert_identical(a_dir, b_dir, name="pytorch_lora_weights.safetensors"):
    a, b = load_file(a_dir / name), load_file(b_dir / name)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7, msg=key)


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_precomputed_lora_disabled_reference_trains_as_inline(method, run_train, tiny_pairs, tmp_path):
    data = ([f"data.dataset.paths={tiny_pairs}"] if method == "dpo" else
            ["data=unpaired", f"data.dataset.source.paths={tiny_pairs}"])  # KTO: each image alone, 32 rows
    common = [*data, f"method={method}", *CROSSING]
    inline = run_train(tmp_path / "inline", *common)
    precomputed = run_train(tmp_path / "precomputed", *common, "reference.precompute=true")
    assert_identical(inline, precomputed)
    summary = pass_summary(precomputed)
    rows, batches = (27, 9) if method == "dpo" else (30, 10)  # DPO: 5 + 4 batches of 3 (what trains); KTO: 10 of 10
    assert (summary["precomputed_rows"], summary["precomputed_batches"]) == (rows, batches)
    assert summary["copy_released"] is False and pass_summary(inline) == {}


def test_precomputed_frozen_copy_is_released_and_trains_as_inline(run_train, tiny_pairs, tmp_path, monkeypatch):
    import diffusion_align.train.loop as loop

    copies = {}

    def watched(reference, *args, **kwargs):  # the real pass, then: is the frozen copy gone from memory?
        copies["before"] = weakref.ref(reference.model)
        done = precompute_reference(reference, *args, **kwargs)
        gc.collect()
        copies["after"] = copies["before"]()
        return done

    common = [f"data.dataset.paths={tiny_pairs}", "model.finetune.mode=full", "reference=frozen_copy",
              "data.loader.batch_size=4", "trainer.max_steps=2", "trainer.optimizer.lr=1e-4"]
    inline = run_train(tmp_path / "inline", *common)
    monkeypatch.setattr(loop, "precompute_reference", watched)
    precomputed = run_train(tmp_path / "precomputed", *common, "reference.precompute=true")
    assert copies["before"] is not None and copies["after"] is None  # nothing else held the copy
    a = load_file(inline / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(precomputed / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7, msg=key)
    assert pass_summary(precomputed)["copy_released"] is True


@pytest.mark.parametrize(("at", "rows", "batches"), [(2, 15, 5), (3, 12, 4)], ids=["mid-epoch", "epoch-end"])
def test_resumed_precomputed_run_equals_uninterrupted(at, rows, batches, run_train, tiny_pairs, tmp_path):
    """The pass after a resume starts at the checkpoint's place: mid-epoch (step 2 is 4 of the epoch's 5 batches:
    its last batch, then 4 of the next) or at the end of the epoch (step 3: 4 batches of the next)."""
    common = [f"data.dataset.paths={tiny_pairs}", "reference.precompute=true", f"trainer.checkpoint_every={at}",
              *CROSSING]
    straight = run_train(tmp_path / "straight", *common)
    interrupted = tmp_path / "interrupted"
    run_train(interrupted, *common, f"trainer.max_steps={at}")  # the later override wins
    assert [p.name for p in list_checkpoints(interrupted / "checkpoints")] == [f"checkpoint-{at}"]
    run_train(interrupted, *common)
    summary = pass_summary(interrupted)
    assert (summary["precomputed_rows"], summary["precomputed_batches"]) == (rows, batches)
    assert_identical(straight, interrupted)


def test_each_fsdp_process_precomputes_its_own_batches(run_train, tiny_pairs, tmp_path):
    """2 FSDP processes x 2 pairs, each walking its shard of the loader in the pass (the LoRA-disabled reference's
    forwards all-gather the sharded weights, so both run the same number), against 1 process x 4 pairs inline."""
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.optimizer.lr=1e-4",
              "trainer.max_grad_norm=0"]
    assert_lora_equals_one_process(run_train, tmp_path, "fsdp", common, ["data.loader.batch_size=4"],
                                   ["data.loader.batch_size=2", "reference.precompute=true"])
    assert pass_summary(tmp_path / "fsdp")["precomputed_rows"] == 6  # the main process's 3 batches of 2


def test_deepspeed_full_finetune_with_a_precomputed_frozen_copy_equals_one_process(run_train, tiny_pairs, tmp_path):
    """DeepSpeed ZeRO-2, 2 processes x 2 pairs, each precomputing its batches' errors and releasing its copy, against
    1 process x 4 pairs with the frozen copy run inline."""
    pytest.importorskip("deepspeed")
    common = [f"data.dataset.paths={tiny_pairs}", "model.finetune.mode=full", "reference=frozen_copy",
              "trainer.max_steps=2", "trainer.optimizer.lr=1e-4", "trainer.max_grad_norm=0"]
    single = run_train(tmp_path / "single", *common, "data.loader.batch_size=4")
    launch("deepspeed_zero2", tmp_path / "ds", *common, "data.loader.batch_size=2", "reference.precompute=true")
    assert_same_weights(unet_weights(single), unet_weights(tmp_path / "ds"))
    assert pass_summary(tmp_path / "ds")["copy_released"] is True


@pytest.mark.parametrize(("overrides", "why"), [
    (["method=mapo"], "method mapo is reference-free"),
    (["reference=none", "+reference.precompute=true"], "reference=none has no reference to precompute"),
    (["method=smpo"], "method.noising=renoise_inversion inverts each sample with the policy"),
    (["method=spo"], "method spo samples its pairs online"),
    (["model.finetune.mode=full", "reference=ema", "+reference.precompute=true"],
     "the reference diffusion_align.reference.EmaReference changes during training"),
])
def test_precompute_is_refused_where_the_reference_errors_are_not_fixed(overrides, why, run_train, tiny_pairs,
                                                                         tmp_path):
    flag = [] if any("precompute" in o for o in overrides) else ["reference.precompute=true"]
    with pytest.raises(ConfigError, match=f"reference.precompute=true: {why}.*reference.precompute=false"):
        run_train(tmp_path / "run", f"data.dataset.paths={tiny_pairs}", *overrides, *flag)


def test_micro_batches_follow_accelerates_accumulation():
    assert micro_batches_per_epoch(5, 2, steps_left=10) == (5, 3)  # the loader's end closes a 1-batch step
    assert micro_batches_per_epoch(5, 2, steps_left=2) == (4, 2)
    assert micro_batches_per_epoch(6, 1, steps_left=4) == (4, 4)
    assert micro_batches_per_epoch(1, 4, steps_left=1) == (1, 1)


def test_precomputed_reference_looks_up_rows_and_refuses_the_rest():
    tables = {0: EpochErrors.build(torch.tensor([3, 5]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 8),
              1: EpochErrors.build(torch.tensor([3]), torch.tensor([[5.0, 6.0]]), 8)}
    reference = PrecomputedReference(tables, "FrozenReference")
    got = reference.lookup(torch.tensor([5, 3]), 0, torch.device("cpu"))
    assert got.tolist() == [[3.0, 4.0], [1.0, 2.0]]
    assert reference.lookup(torch.tensor([3]), 1, torch.device("cpu")).tolist() == [[5.0, 6.0]]
    with pytest.raises(KeyError, match=r"epoch 1, dataset rows \[5\]"):
        reference.lookup(torch.tensor([3, 5]), 1, torch.device("cpu"))
    with pytest.raises(KeyError, match=r"epoch 2, dataset rows \[3\]"):
        reference.lookup(torch.tensor([3]), 2, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="FrozenReference was replaced by its precomputed errors"):
        reference.predict(torch.zeros(1), torch.zeros(1), {})
