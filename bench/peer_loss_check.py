"""Identical first batches: the script's first optimizer steps, recomputed with our code.

``step_probe.py --capture`` saved, for each of the script's first steps: the clean latents (winners then losers,
``[2B, 4, h, w]``), the noise, the timesteps, the inputs and output of its two UNet calls (policy, then the
LoRA-disabled reference) and the LoRA weights the policy had. Two numbers come back per step:

- ``ours_on_script_predictions``: our per-sample error and our loss function (built from our config exactly as the
  trainer builds it, β in our −0.5·β convention) on the script's own predictions. Checks the loss math and the
  β mapping; exact up to float32 rounding whatever the precision.
- ``ours_forward``: our adapter adds the noise and predicts with the script's LoRA weights loaded into our
  LoRA-injected denoiser, our :class:`~diffusion_align.reference.LoraDisabledReference` predicts the reference, then
  the same error and loss. Checks the whole step on the same inputs; on a CPU in float32 with the runs' thread count
  it reproduces the script's predictions bit for bit, under bf16 to bf16 precision.

Step 1 starts from LoRA weights with ``lora_B = 0`` (policy == reference, loss ``log 2`` on both sides whatever β
is): step 2, after one update, is the informative one.
"""

from __future__ import annotations

from pathlib import Path


def compose_train_config(overrides: list[str], out_dir: Path):
    """The ``diffalign train`` config for ``overrides`` (as the CLI composes it), writing into ``out_dir``."""
    from hydra import compose, initialize_config_module

    from diffusion_align.config import register_resolvers

    register_resolvers()
    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        return compose("train", overrides=[*overrides, f"output_dir={out_dir}"])


def load_trainable(denoiser, tensors: dict) -> None:
    """Copy the script's LoRA weights (named as ``named_parameters`` names them) into our denoiser's LoRA layers."""
    import torch

    params = {name: p for name, p in denoiser.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        only_script, only_ours = sorted(set(tensors) - set(params)), sorted(set(params) - set(tensors))
        raise ValueError(f"LoRA parameters differ: only in the script {only_script[:4]}, only ours {only_ours[:4]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])


def our_loss(loss_fn, err, ref_err) -> float:
    """Our loss on ``[2B]`` errors laid out as the script lays out its batch: winners, then losers."""
    import torch

    b = err.shape[0] // 2
    label = torch.ones(b, device=err.device)
    return float(loss_fn(err[:b], err[b:], ref_err[:b], ref_err[b:], label=label).loss)


def check_step(number: int, step: dict, adapter, reference, loss_fn, accelerator) -> dict:
    """Recompute one captured step; see the module docstring for the two numbers."""
    import torch

    from diffusion_align.losses import per_sample_error

    calls = step["unet"]
    if len(calls) != 2 or not calls[0]["grad_enabled"] or calls[1]["grad_enabled"]:
        raise ValueError(f"captured step {number}: expected a policy call with gradients, then a reference call "
                         f"without, got {[c['grad_enabled'] for c in calls]}")
    policy_call, reference_call = calls
    load_trainable(adapter.denoiser, policy_call["trainable"])
    device = accelerator.device
    latents, noise, timesteps = (step[k].to(device) for k in ("latents", "noise", "timesteps"))
    target = adapter.target(latents, noise, timesteps)
    on_predictions = our_loss(loss_fn, per_sample_error(policy_call["output"].to(device), target),
                              per_sample_error(reference_call["output"].to(device), target))
    cond = {"prompt_embeds": policy_call["encoder_hidden_states"].to(device)}
    with torch.no_grad(), accelerator.autocast():
        noisy = adapter.add_noise(latents, noise, timesteps)
        prediction = adapter.predict(noisy, timesteps, cond)
        reference_prediction = reference.predict(noisy, timesteps, cond)
    forward = our_loss(loss_fn, per_sample_error(prediction, target), per_sample_error(reference_prediction, target))
    return {
        "step": number,
        "script": step["loss"],
        "ours_on_script_predictions": on_predictions,
        "ours_forward": forward,
        "noisy_input_max_abs_diff": float((noisy.float() - policy_call["sample"].to(device).float()).abs().max()),
    }


def check_first_batches(
    capture: Path, overrides: list[str], device: str, precision: str, threads: int | None, out_dir: Path
) -> list[dict]:
    """Every captured step of the script recomputed by our trainer's own pieces (see the module docstring).

    Args:
        capture: the ``torch.save`` file of ``step_probe.py --capture``.
        overrides: our side's hydra overrides (the same model, sizes, LoRA and loss as our timed run).
        device: ``cpu`` or ``cuda``.
        precision: ``no`` | ``fp16`` | ``bf16``: weights cast and autocast as our loop does.
        threads: intra-op threads, as in the timed runs (``None``: leave them): on a CPU another count splits the
            reductions differently, and β (thousands) turns those last-bit differences into ~1e-4 in the loss.
        out_dir: where the composed config says the run writes (nothing is written).
    """
    import torch
    from accelerate import Accelerator

    from diffusion_align.config import build
    from diffusion_align.train.loop import (
        WEIGHT_DTYPES,
        make_method,
        make_reference,
        make_trainable,
        place_modules,
    )

    if threads is not None:
        torch.set_num_threads(threads)
    steps = torch.load(capture, weights_only=True)
    cfg = compose_train_config(overrides, out_dir)
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    adapter = build(cfg.model.adapter)
    reference = make_reference(cfg, adapter)
    make_trainable(cfg, adapter)
    place_modules(adapter, reference, accelerator, WEIGHT_DTYPES[precision])
    loss_fn = make_method(cfg, adapter).loss_fn
    return [check_step(i, step, adapter, reference, loss_fn, accelerator) for i, step in enumerate(steps, 1)]
