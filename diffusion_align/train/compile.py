"""``trainer.compile``: ``torch.compile`` of the whole denoiser, or regional compilation of its repeated blocks.

Regional compilation (PyTorch's recipe, diffusers' ``ModelMixin.compile_repeated_blocks``) compiles each repeated
transformer block instead of the whole network: one block's graph is compiled once and reused by its siblings, so
the compile takes seconds rather than minutes, for most of the run-time gain. The blocks are the classes a diffusers
model lists in ``_repeated_blocks`` (UNet2DConditionModel, Flux, Wan, ...); for models that list none (SD3's
MMDiT, PixArt, CogVideoX in diffusers 0.42) they are the element classes of the model's block lists
(``transformer_blocks``, ``single_transformer_blocks``, ``blocks``).

The policy and the LoRA-disabled reference run the same compiled modules: peft's adapter switch is a Python flag
that dynamo guards on, so each block gets one graph with the adapters on and one with them off. A frozen or EMA
reference copy is compiled the same way (``train.loop.apply_speed_options``).

``trainer.compile_options`` (``mode``, ``dynamic``, ``fullgraph``) are passed to every ``compile`` call, those set:
``mode=reduce-overhead`` replays CUDA graphs (static shapes: a fixed batch size, ``data.loader.drop_last``),
``mode=max-autotune`` searches kernels, ``dynamic`` and ``fullgraph`` as torch.compile documents them.
"""

from __future__ import annotations

import torch
import torch._dynamo
from torch import nn

from diffusion_align.config import ConfigError

COMPILE_MODES = ("full", "regional")
# Compiled versions dynamo keeps per code object. Every repeated block shares its class's forward, so one cache holds
# the versions of every width (a UNet's levels), of grad and no-grad calls, adapters on and off, and a frozen copy's
# blocks: past dynamo's default 8 the rest would silently run eager.
RECOMPILE_LIMIT = 64
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")


def compile_mode(value) -> str | None:
    """``trainer.compile`` as a mode: ``None`` (off), ``"full"`` (also ``true``) or ``"regional"``.

    Raises:
        ConfigError: any other value.
    """
    if value is False or value is None or value == "false":
        return None
    if value is True or value == "true":
        return "full"
    if value in COMPILE_MODES:
        return value
    raise ConfigError(f"trainer.compile '{value}': expected false, true (= full) or one of {', '.join(COMPILE_MODES)}")


def compile_options(value) -> dict:
    """``trainer.compile_options`` as ``torch.compile`` keyword arguments: the ones set (not null)."""
    return {key: option for key, option in dict(value or {}).items() if option is not None}


def repeated_block_classes(denoiser: nn.Module) -> set[str]:
    """Class names of the denoiser's repeated blocks: its ``_repeated_blocks``, else its block lists' elements."""
    declared = getattr(denoiser, "_repeated_blocks", None)
    if declared:
        return set(declared)
    found = set()
    for name in BLOCK_LISTS:
        blocks = getattr(denoiser, name, None)
        if isinstance(blocks, nn.ModuleList):
            found.update(type(block).__name__ for block in blocks)
    return found


def compile_denoiser(denoiser: nn.Module, mode: str | None, options: dict | None = None) -> list[nn.Module]:
    """Compile ``denoiser`` in place (``nn.Module.compile``: parameter names and state dicts are unchanged), with
    ``options`` as torch.compile's keyword arguments.

    Returns:
        the modules compiled: the denoiser itself, or each repeated block.

    Raises:
        ValueError: regional compilation of a denoiser with no repeated blocks to find.
    """
    if mode is None:
        return []
    options = options or {}
    if mode == "full":
        denoiser.compile(**options)
        return [denoiser]
    classes = repeated_block_classes(denoiser)
    blocks = [m for m in denoiser.modules() if type(m).__name__ in classes]
    if not blocks:
        raise ValueError(f"trainer.compile=regional: {type(denoiser).__name__} declares no _repeated_blocks and has "
                         f"no block list ({', '.join(BLOCK_LISTS)}); use trainer.compile=full")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in blocks:
        block.compile(**options)
    return blocks


def use_channels_last(denoiser: nn.Module) -> None:
    """2-D convolution weights (4-D tensors) in channels-last memory format (``trainer.channels_last``); a
    convolution then computes in it and hands it on, so a UNet runs channels-last from its first layer. Each 4-D
    parameter is converted on its own: ``Module.to(memory_format=...)`` would also take 5-D weights (Wan's 3-D patch
    embedding), which the 2-D format refuses."""
    for param in denoiser.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
