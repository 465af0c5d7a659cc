"""Training throughput and peak memory of DPO-LoRA, DPO-full and MaPO, with and without the latent cache.

Each configuration runs in its own process (so peak memory is its own) through the training loop's own building
blocks (``diffusion_align.train.loop``): model, reference, trainable parameters, speed options (gradient
checkpointing, ``torch.compile``), method, loader, optimizer. Timing is the median of synchronized steady-state steps
(forward, reference, backward, optimizer step), after warm-up (compilation happens in the warm-up steps). Memory:
the whole process's peak (CPU: peak RSS; GPU: allocated) and while the steps ran, warm-up included ("step peak"; GPU:
the allocator's peak over them; CPU: the peak resident size over them, Linux's VmHWM restarted before the first
step, elsewhere the largest resident size after one). With ``--override reference.precompute=true`` the reference
errors are computed first by the loop's pass ("pass s"), a frozen copy is released, and the steps run no reference
forward (reference-free modes ignore it). With ``--override trainer.fused_backward=true`` each parameter is updated
inside backward and its gradient freed (the loop's ``BackwardSteps``; needs ``trainer.max_grad_norm=0``).

    python bench/bench_train.py                       # tiny SD1.5 and SDXL on this machine's device
    python bench/bench_train.py --models tiny_sd15 --batch-size 4 --steps 20
    python bench/bench_train.py --models sd15 --override model.adapter.path=/models/sd15-size --resolution 512 \
        --batch-size 8 --precision bf16 --cache on                    # a full-size model from a local directory
    python bench/bench_train.py --models tiny_sd15 --modes dpo_lora --override trainer.compile=regional
    python bench/bench_train.py --models tiny_sd15 --modes dpo_full --override trainer.gradient_checkpointing=true
    python bench/bench_train.py --models tiny_sd15 --modes dpo_lora dpo_full --override reference.precompute=true
    python bench/bench_train.py --models sd15 --modes dpo_full --override model.adapter.path=/models/sd15-size \
        --override reference.precompute=true --override trainer.fused_backward=true --override trainer.max_grad_norm=0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

MODES = {  # name -> hydra overrides
    "dpo_lora": ["method=dpo", "reference=lora_disabled", "model.finetune.mode=lora"],
    "dpo_full": ["method=dpo", "reference=frozen_copy", "model.finetune.mode=full", "trainer.optimizer.lr=1e-5"],
    "mapo_lora": ["method=mapo", "model.finetune.mode=lora"],
}


def compose(model: str, mode: str, cache: bool, batch_size: int, data_dir: str, out_dir: str, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from diffusion_align.config import register_resolvers

    register_resolvers()
    overrides = [
        f"model={model}", *MODES[mode], f"data.dataset.paths={data_dir}", f"data.loader.batch_size={batch_size}",
        f"data.cache.enabled={cache}", f"output_dir={out_dir}", "trainer.report_to=[]", *extra,
    ]
    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def measure(args) -> dict:
    """One configuration in this process: returns ms/step samples and peak memory."""
    import torch
    from accelerate import Accelerator

    from diffusion_align.config import build
    from diffusion_align.testing.data import write_tiny_pairwise_parquet
    from diffusion_align.train.data import epoch_batches, make_loader
    from diffusion_align.train.fused import BackwardSteps
    from diffusion_align.train.loop import (
        WEIGHT_DTYPES,
        apply_speed_options,
        make_method,
        make_reference,
        make_trainable,
        place_modules,
    )
    from diffusion_align.train.options import check_trainer_config
    from diffusion_align.train.precompute import check_precompute, precompute_reference
    from diffusion_align.train.step import preference_step

    tmp = tempfile.mkdtemp()
    write_tiny_pairwise_parquet(tmp + "/data", n_rows=max(64, args.batch_size * 4), resolution=args.resolution, ties=0)
    cfg = compose(args.models[0], args.modes[0], args.cache == "on", args.batch_size, tmp + "/data", tmp + "/out",
                  [f"model.resolution={args.resolution}", f"trainer.mixed_precision={args.precision}",
                   *args.override])
    check_trainer_config(cfg.trainer)  # the loop's checks of the trainer keys (fused updates among them)
    accelerator = Accelerator(mixed_precision=cfg.trainer.mixed_precision)
    adapter = build(cfg.model.adapter)
    reference = make_reference(cfg, adapter)
    params = make_trainable(cfg, adapter)
    place_modules(adapter, reference, accelerator, WEIGHT_DTYPES[cfg.trainer.mixed_precision])
    apply_speed_options(cfg.trainer, adapter, reference)  # trainer.gradient_checkpointing / trainer.compile via --override
    method = make_method(cfg, adapter)
    loader = make_loader(cfg, adapter)
    optimizer = build(cfg.trainer.optimizer)(params)
    policy, optimizer, loader = accelerator.prepare(adapter.denoiser, optimizer, loader)
    fused = BackwardSteps(optimizer, params, check_finite=False) if cfg.trainer.fused_backward else None
    cuda = accelerator.device.type == "cuda"
    pass_s = None
    if cfg.reference.get("precompute", False) and cfg.method.needs_reference:  # the loop's pass, then the steps
        check_precompute(cfg)
        reference = precompute_reference(reference, adapter, method, loader, accelerator, seed=0,
                                         steps=args.warmup + args.steps, accumulation=1, policy=policy)
        pass_s = reference.summary["reference/precompute_s"]
    before_steps = torch.cuda.max_memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # the steps' own peak (a released reference copy no longer counted)
    process = psutil.Process()
    step_peak = 0
    hwm = not cuda and restart_peak_rss()
    times, step, epoch = [], 0, 0
    while step < args.warmup + args.steps:
        for batch in epoch_batches(accelerator, loader, epoch):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with accelerator.autocast():
                out = preference_step(adapter, reference, method, batch, epoch=epoch, seed=0, policy=policy)
            accelerator.backward(out.loss)  # with trainer.fused_backward the updates are taken in here
            if fused is None:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append((time.perf_counter() - start) * 1000)
                # GPU: the allocator's peak since the reset (the steps'); CPU: resident memory after each timed step
                step_peak = max(step_peak, torch.cuda.max_memory_allocated() if cuda else process.memory_info().rss)
            step += 1
            if step >= args.warmup + args.steps:
                break
        epoch += 1
    if hwm:
        step_peak = peak_rss_bytes()
    # the whole process's peak (CPU: peak RSS; GPU: allocated), and the peak while the steps ran
    peak = max(before_steps, step_peak) / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"ms_per_step": statistics.median(times), "peak_gib": peak, "step_peak_gib": step_peak / 2**30,
            "pass_s": pass_s, "device": accelerator.device.type}


def restart_peak_rss() -> bool:
    """Linux: restart the process's peak resident size (VmHWM) from its current size; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return peak_rss_bytes() > 0


def peak_rss_bytes() -> int:
    """The process's peak resident size since start or the last :func:`restart_peak_rss` (Linux), else 0."""
    try:
        with open("/proc/self/status") as handle:
            line = next((row for row in handle if row.startswith("VmHWM:")), "")
    except OSError:
        return 0
    return int(line.split()[1]) * 1024 if line else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny_sd15", "tiny_sdxl"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--cache", choices=["on", "off", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--override", action="append", default=[],
                        help="a hydra override for every configuration, e.g. model.adapter.path=DIR (repeatable)")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(measure(args)))
        return
    caches = ["off", "on"] if args.cache == "both" else [args.cache]
    print(f"{'model':<12} {'mode':<10} {'cache':<5} {'ms/step':>9} {'pairs/s':>9} {'peak GiB':>9} "
          f"{'step peak':>9} {'pass s':>7} device")
    for model in args.models:
        for mode in args.modes:
            for cache in caches:
                cmd = [sys.executable, __file__, "--single", "--models", model, "--modes", mode, "--cache", cache,
                       "--batch-size", str(args.batch_size), "--resolution", str(args.resolution),
                       "--precision", args.precision, "--steps", str(args.steps), "--warmup", str(args.warmup),
                       *(f"--override={o}" for o in args.override)]
                done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                if done.returncode != 0:
                    raise SystemExit(f"{model} {mode} cache={cache} failed:\n{done.stderr[-3000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                pairs = args.batch_size / (r["ms_per_step"] / 1000)
                pass_s = "-" if r["pass_s"] is None else f"{r['pass_s']:.2f}"
                print(f"{model:<12} {mode:<10} {cache:<5} {r['ms_per_step']:>9.1f} {pairs:>9.2f} {r['peak_gib']:>9.3f} "
                      f"{r['step_peak_gib']:>9.3f} {pass_s:>7} {r['device']}", flush=True)


if __name__ == "__main__":
    main()
