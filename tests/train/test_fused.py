"""``trainer.fused_backward``: updates inside backward give the unfused run's weights, never hold the whole gradient,
resume either way, and refuse what backward cannot give them (accumulation, a global clip, fp16, several processes)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file
from torch import nn
from transformers.optimization import Adafactor

from diffusion_align.config import ConfigError
from diffusion_align.train.fused import BackwardSteps

OPTIMIZERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2),
    "adafactor": lambda params: Adafactor(params, lr=1e-2, scale_parameter=False, relative_step=False,
                                          clip_threshold=1.0, weight_decay=1e-2),
}


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))


def train(model: nn.Module, make_optimizer, fused: bool, steps: int = 4) -> nn.Module:
    """``steps`` updates on fixed batches, with a warm-up schedule (the lr changes every step)."""
    params = list(model.parameters())
    optimizer = make_optimizer(params)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=steps)
    hooks = BackwardSteps(optimizer, params) if fused else None
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)
        loss = (model(x) - y).square().mean()
        loss.backward()
        if hooks is None:
            optimizer.step()
        else:
            assert hooks.fault() is None
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_updates_inside_backward_equal_the_optimizer_step(name):
    unfused = train(mlp(), OPTIMIZERS[name], fused=False)
    fused = train(mlp(), OPTIMIZERS[name], fused=True)
    moved = False
    for (key, a), b in zip(unfused.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
        moved = moved or not torch.equal(a, mlp().state_dict()[key])
    assert moved, "neither run trained"


def test_at_most_one_gradient_is_held_during_backward():
    model = mlp()
    params = list(model.parameters())
    held = []
    for p in params:  # registered first, so it runs before the update: the gradient just made is the only one alive
        p.register_post_accumulate_grad_hook(lambda _: held.append(sum(q.grad is not None for q in params)))
    BackwardSteps(torch.optim.AdamW(params), params)
    model(torch.randn(4, 6)).sum().backward()
    assert held == [1] * len(params)
    assert all(p.grad is None for p in params)


def test_a_nonfinite_gradient_is_reported_after_backward():
    model = mlp()
    params = list(model.parameters())
    hooks = BackwardSteps(torch.optim.AdamW(params), params)
    model(torch.randn(4, 6)).sum().backward()
    assert hooks.fault() is None
    out = model(torch.randn(4, 6)).sum()
    out.register_hook(lambda grad: grad * math.nan)
    out.backward()
    assert hooks.fault() == "gradient norm nan"
    assert hooks.fault() is None  # reset for the next step
    unchecked = BackwardSteps(torch.optim.AdamW(params), params, check_finite=False)
    assert unchecked.fault() is None


def test_parameters_outside_the_optimizer_are_refused():
    model = mlp()
    params = list(model.parameters())
    with pytest.raises(ValueError, match=r"trainable parameters \[0\] are in none of the optimizer's"):
        BackwardSteps(torch.optim.AdamW(params[1:]), params)


def test_removed_hooks_leave_gradients_to_the_optimizer():
    model = mlp()
    params = list(model.parameters())
    BackwardSteps(torch.optim.AdamW(params), params).remove()
    model(torch.randn(4, 6)).sum().backward()
    assert all(p.grad is not None for p in params)


FULL = ["model.finetune.mode=full", "reference=frozen_copy", "data.loader.batch_size=4", "trainer.optimizer.lr=1e-4",
        "trainer.max_grad_norm=0"]


def unet(out) -> dict[str, torch.Tensor]:
    return load_file(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


def test_fused_full_finetune_equals_the_unfused_run_and_resumes_across(run_train, tiny_pairs, tmp_path):
    """3 steps fused == 3 steps unfused; an unfused checkpoint of step 2 resumes fused to the same step 3 (the
    optimizer state is one format)."""
    common = [f"data.dataset.paths={tiny_pairs}", *FULL, "trainer.max_steps=3", "trainer.checkpoint_every=2"]
    unfused = run_train(tmp_path / "unfused", *common)
    fused = run_train(tmp_path / "fused", *common, "trainer.fused_backward=true", "reference.precompute=true")
    crossed = tmp_path / "crossed"
    run_train(crossed, *[o for o in common if o != "trainer.max_steps=3"], "trainer.max_steps=2")
    run_train(crossed, *common, "trainer.fused_backward=true")
    a, b, c = unet(unfused), unet(fused), unet(crossed)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-7, msg=key)
        torch.testing.assert_close(c[key], a[key], rtol=0, atol=1e-7, msg=key)
    assert "3 optimizer steps" in (crossed / "README.md").read_text()


def test_fused_lora_with_checkpointing_and_ema_equals_the_unfused_run(run_train, tiny_pairs, tmp_path):
    """Recomputed activations (gradient checkpointing) and the EMA of the weights (what is saved) see the same
    updates whether they are taken in backward or after it."""
    common = [f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=3", "trainer.max_grad_norm=0",
              "trainer.optimizer.lr=0.01", "trainer.gradient_checkpointing=true", "trainer.ema.enabled=true",
              "trainer.ema.decay=0.5"]
    a = load_file(run_train(tmp_path / "unfused", *common) / "pytorch_lora_weights.safetensors")
    b = load_file(run_train(tmp_path / "fused", *common, "trainer.fused_backward=true")
                  / "pytorch_lora_weights.safetensors")
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k), "the LoRA did not train"
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-7, msg=key)


@pytest.mark.parametrize(("overrides", "why"), [
    (["trainer.gradient_accumulation_steps=2", "trainer.max_grad_norm=0"], "cannot accumulate 2 micro-batches"),
    ([], r"cannot clip it to trainer.max_grad_norm=1.0: set trainer.max_grad_norm=0"),
    (["trainer.max_grad_norm=0", "trainer.mixed_precision=fp16"], "cannot run fp16's gradient scaler"),
], ids=["accumulation", "clipping", "fp16"])
def test_what_backward_cannot_give_is_refused_before_loading(overrides, why, run_train, tmp_path):
    with pytest.raises(ConfigError, match=why):
        run_train(tmp_path / "run", "data.dataset.paths=/nonexistent", "model.adapter.path=/nonexistent",
                  "trainer.fused_backward=true", *overrides)


def test_several_processes_and_engines_that_step_themselves_are_refused():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from omegaconf import OmegaConf

    from diffusion_align.train.fused import check_fused_processes

    fused, unfused = OmegaConf.create({"fused_backward": True}), OmegaConf.create({"fused_backward": False})
    accelerator = SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_GPU)
    with pytest.raises(ConfigError, match="before MULTI_GPU reduces it across the 2 processes"):
        check_fused_processes(fused, accelerator)
    check_fused_processes(unfused, accelerator)
    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(ConfigError, match="takes the optimizer step itself, which DEEPSPEED owns"):
        check_fused_processes(fused, alone)
    check_fused_processes(fused, SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO))


def test_a_nonfinite_gradient_stops_the_fused_run(run_train, tiny_pairs, tmp_path, monkeypatch):
    from diffusion_align.train import loop

    original = loop.preference_step

    def faulty(*args, **kwargs):
        out = original(*args, **kwargs)
        out.loss.register_hook(lambda grad: grad * math.nan)
        return out

    monkeypatch.setattr(loop, "preference_step", faulty)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm nan at step 1: with "
                                                 r"trainer.fused_backward=true .* the last checkpoint is intact"):
        run_train(tmp_path / "run", f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=2",
                  "trainer.max_grad_norm=0", "trainer.fused_backward=true")
