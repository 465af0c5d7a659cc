"""LoRA through peft, saved in the stock diffusers format.

Adapters are injected with diffusers' ``add_adapter`` (no peft wrapper module, so state-dict keys carry no wrapper
prefix), and saved with the pipeline's own ``save_lora_weights`` as ``pytorch_lora_weights.safetensors`` (peft keys
under the ``unet.`` / ``transformer.`` prefix, the LoraConfig as metadata): the file
``pipe.load_lora_weights(dir)`` reads. A wrapper prefix would make that load a silent no-op (flow_grpo#87); the tests
load the file into a fresh pipeline and check the output changes.

UNet LoRAs (SD1.5, SDXL) can also be written under kohya's key names (:func:`save_lora_kohya`), the format the
UI tools load (AUTOMATIC1111, ComfyUI, SD.Next, InvokeAI); diffusers reads it too.

The file is written beside its place and renamed into it (a kill never leaves a truncated one), and
:func:`check_lora_file` tells, before any loader runs, whether a file fits a network: a LoRA of another
architecture is refused naming the file and the keys that do not fit, instead of failing deep in peft or loading
as a silent no-op.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from diffusion_align.io import write_atomic

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHT_NAME = "lora_kohya.safetensors"  # the same LoRA under kohya's key names (AUTOMATIC1111, ComfyUI, ...)
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
ADAPTABLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class LoraMismatchError(ValueError):
    """A LoRA file does not fit the network it is meant for (another architecture, or not a LoRA file)."""


def add_lora(
    denoiser: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: list[str] | tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0"),
    init_lora_weights: str | bool = "gaussian",
    dropout: float = 0.0,
) -> list[nn.Parameter]:
    """Freeze ``denoiser``, inject LoRA layers, cast them to float32, and return the trainable parameters.

    Defaults are the diffusers DPO port's: rank 4, alpha = rank, gaussian init, attention projections.
    """
    denoiser.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        init_lora_weights=init_lora_weights,
        target_modules=list(target_modules),
        lora_dropout=dropout,
    )
    denoiser.add_adapter(config)
    cast_training_params(denoiser, dtype=torch.float32)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"LoRA target_modules {list(target_modules)} matched no layer of {type(denoiser).__name__}")
    return params


def lora_state_dict(denoiser: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``denoiser`` in peft's key format (``lora_A`` / ``lora_B``).

    Every diffusers LoRA loader reads this format. The older UNet-only "diffusers" format (``lora.down`` /
    ``lora.up``, from ``convert_state_dict_to_diffusers``) is read by the SD/SDXL loaders only: SD3's loader silently
    drops its attention keys, so it is not used here.
    """
    return get_peft_model_state_dict(denoiser)


def save_lora(pipeline, denoiser: nn.Module, layers_kwarg: str | None, directory: str | Path) -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors``.

    The peft ``LoraConfig`` (rank, alpha, targets) is stored as the file's adapter metadata, so a loader that reads
    it restores ``lora_alpha`` instead of assuming alpha = rank.

    Args:
        pipeline: the diffusers pipeline the LoRA belongs to (its class provides ``save_lora_weights``).
        denoiser: the unwrapped network holding the LoRA layers.
        layers_kwarg: ``unet_lora_layers`` / ``transformer_lora_layers``: the pipeline's keyword for the denoiser's
            layers; ``None`` for pipelines without a LoRA loader (PixArt), which get the model-level format read by
            ``pipe.transformer.load_lora_adapter(directory)``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(".lora.*"):  # of a killed save
        shutil.rmtree(leftover)
    tmp = Path(tempfile.mkdtemp(prefix=".lora.", dir=directory))
    if layers_kwarg is None:
        denoiser.save_lora_adapter(str(tmp), weight_name=LORA_WEIGHT_NAME)
    else:
        metadata_kwarg = layers_kwarg.replace("_lora_layers", "_lora_adapter_metadata")
        type(pipeline).save_lora_weights(
            str(tmp),
            **{layers_kwarg: lora_state_dict(denoiser), metadata_kwarg: denoiser.peft_config["default"].to_dict()},
        )
    for written in tmp.iterdir():
        os.replace(written, directory / written.name)
    tmp.rmdir()
    return directory / LORA_WEIGHT_NAME


def kohya_state_dict(denoiser: nn.Module, prefix: str = "unet") -> dict[str, torch.Tensor]:
    """The LoRA of a UNet under kohya's key names, the format AUTOMATIC1111, ComfyUI, SD.Next and InvokeAI load:
    ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` and a scalar ``.alpha`` per layer.

    Keys come from diffusers' ``convert_state_dict_to_kohya``. That converter writes ``alpha = rank`` (a scale of 1),
    while kohya-style loaders scale by ``alpha / rank``; each layer's alpha is set here from its own peft scaling
    (``alpha = scaling x rank``), so a LoRA trained with ``lora_alpha`` other than its rank keeps its strength.
    """
    kohya = convert_state_dict_to_kohya({f"{prefix}.{k}": v.contiguous() for k, v in lora_state_dict(denoiser).items()})
    for name, module in denoiser.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.scaling:
            key = f"lora_{prefix}_{name.replace('.', '_')}.alpha"
            if key not in kohya:
                raise KeyError(f"kohya conversion wrote no {key} for LoRA layer {name}")
            kohya[key] = torch.tensor(float(module.scaling["default"] * module.r["default"]))
    return kohya


def save_lora_kohya(denoiser: nn.Module, directory: str | Path, prefix: str = "unet") -> Path:
    """Write ``directory/lora_kohya.safetensors`` (:func:`kohya_state_dict`), beside its place and renamed into it."""
    state = kohya_state_dict(denoiser, prefix)
    return write_atomic(Path(directory) / KOHYA_WEIGHT_NAME,
                        lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def check_lora_file(file: str | Path, denoiser: nn.Module, prefix: str | None = None) -> int:
    """Check, from the file's header alone, that every tensor of a LoRA file fits a layer of ``denoiser``.

    A key ``<prefix>.<layer path>.lora_A.weight`` of shape ``[rank, in, ...]`` (``lora_B``: ``[out, rank, ...]``)
    must name a linear or convolution layer of ``denoiser`` whose weight is ``[out, in, ...]``.

    Args:
        file: a ``.safetensors`` LoRA file (``pytorch_lora_weights.safetensors``).
        denoiser: the network to load it into (with or without LoRA layers already).
        prefix: ``unet`` / ``transformer`` for the pipeline-level format :func:`save_lora` writes with a
            ``layers_kwarg``; ``None`` for the model-level format (no prefix).

    Returns:
        the number of LoRA tensors checked.

    Raises:
        LoraMismatchError: unreadable file, no tensors, or tensors that fit no layer (the first few are named, each
            with what the layer needs).
    """
    file = Path(file)
    try:
        with safe_open(file, framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise LoraMismatchError(f"{file}: not a readable safetensors file ({exc})") from exc
    modules = dict(denoiser.named_modules())
    problems = [p for key, shape in sorted(shapes.items()) if (p := lora_key_problem(key, shape, modules, prefix))]
    if not shapes or problems:
        listed = "\n  ".join(problems[:8]) if problems else "the file holds no tensors"
        raise LoraMismatchError(
            f"{file} does not fit {type(denoiser).__name__}: {len(problems)} of {len(shapes)} LoRA tensors fit no "
            f"layer (a LoRA for another architecture?):\n  {listed}"
        )
    return len(shapes)


def lora_key_problem(key: str, shape: tuple[int, ...], modules: dict[str, nn.Module], prefix: str | None) -> str | None:
    """Why the tensor ``key`` of ``shape`` fits no layer in ``modules`` (name -> module), or ``None`` if it fits."""
    lead = f"{prefix}." if prefix else ""
    suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), None)
    if not key.startswith(lead) or suffix is None:
        return f"{key}: expected a key '{lead}<layer>.lora_A.weight' or '{lead}<layer>.lora_B.weight'"
    path = key[len(lead) : -len(suffix)]
    layer = modules.get(path)
    if isinstance(layer, LoraLayer):
        layer = layer.get_base_layer()
    if not isinstance(layer, ADAPTABLE_LAYERS):
        found = "no such module" if layer is None else f"a {type(layer).__name__}"
        return f"{key}: layer '{path}' is {found}, not a linear or convolution layer"
    out_dim, in_dim = layer.weight.shape[:2]
    if suffix == ".lora_A.weight" and (len(shape) < 2 or shape[1] != in_dim):
        return f"{key}: shape {list(shape)}, layer '{path}' takes {in_dim} inputs: expected [rank, {in_dim}, ...]"
    if suffix == ".lora_B.weight" and shape[0] != out_dim:
        return f"{key}: shape {list(shape)}, layer '{path}' gives {out_dim} outputs: expected [{out_dim}, rank, ...]"
    return None
