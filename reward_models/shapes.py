"""The exact reward of the Shapes world: how well a 64 x 64 image follows its prompt, measured from the pixels.

No learned weights. Each image is measured once, whatever the prompt (:func:`measure_objects`):

* **background**: per-channel median of the 2-pixel border ring;
* **object**: the largest 8-connected blob of pixels whose 3 x 3 mean lies more than :data:`OBJECT_DISTANCE`
  (RGB units) from the background (the mean keeps pixel noise out of the blob); its **colour** is the
  per-channel median of its core (its half farthest from the background); its per-pixel **coverage** ``alpha``
  in [0, 1] projects each pixel onto the background-to-colour line, so anti-aliased edges count fractionally;
* **box**: the object's extent along x (y) is the sum over columns (rows) of the largest coverage in them, its
  centre the coverage-weighted mean of those profiles. All three shapes have square boxes, so an object cut by
  the image border keeps its other axis: ``half_extent = max(width, height) / 2`` and the centre along a cut axis
  is placed ``half_extent`` from the uncut edge;
* **shape fit**: the soft IoU of the coverage with a circle, a square and an upward triangle drawn in that box.

Then each attribute of the prompt gets a soft score in [0, 1] (:class:`Ramp`: 1 up to a tolerance, linear to 0):
``background``, ``object`` (present: coverage area), ``color``, ``shape`` (the named shape fits better than the
other two and than :data:`SHAPE_IOU_FLOOR`), ``size`` (every prompt has one: no size word is medium) and
``position`` (only when the prompt names one; NaN otherwise). Colour, shape, size and position are multiplied by
the object score, so an empty image scores 0 on them. The reward is the mean of the components that apply.

Renders of the prompt itself (``diffusion_align.shapes.render``, default jitter) score about 1 (mean 0.9997
over 648 renders, min 0.96); one wrong attribute gives about 0.8 (one component of 5-6 at 0), an empty image
at most 0.2, uniform noise about 0.2. Every tolerance below is the render jitter plus a margin, and every zero
point lies before the next attribute value. Known limit: an upward triangle cut at the bottom border looks like
a smaller, uncut one (the pixels cannot tell), so large triangles at the bottom may read as a smaller size.
Measuring runs with numpy (about 2 ms per image on one core).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffusion_align.shapes.world import (
    COLORS,
    HALF_EXTENT,
    IMAGE_SIZE,
    POSITION_CENTERS,
    SHAPES,
    ShapesPrompt,
    parse_prompt,
)
from reward_models.base import Images, RewardModel, as_pil_images

BORDER_WIDTH = 2  # pixels of the border ring the background is read from
OBJECT_DISTANCE = 30.0  # RGB distance from the background above which a pixel belongs to an object
SHAPE_IOU_FLOOR = 0.75  # the named shape's template must fit better than this (noise and blobs fit worse)
TRIANGLE_SLANT_NORM = 1.25**0.5  # |(1, -1/2)|: the sides run 1 pixel across per 2 down
COMPONENTS = ("background", "object", "color", "shape", "size", "position")


@dataclass(frozen=True)
class Ramp:
    """Soft score of a deviation: 1 at or below ``full``, 0 at or above ``zero``, linear in between."""

    full: float
    zero: float

    def __call__(self, deviation: Tensor) -> Tensor:
        return ((self.zero - deviation) / (self.zero - self.full)).clamp(0.0, 1.0)


COLOR_RAMP = Ramp(28.0, 60.0)  # RGB distance; render jitter <= 21 (object), <= 14 (background); closest pair 71
AREA_RAMP = Ramp(-40.0, -8.0)  # minus the coverage area in pixels: full from 40 px (smallest render ~70 px)
SHAPE_RAMP = Ramp(-0.08, 0.0)  # minus the IoU margin of the named shape over the others and the floor
SIZE_RAMP = Ramp(0.18, 0.26)  # |log(half-extent / HALF_EXTENT)|: jitter +-15% (<= 0.16); other sizes' jitter >= 0.21
POSITION_RAMP = Ramp(6.0, 12.0)  # pixels from POSITION_CENTERS; render jitter <= 4.3; neighbours >= 17 apart


@dataclass(frozen=True)
class ObjectMeasurements:
    """What :func:`measure_objects` reads from N images; NaN where an image has no object.

    Attributes:
        background: ``[N, 3]`` RGB of the background, 0-255.
        color: ``[N, 3]`` RGB of the object, 0-255.
        area: ``[N]`` coverage area of the object, pixels (0 when there is none).
        half_extent: ``[N]`` half the side of the object's (square) box, pixels.
        center: ``[N, 2]`` centre ``(x, y)`` of the box, pixels from the top-left corner.
        shape_iou: ``[N, 3]`` soft IoU of the coverage with each of :data:`SHAPES` drawn in the box.
    """

    background: Tensor
    color: Tensor
    area: Tensor
    half_extent: Tensor
    center: Tensor
    shape_iou: Tensor


def images_to_rgb(images: Images) -> np.ndarray:
    """PIL images or ``[N, 3, H, W]`` floats in [0, 1] -> ``[N, 64, 64, 3]`` float32 RGB 0-255.

    Tensors are rounded to uint8 first (as saving them would); other sizes are resized to 64 x 64 with PIL's box
    filter (the renderer's downsampling), without keeping the aspect ratio.
    """
    arrays = []
    for image in as_pil_images(images):
        image = image.convert("RGB")
        if image.size != (IMAGE_SIZE, IMAGE_SIZE):
            image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
        arrays.append(np.asarray(image))
    if not arrays:
        raise ValueError("images: expected at least one image, got none")
    return np.stack(arrays).astype(np.float32)


def border_median(rgb: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` -> ``[N, 3]`` per-channel median of the :data:`BORDER_WIDTH`-pixel border ring."""
    ring = np.ones(rgb.shape[1:3], dtype=bool)
    ring[BORDER_WIDTH:-BORDER_WIDTH, BORDER_WIDTH:-BORDER_WIDTH] = False
    return np.median(rgb[:, ring], axis=1)


def neighbourhood(values: np.ndarray, reduce: np.ufunc) -> np.ndarray:
    """``[N, H, W]`` -> ``reduce`` (``np.maximum`` or ``np.add``) over each pixel's 3 x 3 neighbourhood, zero-padded."""
    height, width = values.shape[-2:]
    padded = np.pad(values, ((0, 0), (0, 0), (1, 1)))
    rows = reduce(reduce(padded[..., :width], padded[..., 1 : width + 1]), padded[..., 2:])
    padded = np.pad(rows, ((0, 0), (1, 1), (0, 0)))
    return reduce(reduce(padded[:, :height], padded[:, 1 : height + 1]), padded[:, 2:])


def smoothed_distance(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` RGB distance of each pixel's 3 x 3 mean (over the pixels inside the image) to the background."""
    counts = neighbourhood(np.ones(rgb.shape[:3], dtype=np.float32), np.add)[..., None]
    channels = np.stack([neighbourhood(rgb[..., c], np.add) for c in range(3)], axis=-1) / counts
    return np.linalg.norm(channels - background[:, None, None, :], axis=-1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` bool -> the largest 8-connected component of each mask (all False when a mask is empty).

    Labels start as the pixel index + 1 and every pixel takes the largest label among its 3 x 3 neighbours in the
    mask until nothing changes, so each component ends up labelled by its largest pixel index.
    """
    height, width = mask.shape[-2:]
    labels = np.arange(1, height * width + 1).reshape(1, height, width) * mask
    while True:
        spread = neighbourhood(labels, np.maximum) * mask
        if np.array_equal(spread, labels):
            break
        labels = spread
    largest = np.zeros_like(mask)
    for i in range(mask.shape[0]):
        values, counts = np.unique(labels[i][mask[i]], return_counts=True)
        if values.size:
            largest[i] = labels[i] == values[counts.argmax()]
    return largest


def core_colors(rgb: np.ndarray, distance: np.ndarray, component: np.ndarray) -> np.ndarray:
    """Per-channel median RGB ``[N, 3]`` of each component's core: its pixels at least as far from the background
    as the component's median distance (interior pixels, not anti-aliased edges). NaN for empty components."""
    colors = np.full((rgb.shape[0], 3), np.nan, dtype=np.float32)
    for i in range(rgb.shape[0]):
        if component[i].any():
            core = component[i] & (distance[i] >= np.median(distance[i][component[i]]))
            colors[i] = np.median(rgb[i][core], axis=0)
    return colors


def coverage(rgb: np.ndarray, background: np.ndarray, color: np.ndarray, component: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` object coverage in [0, 1]: each pixel's position on the background-to-object colour line,
    within the component grown by one pixel (its anti-aliased rim); 0 elsewhere and for empty components."""
    direction = (color - background)[:, None, None, :]
    length = np.maximum((direction**2).sum(-1), 1.0)
    along = ((rgb - background[:, None, None, :]) * direction).sum(-1) / length
    rim = neighbourhood(component.astype(np.float32), np.maximum)
    return np.nan_to_num(np.clip(along, 0.0, 1.0) * rim, nan=0.0)


def object_box(alpha: np.ndarray, component: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-extent ``[N]`` and centre ``[N, 2]`` (x, y) of each object's square box, from its coverage profiles.

    Along an axis where the component touches one image border the visible extent is cut: the centre is put
    ``half_extent`` from the other edge. NaN for empty images.
    """
    pixel_centers = np.arange(alpha.shape[-1], dtype=np.float32) + 0.5
    profiles = (alpha.max(axis=1), alpha.max(axis=2))  # per column (x), per row (y)
    extents = np.stack([profile.sum(-1) for profile in profiles], axis=1)  # [N, 2]
    with np.errstate(invalid="ignore"):
        visible_centers = np.stack([(p * pixel_centers).sum(-1) / p.sum(-1) for p in profiles], axis=1)
    half = extents.max(axis=1) / 2
    touches_low = np.stack([component[:, :, 0].any(-1), component[:, 0, :].any(-1)], axis=1)
    touches_high = np.stack([component[:, :, -1].any(-1), component[:, -1, :].any(-1)], axis=1)
    low_edge, high_edge = visible_centers - extents / 2, visible_centers + extents / 2
    centers = np.where(touches_low & ~touches_high, high_edge - half[:, None], visible_centers)
    centers = np.where(touches_high & ~touches_low, low_edge + half[:, None], centers)
    return np.where(extents.max(axis=1) > 0, half, np.nan), centers


def shape_templates(half: np.ndarray, center: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Coverage ``[N, 3, size, size]`` of a circle, a square and an upward triangle (:data:`SHAPES` order) drawn in
    each box as the renderer draws them, anti-aliased by signed distance: a pixel centre ``d`` pixels inside an
    edge is covered ``clamp(0.5 + d, 0, 1)``."""
    pixel_centers = np.arange(size, dtype=np.float32) + 0.5
    x = pixel_centers.reshape(1, 1, -1) - center[:, 0].reshape(-1, 1, 1)
    y = pixel_centers.reshape(1, -1, 1) - center[:, 1].reshape(-1, 1, 1)
    h = half.reshape(-1, 1, 1)
    circle = np.sqrt(x**2 + y**2) - h
    square = np.maximum(np.abs(x), np.abs(y)) - h
    slant = (np.abs(x) - (y + h) / 2) / TRIANGLE_SLANT_NORM  # distance to the sloping sides
    triangle = np.maximum(y - h, slant)
    return np.clip(0.5 - np.stack([circle, square, triangle], axis=1), 0.0, 1.0)


def measure_objects(rgb: np.ndarray) -> ObjectMeasurements:
    """Measure background, object colour, area, box and shape fit of N images (see the module docstring).

    Args:
        rgb: ``[N, 64, 64, 3]`` float RGB, 0-255.
    """
    background = border_median(rgb)
    distance = np.linalg.norm(rgb - background[:, None, None, :], axis=-1)
    component = largest_component(smoothed_distance(rgb, background) > OBJECT_DISTANCE)
    color = core_colors(rgb, distance, component)
    alpha = coverage(rgb, background, color, component)
    half, center = object_box(alpha, component)
    templates = shape_templates(np.nan_to_num(half), np.nan_to_num(center))
    overlap = np.minimum(alpha[:, None], templates).sum(axis=(-2, -1))
    union = np.maximum(np.maximum(alpha[:, None], templates).sum(axis=(-2, -1)), 1e-6)
    shape_iou = np.where(component.any(axis=(1, 2))[:, None], overlap / union, np.nan)
    fields = (background, color, alpha.sum(axis=(-2, -1)), half, center, shape_iou)
    return ObjectMeasurements(*(torch.from_numpy(np.asarray(f, dtype=np.float32)) for f in fields))


def shape_margin(shape_iou: Tensor, shape_index: Tensor) -> Tensor:
    """``[N]`` IoU of the named shape minus the best of the other two shapes' IoUs and :data:`SHAPE_IOU_FLOOR`."""
    named = shape_iou.gather(1, shape_index[:, None]).squeeze(1)
    others = shape_iou.scatter(1, shape_index[:, None], float("-inf")).amax(dim=1)
    return named - others.clamp_min(SHAPE_IOU_FLOOR)


class PixelMeasuringReward(RewardModel):
    """A reward measured from pixels with numpy against prompts of a world's grammar: no weights, CPU only.

    Subclasses give :meth:`parse_prompt` (the grammar's parser); :meth:`parse_prompts` checks and parses a batch.

    Args:
        batch_size: images (or clips) measured together when the call gives none.
        device: must be a CPU device (``diffalign score`` passes its ``device`` to every reward).
    """

    def __init__(self, batch_size: int, device: str | torch.device = "cpu") -> None:
        super().__init__(batch_size)
        if torch.device(device).type != "cpu":
            raise ValueError(f"{type(self).__name__} measures pixels on the CPU (numpy, no weights): device must be "
                             f"'cpu', got {device!r}")
        self.freeze()

    @property
    def device(self) -> torch.device:
        """The CPU, where the measuring runs."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """float32, the dtype of the measurements and scores."""
        return torch.float32

    @staticmethod
    @abstractmethod
    def parse_prompt(text: str):
        """One prompt of the world's grammar; ``ValueError`` naming the sentence otherwise."""

    def parse_prompts(self, prompts: Sequence[str] | None, n_items: int) -> list:
        """Checked prompts parsed with the world's grammar; ``ValueError`` names a prompt outside it and its index."""
        parsed = []
        for i, text in enumerate(self.check_prompts(prompts, n_items)):
            try:
                parsed.append(self.parse_prompt(text))
            except ValueError as error:
                raise ValueError(f"prompts[{i}]: {error}") from None
        return parsed


class ShapesReward(PixelMeasuringReward):
    """The exact Shapes reward: mean of per-attribute soft scores in [0, 1] (see the module docstring).

    It has no weights: images are measured with numpy on the CPU (single-threaded, which is fastest for 64 x 64
    images), so :attr:`device` is always the CPU and ``.to()`` has nothing to move.

    Args:
        batch_size: images measured together in :meth:`score` when the call gives none.
        device: must be a CPU device (``diffalign score`` passes its ``device`` to every reward).
    """

    name = "shapes"
    scale = "mean of per-attribute soft scores (background, object, colour, shape, size, position), 0-1"

    def __init__(self, batch_size: int = 64, device: str | torch.device = "cpu") -> None:
        super().__init__(batch_size, device)

    @staticmethod
    def parse_prompt(text: str) -> ShapesPrompt:
        return parse_prompt(text)

    def compare(self, measured: ObjectMeasurements, prompts: list[ShapesPrompt]) -> dict[str, Tensor]:
        """Per-component scores ``{name: [n]}`` of measured images against parsed prompts (NaN: not applicable)."""
        target_bg = torch.tensor([COLORS[p.bg] for p in prompts], dtype=torch.float32)
        target_color = torch.tensor([COLORS[p.color] for p in prompts], dtype=torch.float32)
        shape_index = torch.tensor([SHAPES.index(p.shape) for p in prompts])
        target_half = torch.tensor([HALF_EXTENT[p.size] for p in prompts])
        placed = torch.tensor([p.position is not None for p in prompts])
        target_center = torch.tensor([POSITION_CENTERS[p.position] if p.position else (float("nan"),) * 2 for p in prompts])
        present = AREA_RAMP(-measured.area)
        scores = {
            "background": COLOR_RAMP((measured.background - target_bg).norm(dim=-1)),
            "object": present,
            "color": COLOR_RAMP((measured.color - target_color).norm(dim=-1)),
            "shape": SHAPE_RAMP(-shape_margin(measured.shape_iou, shape_index)),
            "size": SIZE_RAMP((measured.half_extent / target_half).log().abs()),
            "position": POSITION_RAMP((measured.center - target_center).norm(dim=-1)),
        }
        for key in ("color", "shape", "size", "position"):
            scores[key] = torch.nan_to_num(scores[key], nan=0.0) * present
        scores["position"][~placed] = float("nan")
        return scores

    def components(
        self, images: Images, prompts: Sequence[str] | None, batch_size: int | None = None
    ) -> dict[str, Tensor]:
        """Per-component scores ``{name: [N]}`` float32 on CPU, in :data:`COMPONENTS` order.

        Each is in [0, 1]; ``position`` is NaN for prompts that name no position.
        """
        rgb = images_to_rgb(images)
        parsed = self.parse_prompts(prompts, rgb.shape[0])
        step = batch_size or self.batch_size
        parts: dict[str, list[Tensor]] = {key: [] for key in COMPONENTS}
        for start in range(0, rgb.shape[0], step):
            measured = measure_objects(rgb[start : start + step])
            for key, value in self.compare(measured, parsed[start : start + step]).items():
                parts[key].append(value)
        return {key: torch.cat(values) for key, values in parts.items()}

    def score(self, images: Images, prompts: Sequence[str] | None, batch_size: int | None = None) -> Tensor:
        """Rewards ``[N]`` in [0, 1]: the mean of the components that apply to each prompt."""
        parts = self.components(images, prompts, batch_size)
        return torch.stack([parts[key] for key in COMPONENTS], dim=1).nanmean(dim=1)

    def score_tensor(self, pixels: Tensor, prompts: Sequence[str] | None) -> Tensor:
        """Not available: medians, thresholds and connected components have no useful gradient.

        Raises:
            TypeError: always; reward fine-tuning on the Shapes world uses ``ShapesProxyReward`` (``shapes_proxy``).
        """
        raise TypeError(
            "ShapesReward has no differentiable path (medians, thresholds, connected components); use score() to "
            "evaluate, and ShapesProxyReward ('shapes_proxy') for reward fine-tuning"
        )
