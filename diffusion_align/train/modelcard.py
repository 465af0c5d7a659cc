"""A model card (README.md) next to the trained weights: what was trained, how, and how to load it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffusion_align.train.checkpoint import LoopState

_LOAD_LORA = """```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{base}")
pipe.load_lora_weights("{out}")
```"""

_LOAD_FULL = """```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{out}/pipeline")
```"""


def write_model_card(out_dir: Path, cfg: DictConfig, state: LoopState) -> Path:
    """Write ``out_dir/README.md`` with the base model, method, loss constants, steps and a loading snippet."""
    model, method = cfg.model, cfg.method
    lora = model.finetune.mode == "lora"
    loss_params = {k: v for k, v in OmegaConf.to_container(method.loss, resolve=True).items() if not k.startswith("_")}
    snippet = (_LOAD_LORA if lora else _LOAD_FULL).format(base=model.adapter.path, out=out_dir)
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
    path.write_text(text, encoding="utf-8")
    return path
