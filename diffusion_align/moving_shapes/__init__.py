"""The Moving Shapes world: a tiny text-to-video world with an exact reward, for measuring video alignment.

* :mod:`~diffusion_align.moving_shapes.world`: the prompt grammar, motion constants and the train / held-out
  split (the image Shapes world's held-out combinations).
* :mod:`~diffusion_align.moving_shapes.render`: the procedural clip renderer (ground truth and training data).
* :mod:`~diffusion_align.moving_shapes.train_pipeline`: trains the shipped ``WanPipeline``.
* ``diffalign demo world=moving_shapes`` (:mod:`diffusion_align.demo`): the whole loop for video: Flow-DPO or
  DenseDPO on proxy-labelled clips, judged by the exact video reward.

Rewards: ``reward_models.MovingShapesReward`` (exact, from pixels; per clip and per segment) and
``reward_models.MovingShapesFrameProxyReward`` (the image world's learned proxy on each frame; motion-blind).
"""

from diffusion_align.moving_shapes.render import (
    NO_CLIP_JITTER,
    ClipJitter,
    render_clip,
    render_clips,
    trajectory,
)
from diffusion_align.moving_shapes.world import (
    DIRECTIONS,
    FRAME_SIZE,
    FRAMES,
    SPEEDS,
    MovingShapesPrompt,
    all_prompts,
    parse_prompt,
    split_prompts,
)

__all__ = [
    "DIRECTIONS",
    "FRAMES",
    "FRAME_SIZE",
    "NO_CLIP_JITTER",
    "SPEEDS",
    "ClipJitter",
    "MovingShapesPrompt",
    "all_prompts",
    "parse_prompt",
    "render_clip",
    "render_clips",
    "split_prompts",
    "trajectory",
]
