"""Training under engines that partition state over processes: FSDP2 and DeepSpeed ZeRO-1/2, through accelerate.

**FSDP2** (``conf/accelerate/fsdp.yaml``): every parameter of the denoiser is a ``DTensor`` of which each process
holds a shard, and so are its gradients, optimizer states and an EMA of the weights. The run reads and writes the
same files as an unsharded one (checkpoints, LoRA weights, a pipeline), so a checkpoint resumes under either engine
and any number of processes:

* :func:`whole` / :func:`whole_trainable` gather shards into whole CPU tensors (a collective: every process calls it);
* :func:`optimizer_state` / :func:`load_optimizer_state` go through torch's distributed state-dict API
  (``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` with whole tensors) and convert to and from the
  index-keyed layout of ``optimizer.state_dict()`` that unsharded checkpoints hold;
* :func:`copy_whole_into` writes a whole tensor into a (possibly sharded) parameter: each process keeps its shard.

**DeepSpeed ZeRO-1/2** (``conf/accelerate/deepspeed_zero2.yaml``): the weights stay whole on every process; the
optimizer's states (and, at stage 2, the gradients) are partitioned and owned by DeepSpeed's engine, which takes the
optimizer step inside ``accelerator.backward``. Its clipping and accumulation are set from the trainer's config
(:func:`configure_engine`); checkpoints keep DeepSpeed's own partitioned optimizer files
(:func:`save_deepspeed_state` / :func:`load_deepspeed_state`), resumable under DeepSpeed with the same number of
processes. ZeRO-3 partitions the weights too and is refused (use FSDP2).

Without such an engine every function is the plain operation on ordinary tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator, init_empty_weights
from accelerate.utils import DistributedType, set_module_tensor_to_device
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from diffusion_align.config import ConfigError

DEEPSPEED_DIR = "deepspeed"  # a checkpoint's sub-directory of DeepSpeed's own files
DEEPSPEED_TAG = "state"


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator: Accelerator) -> int:
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def check_engine(accelerator: Accelerator) -> None:
    """DDP, FSDP2 and DeepSpeed ZeRO-0/1/2 train; FSDP1, ZeRO-3 and Megatron-LM are refused before anything loads.

    FSDP1 flattens parameters (``use_orig_params`` aside), which LoRA's frozen/trainable mix and the reference's
    adapter switching do not survive; ZeRO-3 partitions the weights outside FSDP's DTensors (FSDP2 does that job
    here), and while it is configured transformers loads every model through ``deepspeed.zero.Init``, partitioned,
    though only the engine's own module gathers its weights in forward (tried with zero_stage 3 on CPU processes: the
    CLIP text encoder's first forward met position embeddings of size 0); Megatron-LM owns the model's layout.
    """
    kind = accelerator.distributed_type
    if kind == DistributedType.MEGATRON_LM:
        raise RuntimeError(
            "accelerate distributed_type MEGATRON_LM is not supported by diffalign train: use FSDP2 "
            "(accelerate launch --config_file conf/accelerate/fsdp.yaml) or DDP (conf/accelerate/multi_gpu.yaml)")
    if kind == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise RuntimeError(
            f"FSDP version {accelerator.state.fsdp_plugin.fsdp_version} is not supported by diffalign train: set "
            "fsdp_version: 2 in the accelerate config (as conf/accelerate/fsdp.yaml does), or FSDP_VERSION=2 in the "
            "environment of processes started without accelerate launch (SLURM tasks)")
    if kind == DistributedType.DEEPSPEED and zero_stage(accelerator) > 2:
        raise RuntimeError(
            f"DeepSpeed ZeRO stage {zero_stage(accelerator)} is not supported by diffalign train (it partitions the "
            "weights): use zero_stage 2 (conf/accelerate/deepspeed_zero2.yaml) or FSDP2 (conf/accelerate/fsdp.yaml), "
            "which shards the weights and gathers them for checkpoints")


def check_optimizer(accelerator: Accelerator, target: str) -> None:
    """Under FSDP2 or DeepSpeed only ``torch.optim`` optimizers, Adafactor excepted: Adafactor (transformers' or
    torch's) fails on FSDP's DTensors and under ZeRO sees flat partitions instead of the weights' shapes (it would stop
    factoring its second moments and clip per partition); bitsandbytes' 8-bit Adam likewise quantizes by blocks of
    what it is handed."""
    engine = accelerator.distributed_type
    factored = target.rsplit(".", 1)[-1] == "Adafactor"  # torch.optim.Adafactor factors by shape too
    accepted = target.startswith("torch.optim.") and not factored
    if engine in (DistributedType.FSDP, DistributedType.DEEPSPEED) and not accepted:
        raise ConfigError(f"trainer.optimizer {target} is not supported under {engine.value}: use "
                          "trainer/optimizer=adamw (torch.optim.AdamW), or DDP (conf/accelerate/multi_gpu.yaml)")


def configure_engine(accelerator: Accelerator, max_grad_norm: float, accumulation_steps: int) -> None:
    """Before ``prepare``: DeepSpeed clips and accumulates by its own config, set here from the trainer's (accelerate
    would otherwise fill in clipping at 1.0 and keep the accelerate config's accumulation)."""
    if is_deepspeed(accelerator):
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        config["gradient_clipping"] = float(max_grad_norm)
        config["gradient_accumulation_steps"] = int(accumulation_steps)


def autocast(accelerator: Accelerator):
    """The forward pass's mixed-precision context: accelerate's, except under DeepSpeed, which casts the trained
    module itself to bf16/fp16 and leaves autocast off (a diffusers denoiser then meets float32 latents and
    timestep embeddings): there torch's autocast in that dtype, as accelerate's is elsewhere."""
    precision = accelerator.state.mixed_precision
    if is_deepspeed(accelerator) and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(accelerator.device.type, dtype=dtype)
    return accelerator.autocast()


def engine_scales_loss(accelerator: Accelerator) -> bool:
    """Whether DeepSpeed's fp16 loss scaler owns gradient overflows (it drops the step and lowers the scale itself,
    as torch's GradScaler does under the other engines)."""
    return is_deepspeed(accelerator) and accelerator.mixed_precision == "fp16"


def steps_inside_backward(accelerator: Accelerator) -> bool:
    """Whether the optimizer step is taken inside ``accelerator.backward`` (DeepSpeed), so it cannot be dropped."""
    return is_deepspeed(accelerator)


def engine_grad_norm(policy: nn.Module) -> Tensor | float | None:
    """The global gradient norm DeepSpeed computed at its last step (before clipping)."""
    return policy.get_global_grad_norm()


def use_master_weights(accelerator: Accelerator, params: list[nn.Parameter]) -> None:
    """Under DeepSpeed with bf16/fp16 weights: make each trainable parameter its float32 master weight, gathered from
    the optimizer partitions of every process (all must call), so that the saved LoRA or pipeline holds what the
    optimizer trained rather than its half-precision copy, as under DDP or FSDP. For the end of training only: the
    engine's module then holds float32 weights (sampling runs under autocast)."""
    if not is_deepspeed(accelerator):
        return
    from deepspeed.utils import safe_get_full_fp32_param

    for param in params:
        if param.dtype != torch.float32:
            master = safe_get_full_fp32_param(param)
            if master is None:
                raise RuntimeError(f"DeepSpeed holds no float32 master weight for a {param.dtype} parameter of shape "
                                   f"{tuple(param.shape)}")
            param.data = master.detach().to(param.device, torch.float32)


def save_deepspeed_state(policy: nn.Module, directory: Path) -> None:
    """DeepSpeed's partitioned optimizer (and scheduler) state and the trainable weights, into ``directory``
    (every process writes its own partition: all must call it with the same directory)."""
    policy.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=False,
                           exclude_frozen_parameters=True)


def deepspeed_marker(accelerator: Accelerator) -> dict:
    """What a DeepSpeed checkpoint's ``optimizer.pt`` holds in place of an optimizer state."""
    return {"engine": "deepspeed", "processes": accelerator.num_processes, "zero_stage": zero_stage(accelerator)}


def load_deepspeed_state(accelerator: Accelerator, policy: nn.Module, directory: Path, marker: dict) -> None:
    """Restore :func:`save_deepspeed_state`'s files, after checking the checkpoint was written by DeepSpeed with this
    run's number of processes (its partitions are per process)."""
    if not isinstance(marker, dict) or marker.get("engine") != "deepspeed":
        raise ValueError("it was written without DeepSpeed: its optimizer state does not fit DeepSpeed's partitioned "
                         "optimizer; resume it under DDP, FSDP or one process, or start a new output_dir")
    if marker["processes"] != accelerator.num_processes:
        raise ValueError(f"it was written by DeepSpeed with {marker['processes']} processes, this run has "
                         f"{accelerator.num_processes}: DeepSpeed's optimizer partitions are per process")
    path, _ = policy.load_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_module_strict=False,
                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise ValueError(f"DeepSpeed found no checkpoint in {directory / DEEPSPEED_DIR}")


def whole(tensor: Tensor, keep: bool = True) -> Tensor | None:
    """A contiguous CPU copy of the whole tensor (gathered from every process's shard when it is a ``DTensor``).

    ``keep=False``: take part in the gathering but keep no copy (returns ``None``), for processes that write nothing.
    """
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu").contiguous() if keep else None


def whole_tensors(tensors: dict[str, Tensor], keep: bool = True) -> dict[str, Tensor]:
    """:func:`whole` of each value, one at a time (a sharded model is never whole on the device at once)."""
    gathered = {k: whole(v, keep) for k, v in tensors.items()}
    return gathered if keep else {}


def whole_trainable(model: nn.Module, keep: bool = True) -> dict[str, Tensor]:
    """The parameters that train, by name, as whole CPU tensors."""
    return whole_tensors({n: p for n, p in model.named_parameters() if p.requires_grad}, keep)


def unsharded_copy(accelerator: Accelerator, denoiser: nn.Module) -> nn.Module | None:
    """The main process's plain (unsharded) copy of a sharded ``denoiser`` on the run's device: same class, config,
    LoRA adapters, weights and dtypes, for saving and sampling; ``None`` on the other processes (all must call it)."""
    main = accelerator.is_main_process
    # whole tensors gathered one at a time, kept by the main process only; buffers (never sharded) are cloned, so
    # the copy shares no storage with the sharded model
    state = {k: whole(v, main) if isinstance(v, DTensor) or not main else whole(v).clone()
             for k, v in denoiser.state_dict().items()}
    if not main:
        return None
    trains = {n for n, p in denoiser.named_parameters() if p.requires_grad}
    with init_empty_weights(include_buffers=False):  # parameters on the meta device: no random init of a copy that
        copy = type(denoiser).from_config(denoiser.config)  # is about to be replaced (seconds and a model's memory
        for name, config in getattr(denoiser, "peft_config", {}).items():  # at SDXL size); buffers built as usual
            copy.add_adapter(config, adapter_name=name)
    copy.load_state_dict(state, strict=True, assign=True)  # assign: the gathered tensors, in their dtypes
    for name, buffer in denoiser.named_buffers():  # non-persistent buffers (rotary tables) are not in the state dict
        if name not in state:
            set_module_tensor_to_device(copy, name, "cpu", value=buffer.detach().to("cpu").clone())
    still_empty = [n for n, t in (*copy.named_parameters(), *copy.named_buffers()) if t.is_meta]
    if still_empty:
        raise RuntimeError(f"unsharded copy of {type(denoiser).__name__}: no value for {still_empty[:5]}")
    for name, param in copy.named_parameters():
        param.requires_grad_(name in trains)
    return copy.to(accelerator.device).eval()


def reshard(model: nn.Module) -> None:
    """Reshard every FSDP2 unit after forward passes with no backward (sampling under ``no_grad``).

    Seen on gloo CPU processes (torch 2.14): after validation sampling the model's registered parameters were not the
    sharded ones the optimizer holds (the optimizer's state dict then fails to name them); resharding restores them.
    Harmless where the units already resharded.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def copy_whole_into(param: Tensor, value: Tensor) -> None:
    """``param.copy_(value)`` where ``value`` is the whole tensor; a sharded ``param`` takes its own shard of it."""
    value = value.to(device=param.device, dtype=param.dtype)
    if isinstance(param, DTensor):
        # every process holds the whole value (read from the same file): cut the local shard, no communication
        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(value)


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer inside its wrappers (accelerate's ``AcceleratedOptimizer``, DeepSpeed's ZeRO optimizer), each of
    which holds the next as ``.optimizer``."""
    while (nested := getattr(optimizer, "optimizer", None)) is not None and nested is not optimizer:
        optimizer = nested
    return optimizer


def optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters, in its own order (parameter groups in turn): the order in which
    ``optimizer.state_dict()`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    try:
        return [names[id(p)] for group in inner_optimizer(optimizer).param_groups for p in group["params"]]
    except KeyError as exc:
        raise ValueError("the optimizer holds a parameter that is not the model's") from exc


def optimizer_state(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()``: index-keyed, whole tensors (gathered under FSDP2: every process calls it; the
    states are kept by the first process only, the others get ``{}``)."""
    if not is_sharded(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, inner_optimizer(optimizer),
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return index_keyed(by_name, optimizer_names(model, optimizer)) if by_name else {}


def load_optimizer_state(accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict) -> None:
    """The inverse of :func:`optimizer_state`: each process keeps its shards of the whole states."""
    if not is_sharded(accelerator):
        if isinstance(state, dict) and state.get("engine") == "deepspeed":
            raise ValueError(f"it was written by DeepSpeed (ZeRO stage {state['zero_stage']}, {state['processes']} "
                             "processes), whose optimizer files only DeepSpeed reads: resume it under DeepSpeed")
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    by_name = name_keyed(state, optimizer_names(model, optimizer))
    set_optimizer_state_dict(model, inner_optimizer(optimizer), by_name,
                             options=StateDictOptions(full_state_dict=True))


def index_keyed(state: dict, names: list[str]) -> dict:
    """A name-keyed optimizer state (torch's distributed state-dict API) in ``optimizer.state_dict()``'s layout:
    parameters numbered in the order of ``names`` (:func:`optimizer_names`)."""
    index = {name: i for i, name in enumerate(names)}
    missing = sorted({n for g in state["param_groups"] for n in g["params"]} - set(index))
    if missing:
        raise ValueError(f"optimizer state names parameters that do not train: {missing[:5]}")
    return {
        "state": {index[n]: s for n, s in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def name_keyed(state: dict, names: list[str]) -> dict:
    """The inverse of :func:`index_keyed`."""
    try:
        return {
            "state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
        }
    except (IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"optimizer state does not fit the {len(names)} trainable parameters ({exc!r})") from exc
