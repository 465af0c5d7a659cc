"""``diffalign train``: the one offline training loop (accelerate), read top to bottom.

The science of a step lives in :mod:`diffusion_align.train.step`; this file is engineering: devices and precision,
LoRA or full fine-tuning, data loading, accumulation, clipping, non-finite losses and gradients, logging,
checkpoints, SIGTERM/SIGINT (checkpoint at the next step boundary, then exit: :mod:`~diffusion_align.train.signals`)
and the final save (written beside its place and renamed into it, so a kill leaves no half-written weights).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from diffusion_align.adapters.base import cast_frozen
from diffusion_align.adapters.lora import add_lora, save_lora, save_lora_kohya
from diffusion_align.config import ConfigError, build
from diffusion_align.io import write_text_atomic
from diffusion_align.noising import make_noising
from diffusion_align.reference import FrozenReference, NoReference
from diffusion_align.train.checkpoint import (
    LoopState,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    staging_dir,
)
from diffusion_align.train.compile import compile_denoiser, compile_mode, compile_options, use_channels_last
from diffusion_align.train.data import epoch_batches, make_loader
from diffusion_align.train.fused import BackwardSteps, check_fused_processes
from diffusion_align.train.metrics import MetricAverager
from diffusion_align.train.modelcard import write_model_card
from diffusion_align.train.nonfinite import clip_and_check_gradients, handle_nonfinite
from diffusion_align.train.options import check_trainer_config
from diffusion_align.train.precompute import check_precompute, precompute_reference
from diffusion_align.train.sharding import (
    autocast,
    check_engine,
    check_optimizer,
    configure_engine,
    copy_whole_into,
    deepspeed_marker,
    is_deepspeed,
    is_sharded,
    load_deepspeed_state,
    load_optimizer_state,
    optimizer_state,
    reshard,
    save_deepspeed_state,
    steps_inside_backward,
    unsharded_copy,
    use_master_weights,
    whole_tensors,
    whole_trainable,
)
from diffusion_align.train.signals import StopSignals, TrainingInterrupted
from diffusion_align.train.step import StepInputs, preference_step
from diffusion_align.train.steplevel import OnlineInputs, step_level_step
from diffusion_align.train.validation import run_validation

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Run:
    """Everything one training run holds, built by :func:`run` and read by :func:`train`."""

    cfg: DictConfig
    accelerator: Accelerator
    adapter: object
    reference: object
    method: StepInputs | OnlineInputs
    params: list[torch.nn.Parameter]
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    ema: EMAModel | None
    out_dir: Path
    state: LoopState = field(default_factory=LoopState)
    checkpointed_step: int | None = None  # the step of the last checkpoint this process wrote
    last_logs: dict = field(default_factory=dict)  # the metrics of the last logging interval (metrics.json)
    started: float = field(default_factory=time.time)
    step_fault: str | None = None  # a non-finite value met in the optimizer step under way
    backward_steps: BackwardSteps | None = None  # trainer.fused_backward: the updates are taken inside backward


def run(cfg: DictConfig) -> Path:
    """Train as ``cfg`` says; returns the output directory (LoRA weights or a full pipeline, and a model card).

    Raises:
        TrainingInterrupted: SIGTERM or SIGINT arrived; a checkpoint of the last completed step was written.
    """
    out_dir = Path(cfg.output_dir)
    trainer = cfg.trainer
    check_trainer_config(trainer)
    check_precompute(cfg)
    accelerator = Accelerator(
        gradient_accumulation_steps=trainer.gradient_accumulation_steps,
        mixed_precision=trainer.mixed_precision,
        log_with=list(trainer.report_to) or None,
        project_dir=str(out_dir),
    )
    check_distributed_launch(accelerator)
    check_fused_processes(trainer, accelerator)
    check_optimizer(accelerator, str(trainer.optimizer.get("_target_", "")))
    configure_engine(accelerator, trainer.max_grad_norm, trainer.gradient_accumulation_steps)
    set_seed(cfg.seed)
    make_optimizer = build(trainer.optimizer)  # first: a missing optimizer package fails before any model loads
    adapter = build(cfg.model.adapter)
    reference = make_reference(cfg, adapter)  # before LoRA: a frozen copy must be of the base network
    params = make_trainable(cfg, adapter)
    place_modules(adapter, reference, accelerator, WEIGHT_DTYPES[trainer.mixed_precision])
    apply_speed_options(trainer, adapter, reference)
    method = make_method(cfg, adapter)
    with accelerator.main_process_first():  # the latent cache is built once, by the main process
        loader = make_loader(cfg, adapter)
    optimizer = make_optimizer(params)
    scheduler = get_scheduler(
        trainer.lr_scheduler.name,
        optimizer,
        num_warmup_steps=trainer.lr_scheduler.warmup_steps * accelerator.num_processes,
        num_training_steps=trainer.max_steps * accelerator.num_processes,
    )
    policy, optimizer, loader, scheduler = accelerator.prepare(adapter.denoiser, optimizer, loader, scheduler)
    if is_sharded(accelerator):  # FSDP2 shards in place: the trainable parameters are now DTensors
        params = [p for p in adapter.denoiser.parameters() if p.requires_grad]
    ema = None
    if trainer.ema.enabled:  # float32 averages, also of weights an engine keeps in bf16 (DeepSpeed)
        ema = EMAModel([p if p.dtype == torch.float32 else p.detach().float() for p in params], decay=trainer.ema.decay)
    r = Run(cfg, accelerator, adapter, reference, method, params, policy, optimizer, scheduler, loader, ema, out_dir)
    if trainer.fused_backward:
        r.backward_steps = BackwardSteps(optimizer, params, check_finite=trainer.check_finite)
    resume(r)
    if cfg.reference.get("precompute", False):  # after resume: the pass starts where training will
        r.reference = precompute_reference(
            reference, adapter, method, r.loader, accelerator, seed=cfg.seed, steps=trainer.max_steps - r.state.step,
            accumulation=trainer.gradient_accumulation_steps, epoch=r.state.epoch,
            batch_in_epoch=r.state.batch_in_epoch, policy=policy)
    if trainer.report_to:
        accelerator.init_trackers(trainer.project_name, config=flat_config(cfg))
    with StopSignals() as stop:
        signum = train(r, stop)
        accelerator.wait_for_everyone()
        if signum is None:
            save_final(r)
    accelerator.end_training()
    if signum is not None:
        interrupted = TrainingInterrupted(signum, r.state.step, checkpoint_dir(r))
        log.warning("%s", interrupted)
        stop.hand_over()  # submitit's pre-emption signal: its handler requeues the job (and exits)
        raise interrupted
    return out_dir


def resume(r: Run) -> None:
    """Continue from ``trainer.resume_from_checkpoint`` (``latest``: the newest complete one, if any)."""
    path = resolve_checkpoint(r.out_dir / "checkpoints", r.cfg.trainer.resume_from_checkpoint)
    if path is None:
        return
    denoiser, accelerator = r.adapter.denoiser, r.accelerator
    if is_deepspeed(accelerator):  # its own partitioned files (every process reads its own)
        def load_optimizer(state):
            load_deepspeed_state(accelerator, r.policy, path, state)
    else:
        def load_optimizer(state):
            load_optimizer_state(accelerator, denoiser, r.optimizer, state)
    r.state, extra = load_checkpoint(path, denoiser, r.optimizer, r.scheduler, load_optimizer=load_optimizer)
    r.reference.load_state_tensors({k: v for k, v in extra.items() if k.startswith("reference.")})
    if r.ema is not None:
        load_ema_tensors(r.ema, {k: v for k, v in extra.items() if k.startswith("ema.")}, path)
    log.info("resumed from %s at step %d", path, r.state.step)


def ema_tensors(ema: EMAModel | None) -> dict[str, torch.Tensor]:
    if ema is None:
        return {}
    state = {f"ema.{i}": p for i, p in enumerate(ema.shadow_params)}
    state["ema.optimization_step"] = torch.tensor(ema.optimization_step)
    return state


def load_ema_tensors(ema: EMAModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    if len(tensors) != len(ema.shadow_params) + 1:
        raise ValueError(f"checkpoint {path} has {max(len(tensors) - 1, 0)} EMA tensors, the run trains "
                         f"{len(ema.shadow_params)}: was it saved with trainer.ema.enabled=true and the same model?")
    with torch.no_grad():
        for i, shadow in enumerate(ema.shadow_params):
            copy_whole_into(shadow, tensors[f"ema.{i}"])
    ema.optimization_step = int(tensors["ema.optimization_step"])


def make_reference(cfg: DictConfig, adapter):
    """The reference the method needs: none for reference-free methods, else ``conf/reference/<name>.yaml``."""
    if not cfg.method.needs_reference:
        return NoReference()
    if cfg.reference.requires_lora and cfg.model.finetune.mode != "lora":
        raise ConfigError("reference=lora_disabled needs model.finetune.mode=lora; use reference=frozen_copy")
    return build(cfg.reference.build, adapter=adapter)


def make_trainable(cfg: DictConfig, adapter) -> list[torch.nn.Parameter]:
    """LoRA layers (peft) or every weight of the denoiser, as ``model.finetune.mode`` says."""
    finetune = cfg.model.finetune
    if finetune.get("kohya_copy", False) and not adapter.kohya_lora:
        raise ConfigError(f"model.finetune.kohya_copy: kohya's LoRA key names are defined for UNets (SD1.5, SDXL), "
                          f"not {adapter.family}; set it to false (the diffusers-format file is written either way)")
    if finetune.mode == "lora":
        return add_lora(
            adapter.denoiser,
            rank=finetune.rank,
            alpha=finetune.alpha,
            target_modules=list(finetune.target_modules),
            init_lora_weights=finetune.init_lora_weights,
        )
    if finetune.mode == "full":
        adapter.denoiser.requires_grad_(True).to(torch.float32)
        return list(adapter.denoiser.parameters())
    raise ConfigError(f"model.finetune.mode '{finetune.mode}': expected lora or full")


def place_modules(adapter, reference, accelerator: Accelerator, weight_dtype: torch.dtype) -> None:
    """Frozen modules go to the device in the mixed-precision dtype; trainable weights stay float32.

    With LoRA the denoiser's frozen base is cast too and only the adapter layers stay float32 (as diffusers'
    ``cast_training_params``); a full fine-tune keeps float32 master weights under autocast.
    """
    for module in adapter.frozen_modules.values():
        cast_frozen(module.requires_grad_(False).to(accelerator.device), weight_dtype)
    cast_frozen(adapter.denoiser.to(accelerator.device), weight_dtype)
    reference.to(accelerator.device)


def apply_speed_options(trainer: DictConfig, adapter, reference) -> None:
    """``trainer.gradient_checkpointing``, ``trainer.channels_last`` and ``trainer.compile`` (with
    ``trainer.compile_options``) on the denoiser, after LoRA and placement; the memory format and the compile mode
    also on a frozen (or EMA) reference copy, whose forward pass is a third of a step's work."""
    if trainer.gradient_checkpointing:
        adapter.denoiser.enable_gradient_checkpointing()
    copy = reference.model if isinstance(reference, FrozenReference) else None
    if trainer.channels_last:  # before compiling: the graphs are traced with the weights' layout
        for denoiser in (adapter.denoiser, copy):
            if denoiser is not None:
                use_channels_last(denoiser)
    mode, options = compile_mode(trainer.compile), compile_options(trainer.compile_options)
    compile_denoiser(adapter.denoiser, mode, options)
    if copy is not None:
        compile_denoiser(copy, mode, options)


def make_method(cfg: DictConfig, adapter) -> StepInputs | OnlineInputs:
    """The loss and samplers of ``conf/method/<name>.yaml`` and ``conf/timesteps/<name>.yaml``; the online
    step-level pieces (sampler, scorer, threshold) for ``inputs: step`` methods (SPO, LPO)."""
    method = cfg.method
    if method.inputs == "step":
        return make_online_method(cfg, adapter)
    try:
        noising = make_noising(method.noising, num_steps=method.get("inversion_steps", 10),
                               eta=method.get("inversion_eta"))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if noising is not None and adapter.schedule.kind != "discrete":
        raise ConfigError(
            f"method.noising '{method.noising}' inverts DDIM steps of a discrete (ε- or v-prediction) schedule; "
            f"{type(adapter).__name__} has a {adapter.schedule.kind} schedule: use method.noising=forward")
    if method.inputs not in ("pairwise", "ranked", "unpaired", "segments"):
        raise ConfigError(f"method.inputs '{method.inputs}' is not an offline kind (the step-level loop is separate)")
    timesteps = cfg.timesteps
    return StepInputs(
        loss_fn=build(method.loss),
        inputs=method.inputs,
        sample_timesteps=build(timesteps.sampler, schedule=adapter.schedule),
        weight_fn=None
        if timesteps.weight is None
        else build(timesteps.weight, schedule=adapter.schedule, noise_scheduler=adapter.noise_scheduler),
        label_fn=None if method.get("label_fn") is None else build(method.label_fn),
        timesteps_arg=method.get("timesteps_arg"),
        noising=noising,
        shared_noise=method.get("shared_noise", True),
    )


VIDEO_FAMILIES = ("wan", "cogvideox")


def make_online_method(cfg: DictConfig, adapter) -> OnlineInputs:
    """SPO / LPO: ``method.online`` (see ``conf/method/spo.yaml``)."""
    from diffusion_align.sampling import StepKernel

    online = cfg.method.online
    if adapter.family in VIDEO_FAMILIES:
        raise ConfigError(f"method {cfg.method.name} samples image trajectories; {adapter.family} is a video model "
                          "(use dpo or densedpo)")
    try:
        kernel = StepKernel(adapter, online.num_steps, online.eta)
    except ValueError as error:
        raise ConfigError(f"method.online: {error}") from error
    if online.candidates < 2:
        raise ConfigError(f"method.online.candidates={online.candidates}: a pair needs at least 2 candidates")
    return OnlineInputs(
        loss_fn=build(cfg.method.loss),
        kernel=kernel,
        scorer=build(online.scorer),
        threshold=build(online.threshold),
        candidates=online.candidates,
        divert_start_step=online.divert_start_step,
        guidance=online.guidance,
        train_guidance=online.train_guidance,
        pairs_per_prompt=online.pairs_per_prompt,
    )


def train(r: Run, stop: StopSignals) -> int | None:
    """Optimizer steps until ``trainer.max_steps``; logs, validates, checkpoints, handles non-finite values.

    Returns:
        ``None`` when ``max_steps`` are done; the signal number when a stop signal cut training short (after the
        checkpoint of the last completed step was written).
    """
    trainer, accelerator, state = r.cfg.trainer, r.accelerator, r.state
    averager = MetricAverager()
    progress = tqdm(total=trainer.max_steps, initial=state.step, disable=not accelerator.is_local_main_process)
    while state.step < trainer.max_steps:
        for batch in epoch_batches(accelerator, r.loader, state.epoch, state.batch_in_epoch):
            state.batch_in_epoch += 1
            out = optimization_step(r, batch)
            averager.add(out.metrics, loss=out.loss)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            progress.update(1)
            r.reference.update(r.adapter.denoiser)
            if r.ema is not None:
                r.ema.step(r.params)
            after_step(r, averager, progress)
            if state.step >= trainer.max_steps:
                break
            if stop_requested(accelerator, stop):
                if r.checkpointed_step != state.step:
                    save_loop_checkpoint(r)
                progress.close()
                return stop.received or signal.SIGTERM  # another process may have received it
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    progress.close()
    return None


def stop_requested(accelerator: Accelerator, stop: StopSignals) -> bool:
    """Whether any process received a stop signal; every process gets the same answer, so all stop together."""
    local = stop.received is not None
    if accelerator.num_processes == 1:
        return local
    votes = accelerator.reduce(torch.tensor([int(local)], device=accelerator.device), reduction="sum")
    return bool(votes.item() > 0)


def optimization_step(r: Run, batch):
    """Forward (the step's science), backward, clip and update on one micro-batch (with ``trainer.fused_backward``
    each parameter is updated inside backward: :mod:`~diffusion_align.train.fused`).

    A non-finite loss in any micro-batch of an optimizer step, or a non-finite gradient norm at its end, skips the
    whole step (the accumulated gradients are dropped, nothing is updated) or stops, as ``trainer.on_nonfinite``
    says; under DeepSpeed, which steps inside backward, it stops (a gradient overflow under its fp16 is its loss
    scaler's to drop, as GradScaler's elsewhere). The loss is tested on every process together, so all skip or stop
    together.
    """
    trainer, accelerator = r.cfg.trainer, r.accelerator
    with accelerator.accumulate(r.policy):
        science = step_level_step if isinstance(r.method, OnlineInputs) else preference_step
        with autocast(accelerator):
            out = science(r.adapter, r.reference, r.method, batch, epoch=r.state.epoch, seed=r.cfg.seed,
                          policy=r.policy)
        if trainer.check_finite and r.step_fault is None and not all_finite(accelerator, out.loss):
            here = float(out.loss.detach())
            r.step_fault = f"loss {here}" if not math.isfinite(here) else f"loss on another process (here {here})"
        if r.step_fault is None:
            accelerator.backward(out.loss)  # trainer.fused_backward: every parameter is updated in here
        if r.backward_steps is not None and r.step_fault is None:
            fault = r.backward_steps.fault()
            if fault is not None:
                raise FloatingPointError(
                    f"non-finite {fault} at step {r.state.step + 1}: with trainer.fused_backward=true each update "
                    "is taken inside backward and cannot be dropped, so the run stops; the last checkpoint is intact")
        elif accelerator.sync_gradients and r.step_fault is None:
            r.step_fault = clip_and_check_gradients(trainer, accelerator, r.policy, r.params)
        if r.step_fault is not None and steps_inside_backward(accelerator):
            raise FloatingPointError(
                f"non-finite {r.step_fault} at step {r.state.step + 1}: under DeepSpeed the optimizer step is taken "
                "inside backward and cannot be dropped, so the run stops; the last checkpoint is intact")
        if r.step_fault is None:
            if r.backward_steps is None:
                r.optimizer.step()  # accelerate makes it a no-op until the last micro-batch of the step
            r.scheduler.step()
        r.optimizer.zero_grad(set_to_none=True)  # likewise: accumulated gradients survive until the step ends
    if accelerator.sync_gradients and r.step_fault is not None:
        fault, r.step_fault = r.step_fault, None
        handle_nonfinite(trainer, r.state, out, fault)
    return out


def all_finite(accelerator: Accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process: all must skip (or stop) together, since a process that skipped
    backward would leave the others waiting in its gradient all-reduce (DDP) or reduce-scatter (FSDP)."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return not bool(bad.item())


def after_step(r: Run, averager: MetricAverager, progress) -> None:
    """Logging, validation samples and checkpoints at their intervals."""
    trainer, accelerator, step = r.cfg.trainer, r.accelerator, r.state.step
    if step % trainer.log_every == 0 or step == trainer.max_steps:
        logs = averager.pop(prefix="train/")
        logs["train/lr"] = r.scheduler.get_last_lr()[0]
        progress.set_postfix(loss=f"{logs['train/loss']:.4f}", acc=f"{logs.get('train/rewards/accuracies', 0):.2f}")
        accelerator.log(logs, step=step)
        r.last_logs = logs
    validation = trainer.validation
    if validation.every and validation.prompts and step % validation.every == 0:
        if is_sharded(accelerator):  # every process takes part in the sharded forwards; the main one writes
            run_validation(r.cfg, accelerator, r.adapter, r.out_dir, step, write=accelerator.is_main_process)
            reshard(r.adapter.denoiser)
        elif accelerator.is_main_process:
            run_validation(r.cfg, accelerator, r.adapter, r.out_dir, step)
    if trainer.checkpoint_every and step % trainer.checkpoint_every == 0:
        save_loop_checkpoint(r)


def checkpoint_dir(r: Run) -> Path:
    return r.out_dir / "checkpoints" / f"checkpoint-{r.state.step}"


def save_loop_checkpoint(r: Run) -> None:
    """Checkpoint the current step (written by the main process; under FSDP every process first takes part in
    gathering the shards into whole tensors, so the files are those of an unsharded run)."""
    accelerator, denoiser = r.accelerator, r.adapter.denoiser
    extra = {**r.reference.state_tensors(), **ema_tensors(r.ema)}
    gathered = {}
    if is_deepspeed(accelerator):  # every process writes its optimizer partition into one staging directory
        staging = [staging_dir(r.out_dir / "checkpoints", r.state.step) if accelerator.is_main_process else None]
        broadcast_object_list(staging)
        save_deepspeed_state(r.policy, staging[0])
        accelerator.wait_for_everyone()
        gathered = {"optimizer_state": deepspeed_marker(accelerator), "staging": staging[0]}
    elif is_sharded(accelerator):
        main = accelerator.is_main_process
        gathered = {"trainable": whole_trainable(denoiser, keep=main),
                    "optimizer_state": optimizer_state(accelerator, denoiser, r.optimizer)}
        extra = whole_tensors(extra, keep=main)
    if accelerator.is_main_process:
        save_checkpoint(r.out_dir / "checkpoints", r.state, denoiser, r.optimizer, r.scheduler,
                        extra=extra, keep_last=r.cfg.trainer.checkpoints_keep, **gathered)
    r.checkpointed_step = r.state.step


def save_final(r: Run) -> None:
    """LoRA weights (diffusers' loader format; for UNets also a kohya-format copy) or the whole pipeline, a model
    card, and final validation grids.

    Called on every process; the main one writes. With ``trainer.ema.enabled`` the EMA weights are copied into the
    model first: they are what is saved. Under DeepSpeed with bf16/fp16 the trained weights are first replaced by
    their float32 masters. Under FSDP the shards are first gathered into a plain copy of the denoiser
    on the main process, which then takes the sharded one's place in the pipeline: the files and the validation
    samples are those of an unsharded run.
    """
    cfg, adapter, out_dir = r.cfg, r.adapter, r.out_dir
    sharded = is_sharded(r.accelerator)
    use_master_weights(r.accelerator, r.params)  # DeepSpeed bf16/fp16: the float32 masters (every process gathers)
    if not sharded and not r.accelerator.is_main_process:
        return
    if r.ema is not None:
        r.ema.copy_to(r.params)
    if sharded:
        copy = unsharded_copy(r.accelerator, adapter.denoiser)
        if copy is None:
            return
        use_denoiser(adapter, copy)
    if cfg.model.finetune.mode == "lora":
        save_lora(adapter.pipeline, adapter.denoiser, adapter.lora_layers_kwarg, out_dir)
        if cfg.model.finetune.get("kohya_copy", False):
            save_lora_kohya(adapter.denoiser, out_dir)
    else:
        save_pipeline_atomically(adapter.pipeline, out_dir / "pipeline")
    card = write_model_card(out_dir, cfg, r.state, adapter)
    write_metrics(r)
    if cfg.trainer.validation.prompts:
        run_validation(cfg, r.accelerator, adapter, out_dir, r.state.step)
        if cfg.model.finetune.mode == "lora":
            run_validation(cfg, r.accelerator, adapter, out_dir, r.state.step, base=True)
    log.info("trained %d steps; weights and model card in %s", r.state.step, card.parent)


def use_denoiser(adapter, denoiser: torch.nn.Module) -> None:
    """Make ``denoiser`` the adapter's and its pipeline's network (in place of the one it replaces)."""
    name = next(k for k, v in adapter.pipeline.components.items() if v is adapter.denoiser)
    adapter.pipeline.register_modules(**{name: denoiser})
    adapter.denoiser = denoiser


def write_metrics(r: Run) -> Path:
    """``metrics.json``: steps done, wall time and the last logged averages (a sweep summary's row reads it)."""
    metrics = {"step": r.state.step, "wall_time_s": round(time.time() - r.started, 3),
               "processes": r.accelerator.num_processes, **getattr(r.reference, "summary", {}), **r.last_logs}
    return write_text_atomic(r.out_dir / "metrics.json", json.dumps(metrics, indent=1, sort_keys=True))


def check_distributed_launch(accelerator: Accelerator) -> None:
    """Refuse launches that would silently train the wrong thing.

    * ``WORLD_SIZE`` > 1 but accelerate set up one process: on a machine without GPUs ``accelerate launch`` /
      ``torchrun`` start independent copies unless ``ACCELERATE_USE_CPU=true`` selects gloo.
    * Engines other than DDP and FSDP2 (:func:`~diffusion_align.train.sharding.check_engine`).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"launched as {world} processes (WORLD_SIZE={world}) but accelerate started no process group: without "
            "GPUs set ACCELERATE_USE_CPU=true for gloo DDP, or launch one process")
    check_engine(accelerator)


def save_pipeline_atomically(pipeline, directory: Path) -> None:
    """``pipeline.save_pretrained`` into a hidden sibling renamed to ``directory``; a previous one is replaced.

    Hidden siblings a killed save left behind are removed first.
    """
    for leftover in directory.parent.glob(f".{directory.name}.*"):
        shutil.rmtree(leftover)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    pipeline.save_pretrained(tmp)
    replaced = None
    if directory.exists():
        replaced = directory.with_name(f".{directory.name}.replaced-{os.getpid()}")
        os.replace(directory, replaced)
    os.replace(tmp, directory)
    if replaced is not None:
        shutil.rmtree(replaced)


def flat_config(cfg: DictConfig) -> dict:
    """The resolved config flattened to ``a/b/c: value`` scalars, for trackers' hyperparameter tables."""
    flat: dict = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(node, (int, float, str, bool)) or node is None:
            flat[prefix] = "null" if node is None else node
        else:
            flat[prefix] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat
