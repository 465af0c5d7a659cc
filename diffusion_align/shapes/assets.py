"""Where the shipped Shapes models live inside the installed package."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
PIPELINE_DIR = ASSETS / "pipeline"
PROXY_DIR = ASSETS / "proxy"


def require_pipeline_dir(directory: Path, what: str, retrain: str) -> Path:
    """``directory`` if it holds a diffusers pipeline (``model_index.json``), else an error saying how to retrain."""
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the shipped {what} is missing: expected {directory / 'model_index.json'}; retrain it with `{retrain}`"
        )
    return directory


def shipped_pipeline_path() -> Path:
    """The shipped tiny Shapes text-to-image pipeline (``StableDiffusionPipeline`` directory, 64 x 64 images)."""
    return require_pipeline_dir(
        PIPELINE_DIR, "Shapes pipeline", "python -m diffusion_align.shapes.train_pipeline --out <dir>"
    )
