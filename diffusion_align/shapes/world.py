"""The Shapes world: its prompt grammar, attribute values and the train / held-out split.

Prompts follow exactly ``a [small |large ]{color} {shape}[ {position}] on a {bg} background``. Every attribute
value, RGB colour and geometric constant of the world lives here, shared by the renderer (training data), the
exact reward (``reward_models.shapes``) and the demo, so the three cannot drift apart.

Geometry is in pixels of a 64 x 64 image, origin at the top-left corner.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass

IMAGE_SIZE = 64
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")  # no size word: medium
POSITIONS = ("at the left", "at the right", "at the top", "at the bottom", "in the center")

# Half-extent of the object (centre to the edge of its bounding box), pixels, before jitter.
HALF_EXTENT = {"small": 7.0, None: 11.0, "large": 16.0}
# Object centre (x, y) of each position word; the free coordinate of left/right/top/bottom is the middle.
CENTER = IMAGE_SIZE / 2
OFFSET = 17.0
POSITION_CENTERS = {
    "at the left": (CENTER - OFFSET, CENTER),
    "at the right": (CENTER + OFFSET, CENTER),
    "at the top": (CENTER, CENTER - OFFSET),
    "at the bottom": (CENTER, CENTER + OFFSET),
    "in the center": (CENTER, CENTER),
}

_PROMPT_RE = re.compile(
    r"^a (?:(?P<size>small|large) )?(?P<color>[a-z]+) (?P<shape>[a-z]+)"
    r"(?: (?P<position>at the left|at the right|at the top|at the bottom|in the center))?"
    r" on a (?P<bg>[a-z]+) background$"
)


@dataclass(frozen=True, order=True)
class ShapesPrompt:
    """One prompt of the grammar; ``size`` and ``position`` are ``None`` when the prompt leaves them out."""

    color: str
    shape: str
    bg: str
    size: str | None = None
    position: str | None = None

    def __post_init__(self) -> None:
        checks = (
            ("color", self.color, COLORS),
            ("shape", self.shape, SHAPES),
            ("bg", self.bg, COLORS),
            ("size", self.size, (None, *SIZES)),
            ("position", self.position, (None, *POSITIONS)),
        )
        for field, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"Shapes prompt field {field}={value!r}: expected one of {sorted(map(str, allowed))}")
        if self.color == self.bg:
            raise ValueError(f"Shapes prompt: object colour and background colour are both {self.color!r}")

    @property
    def text(self) -> str:
        """The prompt sentence."""
        size = f"{self.size} " if self.size else ""
        position = f" {self.position}" if self.position else ""
        return f"a {size}{self.color} {self.shape}{position} on a {self.bg} background"

    @property
    def combination(self) -> tuple[str, str, str]:
        """(colour, shape, background): the unit of the train / held-out split."""
        return (self.color, self.shape, self.bg)


def parse_prompt(text: str) -> ShapesPrompt:
    """Parse a sentence of the grammar; raises ``ValueError`` naming the sentence if it is not one."""
    match = _PROMPT_RE.match(text.strip())
    if match is None:
        raise ValueError(
            f"not a Shapes prompt: {text!r}; expected 'a [small |large ]{{color}} {{shape}}[ {{position}}] "
            "on a {bg} background'"
        )
    try:
        return ShapesPrompt(**match.groupdict())
    except ValueError as error:
        raise ValueError(f"not a Shapes prompt: {text!r}: {error}") from None


def all_prompts() -> list[ShapesPrompt]:
    """Every prompt of the grammar (3,024), in a fixed order."""
    prompts = []
    for color, shape, bg in itertools.product(COLORS, SHAPES, COLORS):
        if color == bg:
            continue
        for size, position in itertools.product((None, *SIZES), (None, *POSITIONS)):
            prompts.append(ShapesPrompt(color, shape, bg, size, position))
    return prompts


def _combination_rank(combination: tuple[str, str, str]) -> str:
    return hashlib.sha256("|".join(combination).encode()).hexdigest()


def held_out_combinations(count: int = 18) -> frozenset[tuple[str, str, str]]:
    """The (colour, shape, background) combinations never shown in training.

    Chosen by a fixed hash order, skipping any combination whose removal would leave some colour-shape,
    colour-background or shape-background pair without training examples, so every held-out prompt is a new
    composition of parts the model has seen together pairwise.
    """
    combinations = sorted({p.combination for p in all_prompts()}, key=_combination_rank)
    remaining = set(combinations)
    held: set[tuple[str, str, str]] = set()
    for combination in combinations:
        if len(held) == count:
            break
        trial = remaining - {combination}
        color, shape, bg = combination
        if (
            any(c == color and s == shape for c, s, _ in trial)
            and any(c == color and b == bg for c, _, b in trial)
            and any(s == shape and b == bg for _, s, b in trial)
        ):
            held.add(combination)
            remaining = trial
    return frozenset(held)


def split_prompts(split: str) -> list[ShapesPrompt]:
    """``"train"`` or ``"held_out"`` prompts; held-out prompts use only held-out combinations."""
    held = held_out_combinations()
    if split == "train":
        return [p for p in all_prompts() if p.combination not in held]
    if split == "held_out":
        return [p for p in all_prompts() if p.combination in held]
    raise ValueError(f"Shapes split {split!r}: expected 'train' or 'held_out'")
