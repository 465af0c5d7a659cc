"""The Moving Shapes world's per-frame proxy: the image world's learned proxy scoring each frame of a clip.

It plays the part a per-frame image reward model (PickScore, HPSv2 applied frame by frame) plays for real video
alignment: it judges what a single frame shows (colour, shape, background, size) and is blind to motion. Each
video prompt ``a [size ]{color} {shape} moving {direction}[ {speed}] on a {bg} background`` is turned into the
frame's image prompt ``a [size ]{color} {shape} on a {bg} background`` (the image world's grammar without a
position, :attr:`~diffusion_align.moving_shapes.world.MovingShapesPrompt.image_prompt`); the 32 px frames are
resized to the proxy's 64 px by its own preprocessing. The video pipelines of the generator and the evaluator
aggregate the frame scores (mean by default).
"""

from __future__ import annotations

from torch import Tensor

from diffusion_align.moving_shapes.world import parse_prompt
from reward_models.shapes_proxy import ShapesProxyReward


def frame_prompt(text: str) -> str:
    """The image world's prompt of a frame of a clip of ``text``; ``ValueError`` naming ``text`` if off-grammar."""
    return parse_prompt(text).image_prompt.text


class MovingShapesFrameProxyReward(ShapesProxyReward):
    """The Shapes proxy on single frames of Moving Shapes clips, prompted with each clip's frame prompt.

    Arguments as :class:`~reward_models.shapes_proxy.ShapesProxyReward` (``directory=None``: the shipped image
    proxy). Scale: the image proxy's (``logit_scale × cosine``, ≈ 38 × cosine).
    """

    name = "moving_shapes_frame_proxy"

    def text_embeddings(self, prompts: list[str]) -> Tensor:
        return super().text_embeddings([frame_prompt(text) for text in prompts])
