"""`diffalign train` end to end on the tiny SD1.5 pipeline: outputs, LoRA export, resume, invariants."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from diffusion_align.train.checkpoint import list_checkpoints


def lora_weights(out_dir):
    return load_file(out_dir / "pytorch_lora_weights.safetensors")


def test_dpo_lora_run_writes_diffusers_lora_and_model_card(run_train, tiny_pairs, tmp_path):
    out = run_train(tmp_path / "run", f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3")
    weights = lora_weights(out)
    assert weights and all(k.startswith("unet.") for k in weights)
    assert any(".lora_A." in k for k in weights) and any(".lora_B." in k for k in weights)  # peft key format
    card = (out / "README.md").read_text()
    assert "diffusion_align.losses.diffusion_dpo_loss" in card and "pipe.load_lora_weights" in card
    assert "3 optimizer steps" in card


def test_trained_lora_loads_in_stock_pipeline_and_changes_output(run_train, tiny_pairs, tiny_sd15_path, tmp_path):
    out = run_train(
        tmp_path / "run", f"data.dataset.paths={tiny_pairs}", f"model.adapter.path={tiny_sd15_path}",
        "trainer.max_steps=3", "trainer.optimizer.lr=0.05",
    )
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_path, safety_checker=None, requires_safety_checker=False)
    kwargs = dict(prompt="a red square", num_inference_steps=2, output_type="np", height=32, width=32)
    before = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(out)
    assert pipe.get_list_adapters()["unet"], "load_lora_weights attached no adapter to the UNet"
    after = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert abs(after - before).max() > 1e-4, "the LoRA was silently ignored"
    # the kohya-format copy (for the UI tools) is the same LoRA: diffusers' kohya reader gives the same images
    assert "lora_kohya.safetensors" in (out / "README.md").read_text()
    pipe.unload_lora_weights()
    pipe.load_lora_weights(out, weight_name="lora_kohya.safetensors")
    kohya = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert abs(kohya - after).max() < 1e-5


def test_kohya_copy_is_refused_for_a_transformer_family(run_train, tiny_pairs, tmp_path):
    from diffusion_align.config import ConfigError

    with pytest.raises(ConfigError, match="kohya_copy.*UNets.*not sd3"):
        run_train(tmp_path / "run", "model=tiny_sd3", f"data.dataset.paths={tiny_pairs}",
                  "+model.finetune.kohya_copy=true")


def test_full_finetune_saves_a_loadable_pipeline(run_train, tiny_pairs, tmp_path):
    out = run_train(
        tmp_path / "run", f"data.dataset.paths={tiny_pairs}", "model.finetune.mode=full", "reference=frozen_copy",
        "trainer.optimizer.lr=1e-4",
    )
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None, requires_safety_checker=False)
    assert pipe.unet is not None


def test_lora_disabled_reference_needs_lora(run_train, tiny_pairs, tmp_path):
    from diffusion_align.config import ConfigError

    with pytest.raises(ConfigError, match="reference=lora_disabled needs model.finetune.mode=lora"):
        run_train(tmp_path / "run", f"data.dataset.paths={tiny_pairs}", "model.finetune.mode=full")


def test_kill_and_resume_equals_uninterrupted_run(run_train, tiny_pairs, tmp_path):
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.checkpoint_every=2", "trainer.optimizer.lr=0.01",
              "data.loader.batch_size=4"]
    straight = run_train(tmp_path / "straight", *common, "trainer.max_steps=6")
    # an "interrupted" run: stops after 4 steps (checkpoints at 2 and 4), then a new process resumes to 6;
    # 4 rows x 4 batches = one epoch of 16 rows, so the resume crosses an epoch boundary too.
    interrupted = tmp_path / "interrupted"
    run_train(interrupted, *common, "trainer.max_steps=4")
    assert [p.name for p in list_checkpoints(interrupted / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    (interrupted / "pytorch_lora_weights.safetensors").unlink()
    run_train(interrupted, *common, "trainer.max_steps=6")
    a, b = lora_weights(straight), lora_weights(interrupted)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_mid_epoch_resume_skips_consumed_batches(run_train, tiny_pairs, tmp_path):
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.checkpoint_every=1", "trainer.optimizer.lr=0.01",
              "data.loader.batch_size=2"]
    straight = run_train(tmp_path / "straight", *common, "trainer.max_steps=3")
    interrupted = tmp_path / "interrupted"
    run_train(interrupted, *common, "trainer.max_steps=1")
    run_train(interrupted, *common, "trainer.max_steps=3")
    a, b = lora_weights(straight), lora_weights(interrupted)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_batch_4_equals_batch_1_with_accumulation_4(run_train, tiny_pairs, tmp_path):
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=2", "trainer.optimizer.lr=0.01",
              "trainer.max_grad_norm=0"]
    big = run_train(tmp_path / "big", *common, "data.loader.batch_size=4")
    small = run_train(tmp_path / "small", *common, "data.loader.batch_size=1", "trainer.gradient_accumulation_steps=4")
    a, b = lora_weights(big), lora_weights(small)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
