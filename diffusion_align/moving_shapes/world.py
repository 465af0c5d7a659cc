"""The Moving Shapes world: the video counterpart of the Shapes world (grammar, motion constants, split).

Prompts follow exactly ``a [small |large ]{color} {shape} moving {direction}[ {speed}] on a {bg} background``,
with the Shapes world's colours and shapes (:mod:`diffusion_align.shapes.world`), directions ``left``,
``right``, ``up``, ``down`` and speeds ``slowly``, ``quickly``; no speed word is medium speed, as no size word
is medium size.

A clip is :data:`FRAMES` = 9 frames of :data:`FRAME_SIZE` = 32 x 32 RGB, i.e. 8 steps of motion. Nine, not
eight: the video architectures trained on this world (Wan 2.1, CogVideoX) have causal VAEs that need 4k + 1
frames (frame 0 is encoded alone, then 4 frames per latent frame) and the stock ``WanPipeline`` rounds other
counts. Nothing else assumes 9: the renderer takes any number of frames >= 2 whose path fits in the
frame (at most 9 for large objects moving quickly), the reward any number >= 1.

Geometry is in pixels of a 32 x 32 frame, origin at the top-left corner; speeds in pixels per frame. Sizes and
speeds are chosen so that every combination stays fully inside the frame for all 9 frames, and neighbouring
values stay apart under the render jitter (``diffusion_align.moving_shapes.render.ClipJitter``):

* half-extents 3 / 4.5 / 6.5 px: log-ratios of neighbours 0.41 and 0.37; with +-6% size jitter the closest
  jittered neighbours are still 0.25 apart in log (the reward's size tolerance:
  ``reward_models.moving_shapes``);
* speeds 0.6 / 1.2 / 1.8 px/frame: log-ratios 0.69 and 0.41; with +-5% speed jitter still 0.31 apart in log;
* the longest path (large, quickly, +6% size, +5% speed) needs 2 x (6.89 + 1) + 15.12 = 30.9 px <= 32, with
  :data:`EDGE_MARGIN` = 1 px kept free between the object's box and the frame edge in every frame.

The train / held-out split is the image world's: the held-out (colour, shape, background) combinations are
:func:`diffusion_align.shapes.world.held_out_combinations`, so "held out" means the same in both worlds.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from diffusion_align.shapes.world import COLORS, SHAPES, SIZES, ShapesPrompt, held_out_combinations

FRAMES = 9
FRAME_SIZE = 32
# Unit displacement (x, y) of each direction word; y grows downwards.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
SPEEDS = ("slowly", "quickly")  # no speed word: medium
SPEED = {"slowly": 0.6, None: 1.2, "quickly": 1.8}  # pixels per frame, before jitter
HALF_EXTENT = {"small": 3.0, None: 4.5, "large": 6.5}  # centre to the edge of the bounding box, pixels
EDGE_MARGIN = 1.0  # pixels kept free between the object's box and the frame edge in every frame

GRAMMAR = "'a [small |large ]{color} {shape} moving {direction}[ {speed}] on a {bg} background'"
_PROMPT_RE = re.compile(
    r"^a (?:(?P<size>small|large) )?(?P<color>[a-z]+) (?P<shape>[a-z]+) moving (?P<direction>[a-z]+)"
    r"(?: (?P<speed>slowly|quickly))? on a (?P<bg>[a-z]+) background$"
)


@dataclass(frozen=True, order=True)
class MovingShapesPrompt:
    """One prompt of the grammar; ``size`` and ``speed`` are ``None`` when the prompt leaves them out."""

    color: str
    shape: str
    bg: str
    direction: str
    size: str | None = None
    speed: str | None = None

    def __post_init__(self) -> None:
        checks = (
            ("color", self.color, COLORS),
            ("shape", self.shape, SHAPES),
            ("bg", self.bg, COLORS),
            ("direction", self.direction, DIRECTIONS),
            ("size", self.size, (None, *SIZES)),
            ("speed", self.speed, (None, *SPEEDS)),
        )
        for field, value, allowed in checks:
            if value not in allowed:
                expected = sorted(map(str, allowed))
                raise ValueError(f"Moving Shapes prompt field {field}={value!r}: expected one of {expected}")
        if self.color == self.bg:
            raise ValueError(
                f"Moving Shapes prompt: object colour and background colour are both {self.color!r}"
            )

    @property
    def text(self) -> str:
        """The prompt sentence."""
        size = f"{self.size} " if self.size else ""
        speed = f" {self.speed}" if self.speed else ""
        return f"a {size}{self.color} {self.shape} moving {self.direction}{speed} on a {self.bg} background"

    @property
    def combination(self) -> tuple[str, str, str]:
        """(colour, shape, background): the unit of the train / held-out split, as in the image world."""
        return (self.color, self.shape, self.bg)

    @property
    def image_prompt(self) -> ShapesPrompt:
        """The image world's prompt of a frame: same colour, shape, background and size word, no position."""
        return ShapesPrompt(self.color, self.shape, self.bg, self.size)


def parse_prompt(text: str) -> MovingShapesPrompt:
    """Parse a sentence of the grammar; ``ValueError`` naming the sentence and the grammar if not one."""
    match = _PROMPT_RE.match(text.strip())
    if match is None:
        raise ValueError(f"not a Moving Shapes prompt: {text!r}; expected {GRAMMAR}")
    try:
        return MovingShapesPrompt(**match.groupdict())
    except ValueError as error:
        raise ValueError(f"not a Moving Shapes prompt: {text!r}: {error}") from None


def all_prompts() -> list[MovingShapesPrompt]:
    """All prompts of the grammar (168 combinations x 3 sizes x 4 directions x 3 speeds = 6,048), in order."""
    prompts = []
    for color, shape, bg in itertools.product(COLORS, SHAPES, COLORS):
        if color == bg:
            continue
        for size, direction, speed in itertools.product((None, *SIZES), DIRECTIONS, (None, *SPEEDS)):
            prompts.append(MovingShapesPrompt(color, shape, bg, direction, size, speed))
    return prompts


def split_prompts(split: str) -> list[MovingShapesPrompt]:
    """``"train"`` or ``"held_out"`` prompts; held-out ones have the image world's held-out combinations."""
    held = held_out_combinations()
    if split == "train":
        return [p for p in all_prompts() if p.combination not in held]
    if split == "held_out":
        return [p for p in all_prompts() if p.combination in held]
    raise ValueError(f"Moving Shapes split {split!r}: expected 'train' or 'held_out'")
