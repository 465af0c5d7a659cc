"""A model card (README.md) next to the trained weights: what was trained, how, and how to load it."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffusion_align.train.checkpoint import LoopState

_LOAD_LORA = """```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{base}")
pipe.load_lora_weights("{out}")
```"""

_LOAD_MODEL_LORA = """```python
from diffusers import DiffusionPipeline
from {module} import {cls}

transformer = {cls}.from_pretrained("{base}", subfolder="transformer")
transformer.load_lora_adapter("{out}", weight_name="pytorch_lora_weights.safetensors", prefix=None)
pipe = DiffusionPipeline.from_pretrained("{base}", transformer=transformer)
```"""

_LOAD_FULL = """```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{out}/pipeline")
```"""


def loading_snippet(adapter, cfg: DictConfig, out_dir: Path) -> str:
    """How to load the result: the pipeline's ``load_lora_weights``, the transformer's ``load_lora_adapter`` for
    pipelines without a LoRA loader (PixArt), or the saved pipeline of a full fine-tune."""
    base = cfg.model.adapter.path
    if cfg.model.finetune.mode != "lora":
        return _LOAD_FULL.format(out=out_dir)
    if adapter.lora_layers_kwarg is None:
        cls = type(adapter.denoiser)
        return _LOAD_MODEL_LORA.format(module=cls.__module__, cls=cls.__name__, base=base, out=out_dir)
    snippet = _LOAD_LORA.format(base=base, out=out_dir)
    if cfg.model.finetune.get("kohya_copy", False):
        snippet += ("\n\nFor AUTOMATIC1111, ComfyUI, SD.Next or InvokeAI, use `lora_kohya.safetensors` (the same LoRA "
                    "under kohya's key names, each layer's alpha included).")
    return snippet


def write_model_card(out_dir: Path, cfg: DictConfig, state: LoopState, adapter) -> Path:
    """Write ``out_dir/README.md`` with the base model, method, loss constants, steps and a loading snippet."""
    model, method = cfg.model, cfg.method
    lora = model.finetune.mode == "lora"
    loss_params = {k: v for k, v in OmegaConf.to_container(method.loss, resolve=True).items() if not k.startswith("_")}
    snippet = loading_snippet(adapter, cfg, out_dir)
    tags = ["diffusers", "diffusion-align", method.name, "lora" if lora else "full-finetune"]
    text = "\n".join(
        [
            "---",
            f"base_model: {model.adapter.path}",
            "library_name: diffusers",
            "tags:",
            *[f"- {t}" for t in tags],
            "---",
            "",
            f"# {method.name} on {model.adapter.path}",
            "",
            f"Trained with diffusion-align: method `{method.name}` (loss `{method.loss._target_}`, "
            f"parameters {loss_params}), {'LoRA rank ' + str(model.finetune.rank) if lora else 'full fine-tune'}, "
            f"{state.step} optimizer steps, seed {cfg.seed}, mixed precision `{cfg.trainer.mixed_precision}`.",
            f"Non-finite steps skipped: {state.skipped_nonfinite}.",
            "",
            "## Load",
            "",
            snippet,
            "",
        ]
    )
    path = out_dir / "README.md"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a kill never leaves a half-written card
    return path
