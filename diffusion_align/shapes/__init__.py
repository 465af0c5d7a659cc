"""The Shapes world: a tiny text-to-image world with an exact reward, so alignment can be measured on a CPU.

* :mod:`~diffusion_align.shapes.world`: the prompt grammar, colours, geometry and the train / held-out split.
* :mod:`~diffusion_align.shapes.render`: the procedural renderer (ground truth and training data).
* :mod:`~diffusion_align.shapes.train_pipeline`: trains the shipped ``StableDiffusionPipeline``.
* :mod:`~diffusion_align.shapes.proxy`: trains the shipped proxy reward (a tiny open_clip model).
* ``diffalign demo`` (:mod:`diffusion_align.demo`): the whole loop in this world: generate, rank, align, evaluate.

Rewards: ``reward_models.ShapesReward`` (exact, from pixels) and ``reward_models.ShapesProxyReward`` (learned).
"""

from diffusion_align.shapes.assets import PIPELINE_DIR, PROXY_DIR, shipped_pipeline_path
from diffusion_align.shapes.render import Jitter, render, render_batch
from diffusion_align.shapes.world import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesPrompt,
    all_prompts,
    held_out_combinations,
    parse_prompt,
    split_prompts,
)

__all__ = [
    "COLORS",
    "PIPELINE_DIR",
    "POSITIONS",
    "PROXY_DIR",
    "SHAPES",
    "SIZES",
    "Jitter",
    "ShapesPrompt",
    "all_prompts",
    "held_out_combinations",
    "parse_prompt",
    "render",
    "render_batch",
    "shipped_pipeline_path",
    "split_prompts",
]
