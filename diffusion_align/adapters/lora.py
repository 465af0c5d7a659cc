"""LoRA through peft, saved in the stock diffusers format.

Adapters are injected with diffusers' ``add_adapter`` (no peft wrapper module, so state-dict keys carry no wrapper
prefix), and saved with the pipeline's own ``save_lora_weights`` as ``pytorch_lora_weights.safetensors`` (peft keys
under the ``unet.`` / ``transformer.`` prefix, the LoraConfig as metadata): the file
``pipe.load_lora_weights(dir)`` reads. A wrapper prefix would make that load a silent no-op (flow_grpo#87); the tests
load the file into a fresh pipeline and check the output changes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


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
    if layers_kwarg is None:
        denoiser.save_lora_adapter(str(directory), weight_name=LORA_WEIGHT_NAME)
    else:
        metadata_kwarg = layers_kwarg.replace("_lora_layers", "_lora_adapter_metadata")
        type(pipeline).save_lora_weights(
            str(directory),
            **{layers_kwarg: lora_state_dict(denoiser), metadata_kwarg: denoiser.peft_config["default"].to_dict()},
        )
    return directory / LORA_WEIGHT_NAME
