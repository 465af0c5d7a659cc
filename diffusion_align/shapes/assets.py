"""Where the shipped Shapes models live inside the installed package."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
PIPELINE_DIR = ASSETS / "pipeline"
PROXY_DIR = ASSETS / "proxy"


def shipped_pipeline_path() -> Path:
    """The shipped tiny Shapes text-to-image pipeline (``StableDiffusionPipeline`` directory, 64 x 64 images)."""
    if not (PIPELINE_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the shipped Shapes pipeline is missing: expected {PIPELINE_DIR / 'model_index.json'}; "
            "retrain it with `python -m diffusion_align.shapes.train_pipeline --out <dir>`"
        )
    return PIPELINE_DIR
