"""Where the shipped Moving Shapes model lives inside the installed package."""

from __future__ import annotations

from pathlib import Path

from diffusion_align.shapes.assets import require_pipeline_dir

ASSETS = Path(__file__).resolve().parent / "assets"
PIPELINE_DIR = ASSETS / "pipeline"


def shipped_pipeline_path() -> Path:
    """The shipped tiny Moving Shapes text-to-video pipeline (``WanPipeline`` directory, 9 frames of 32 x 32)."""
    return require_pipeline_dir(
        PIPELINE_DIR, "Moving Shapes pipeline", "python -m diffusion_align.moving_shapes.train_pipeline --out <dir>"
    )
