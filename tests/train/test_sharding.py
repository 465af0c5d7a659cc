"""diffusion_align.train.sharding without processes: the main process's plain copy of a denoiser (what FSDP2 runs
save and sample from) is the same model, for every family, LoRA or not. On unsharded tensors the gathering is the
identity, so any difference is the copy's own (its construction on the meta device, buffers, adapters, dtypes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    CogVideoXTransformer3DModel,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    WanTransformer3DModel,
)

from diffusion_align.adapters.dit import PixArtLoraTransformer2DModel
from diffusion_align.adapters.lora import add_lora
from diffusion_align.train.sharding import unsharded_copy

DENOISERS = {"sd15": (UNet2DConditionModel, "unet"), "sdxl": (UNet2DConditionModel, "unet"),
             "sd3": (SD3Transformer2DModel, "transformer"), "flux": (FluxTransformer2DModel, "transformer"),
             "pixart": (PixArtLoraTransformer2DModel, "transformer"), "wan": (WanTransformer3DModel, "transformer"),
             "cogvideox": (CogVideoXTransformer3DModel, "transformer")}
MAIN = SimpleNamespace(is_main_process=True, device=torch.device("cpu"))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("family", list(DENOISERS))
def test_unsharded_copy_is_the_same_model(family, lora, request):
    cls, subfolder = DENOISERS[family]
    denoiser = cls.from_pretrained(request.getfixturevalue(f"tiny_{family}_path"), subfolder=subfolder)
    if lora:
        add_lora(denoiser, rank=4)
        with torch.no_grad():  # LoRA's up-weights start at zero: give them values a lost copy would not have
            for name, param in denoiser.named_parameters():
                if "lora_B" in name:
                    param.normal_()
    else:
        denoiser.requires_grad_(True)
    first = next(denoiser.parameters())
    with torch.no_grad():
        first.data = first.data.to(torch.bfloat16)  # a mixed-precision model keeps each tensor's dtype

    copy = unsharded_copy(MAIN, denoiser)

    assert type(copy) is type(denoiser) and not copy.training
    original, copied = dict(denoiser.named_parameters()), dict(copy.named_parameters())
    assert original.keys() == copied.keys()
    for name, param in original.items():
        assert copied[name].dtype == param.dtype and copied[name].requires_grad == param.requires_grad, name
        assert torch.equal(copied[name], param) and copied[name].data_ptr() != param.data_ptr(), name
    buffers, copied_buffers = dict(denoiser.named_buffers()), dict(copy.named_buffers())
    assert buffers.keys() == copied_buffers.keys()  # the non-persistent ones (rotary tables) included
    for name, buffer in buffers.items():
        assert torch.equal(copied_buffers[name], buffer) and copied_buffers[name].data_ptr() != buffer.data_ptr()
    assert getattr(copy, "peft_config", {}).keys() == getattr(denoiser, "peft_config", {}).keys()


def test_other_processes_get_no_copy(tiny_sd15_path):
    denoiser = UNet2DConditionModel.from_pretrained(tiny_sd15_path, subfolder="unet")
    assert unsharded_copy(SimpleNamespace(is_main_process=False, device=torch.device("cpu")), denoiser) is None
