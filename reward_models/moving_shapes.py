"""The exact reward of the Moving Shapes world: how well a clip follows its prompt, measured from the pixels.

No learned weights. Every frame is brought to 32 x 32 (PIL box filter when it has another size) and measured
with the image reward's steps (:mod:`reward_models.shapes`: border-median background, largest blob of pixels
far from it, anti-aliased coverage, square box, soft IoU with the three shape templates) at the native 32 px
(:func:`measure_frames`); only the object colour is read differently (:func:`object_colors`). Then, per clip:

* ``background``, ``object`` (present: coverage area), ``color`` and ``shape`` (the named shape fits better
  than the other two and than :data:`SHAPE_IOU_FLOOR`): per-frame soft scores averaged over the frames;
* ``size``: the clip's mean log half-extent against the named size (no size word is medium);
* ``direction``, ``speed``, ``consistency``: from a straight line fitted to the object's centres over the
  frames (least squares, each frame weighted by its object score, :func:`fit_line`). Direction: the fitted
  velocity points within a few degrees of the named direction (dominant axis, sign, little off-axis drift) and
  the object moves along it at all (a static object fails). Speed: the fitted px/frame against the named
  speed, on a log scale. Consistency: the object moves in a straight line at a steady speed and keeps its size
  and colour: the worst of the centres' RMS residual from the line, the spread of the log half-extent and the
  RMS drift of the colour over the frames.

Colour, shape and size are multiplied by the object score (per frame, or its mean over frames for size and the
motion components), so an empty clip scores 0 on them. The reward is the mean of the 8 components. One frame
has no motion: a one-frame clip (or a single image, :meth:`MovingShapesReward.score`) or one-frame segment
(:meth:`MovingShapesReward.segment_scores`; DenseDPO's first segment is frame 0 alone under a causal VAE) gets
NaN motion components and the mean of the other 5.

Renders of the prompt itself (``diffusion_align.moving_shapes.render``, default jitter) score about 1: mean
0.99997 over 1,000 clips (600 train, 400 held-out prompts), min 0.97, every component 1 but shape in one clip.
One wrong attribute (colour, shape, background, size, direction, speed; 150 random prompts each) puts its
component at 0 and leaves the others >= 0.91 (score about 0.875). A static object scores 0.75 (direction and
speed 0), an object changing colour or jumping 5 px mid-way loses consistency (0), shuffled frames lose
consistency and speed, an empty clip scores 0.125 (only the background is right), uniform noise about 0.13.
Pixel noise of std 0.03 (0.05) leaves renders at 0.998 (0.985-0.989), mostly through the shape fit of small
objects. Every tolerance below is the render jitter plus the measuring error on renders, and every zero point
lies before the next attribute value.

Why not upsample the frames 2x and call ``measure_objects`` as is: measured on 1,350 rendered frames, the
geometry is the same (nearest) or worse (bilinear), the shape fits are worse (IoU of the named shape 0.81-0.89
against 0.87-0.98 here, small triangles fail the floor) and it is 6x slower. Measuring takes about 0.4 ms per
frame on one core (numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffusion_align.moving_shapes.world import (
    DIRECTIONS,
    FRAME_SIZE,
    HALF_EXTENT,
    SPEED,
    MovingShapesPrompt,
    parse_prompt,
)
from diffusion_align.shapes.world import COLORS, SHAPES
from reward_models.base import Images, as_pil_images
from reward_models.shapes import (
    COLOR_RAMP,
    OBJECT_DISTANCE,
    ObjectMeasurements,
    PixelMeasuringReward,
    Ramp,
    border_median,
    coverage,
    largest_component,
    object_box,
    shape_templates,
    smoothed_distance,
)
from reward_models.video import VideoScores

COMPONENTS = ("background", "object", "color", "shape", "size", "direction", "speed", "consistency")
FRAME_COMPONENTS = COMPONENTS[:5]  # the ones a single frame has
MOTION_COMPONENTS = COMPONENTS[5:]  # NaN for a single frame
CORE_FRACTION = 0.85  # object colour: pixels at least this fraction of the farthest one's distance from bg
SHAPE_IOU_FLOOR = 0.7  # the named shape's template must fit better than this (renders >= 0.73, others < 0.82)

AREA_RAMP = Ramp(-10.0, -2.0)  # minus the coverage area in pixels: full from 10 px (smallest render ~16 px)
SHAPE_RAMP = Ramp(-0.03, 0.0)  # minus the IoU margin of the named shape over the others and the floor
SIZE_RAMP = Ramp(0.15, 0.24)  # |mean log(half-extent / HALF_EXTENT)|: renders <= 0.13, other sizes' >= 0.26
ANGLE_RAMP = Ramp(10.0, 25.0)  # degrees between the fitted velocity and the named direction: renders <= 1.5
MOVING_RAMP = Ramp(-0.3, -0.1)  # minus the speed along the named direction, px/frame: slowest render >= 0.56
SPEED_RAMP = Ramp(0.13, 0.23)  # |log(fitted speed / SPEED)|: renders <= 0.07; other speeds' renders >= 0.29
PATH_RAMP = Ramp(0.3, 0.8)  # RMS distance of the centres from the fitted line, px: renders <= 0.15
SIZE_DRIFT_RAMP = Ramp(0.06, 0.12)  # spread of the log half-extent over frames: renders <= 0.04
COLOR_DRIFT_RAMP = Ramp(8.0, 20.0)  # RMS RGB distance of the frames' colours from their mean: renders < 1

Clips = Union[Tensor, np.ndarray, Sequence[Sequence[Image.Image]]]


@dataclass(frozen=True)
class ClipMeasurements:
    """What :func:`measure_frames` reads from every frame of N clips of F frames, in pixels of a 32 px frame.

    Attributes:
        background: ``[N, F, 3]`` RGB of the background, 0-255.
        color: ``[N, F, 3]`` RGB of the object, 0-255 (NaN without an object, as all fields below but area).
        area: ``[N, F]`` coverage area of the object, pixels (0 without an object).
        half_extent: ``[N, F]`` half the side of the object's square box, pixels.
        center: ``[N, F, 2]`` centre ``(x, y)`` of the box, pixels from the top-left corner.
        shape_iou: ``[N, F, 3]`` soft IoU with each of :data:`~diffusion_align.shapes.world.SHAPES`.
    """

    background: Tensor
    color: Tensor
    area: Tensor
    half_extent: Tensor
    center: Tensor
    shape_iou: Tensor

    def frames(self, start: int, stop: int) -> ClipMeasurements:
        """The measurements of frames ``[start, stop)`` of every clip."""
        return ClipMeasurements(*(getattr(self, f.name)[:, start:stop] for f in fields(self)))


@dataclass(frozen=True)
class LineFit:
    """A straight line fitted to N clips' object centres over their frames (:func:`fit_line`).

    Attributes:
        velocity: ``[N, 2]`` slope ``(dx, dy)`` in pixels per frame (NaN where not defined).
        residual: ``[N]`` weighted RMS distance of the centres from the line, pixels (NaN where not defined).
        defined: ``[N]`` whether at least two frames with an object pin the line down.
    """

    velocity: Tensor
    residual: Tensor
    defined: Tensor


def object_colors(rgb: np.ndarray, distance: np.ndarray, component: np.ndarray) -> np.ndarray:
    """Per-channel median RGB ``[M, 3]`` of each component's pixels at least :data:`CORE_FRACTION` of its
    largest distance from the background (the fully covered pixels); NaN for empty components.

    The image reward's core (pixels beyond the component's median distance) is mostly anti-aliased rim on a
    small triangle at 32 px (about 18 px of area), which pulls its colour towards the background by up to 70
    RGB units.
    """
    colors = np.full((rgb.shape[0], 3), np.nan, dtype=np.float32)
    for i in range(rgb.shape[0]):
        if component[i].any():
            core = component[i] & (distance[i] >= CORE_FRACTION * distance[i][component[i]].max())
            colors[i] = np.median(rgb[i][core], axis=0)
    return colors


def measure_frames(rgb: np.ndarray) -> ObjectMeasurements:
    """:func:`reward_models.shapes.measure_objects` at the frames' own size ``S`` (templates drawn at S x S)
    and with :func:`object_colors`; fields as there, geometry in pixels of the S x S frame.

    Args:
        rgb: ``[M, S, S, 3]`` float RGB, 0-255.
    """
    background = border_median(rgb)
    distance = np.linalg.norm(rgb - background[:, None, None, :], axis=-1)
    component = largest_component(smoothed_distance(rgb, background) > OBJECT_DISTANCE)
    color = object_colors(rgb, distance, component)
    alpha = coverage(rgb, background, color, component)
    half, center = object_box(alpha, component)
    templates = shape_templates(np.nan_to_num(half), np.nan_to_num(center), size=rgb.shape[1])
    overlap = np.minimum(alpha[:, None], templates).sum(axis=(-2, -1))
    union = np.maximum(np.maximum(alpha[:, None], templates).sum(axis=(-2, -1)), 1e-6)
    shape_iou = np.where(component.any(axis=(1, 2))[:, None], overlap / union, np.nan)
    values = (background, color, alpha.sum(axis=(-2, -1)), half, center, shape_iou)
    return ObjectMeasurements(*(torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in values))


def frames_to_rgb(frames: Images) -> np.ndarray:
    """N frames (PIL, or ``[N, 3, H, W]`` floats in [0, 1]) -> ``[N, 32, 32, 3]`` float32 RGB 0-255.

    Tensors are rounded to uint8 first (as saving them would); other sizes are resized to 32 x 32 with PIL's
    box filter (the renderer's downsampling), without keeping the aspect ratio.
    """
    arrays = []
    for image in as_pil_images(frames):
        image = image.convert("RGB")
        if image.size != (FRAME_SIZE, FRAME_SIZE):
            image = image.resize((FRAME_SIZE, FRAME_SIZE), Image.Resampling.BOX)
        arrays.append(np.asarray(image))
    if not arrays:
        raise ValueError("frames: expected at least one frame, got none")
    return np.stack(arrays).astype(np.float32)


def clips_to_rgb(clips: Clips) -> np.ndarray:
    """N clips of F frames -> ``[N, F, 32, 32, 3]`` float32 RGB 0-255, each frame as in :func:`frames_to_rgb`.

    Args:
        clips: ``[N, F, 3, H, W]`` float tensor in [0, 1], ``[N, F, H, W, 3]`` uint8 numpy array, or N
            sequences of F PIL frames each.
    """
    if isinstance(clips, Tensor):
        if clips.ndim != 5 or clips.shape[2] != 3 or not clips.is_floating_point():
            raise ValueError(f"clips: expected a float tensor [N, F, 3, H, W] in [0, 1], got {clips.dtype} "
                             f"{tuple(clips.shape)}")
        n, f, flat = clips.shape[0], clips.shape[1], clips.flatten(0, 1)
    elif isinstance(clips, np.ndarray):
        if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
            raise ValueError(f"clips: expected a uint8 array [N, F, H, W, 3], got {clips.dtype} "
                             f"{clips.shape}")
        n, f = clips.shape[:2]
        flat = [Image.fromarray(frame) for clip in clips for frame in clip]
    else:
        nested = [list(clip) for clip in clips]
        lengths = sorted({len(clip) for clip in nested})
        if len(lengths) != 1 or lengths[0] == 0:
            raise ValueError("clips: expected N sequences of the same non-zero number of PIL frames, got "
                             f"lengths {lengths}")
        n, f, flat = len(nested), lengths[0], [frame for clip in nested for frame in clip]
    return frames_to_rgb(flat).reshape(n, f, FRAME_SIZE, FRAME_SIZE, 3)


def fit_line(center: Tensor, weight: Tensor) -> LineFit:
    """Weighted least-squares line through each clip's centres against the frame index ``t = 0 .. F-1``.

    With weighted means ``t_mean``, ``c_mean`` over frames: ``velocity = sum w (t - t_mean)(c - c_mean) /
    sum w (t - t_mean)²`` and ``residual = sqrt(sum w |c - c_mean - velocity (t - t_mean)|² / sum w)``. Frames
    with a NaN centre get weight 0.

    Args:
        center: ``[N, F, 2]`` centres ``(x, y)``, pixels.
        weight: ``[N, F]`` non-negative frame weights (each frame's object score).
    """
    weight = torch.where(center.isnan().any(dim=-1), 0.0, weight)
    center = center.nan_to_num(0.0)
    t = torch.arange(center.shape[1], dtype=center.dtype).expand_as(weight)
    total = weight.sum(dim=1).clamp_min(1e-12)
    dt = t - ((weight * t).sum(dim=1) / total)[:, None]
    dc = center - ((weight[..., None] * center).sum(dim=1) / total[:, None])[:, None]
    spread = (weight * dt**2).sum(dim=1)
    defined = ((weight > 0).sum(dim=1) >= 2) & (spread > 1e-9)
    velocity = (weight[..., None] * dt[..., None] * dc).sum(dim=1) / spread.clamp_min(1e-12)[:, None]
    miss = dc - velocity[:, None] * dt[..., None]
    residual = ((weight * (miss**2).sum(dim=-1)).sum(dim=1) / total).sqrt()
    nan = torch.tensor(float("nan"))
    return LineFit(torch.where(defined[:, None], velocity, nan), torch.where(defined, residual, nan), defined)


def weighted_mean(values: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, F, C]`` values, ``[N, F]`` weights -> weighted mean over frames ``[N, C]`` and the weights used
    ``[N, F]`` (0 where a value is NaN); the mean is NaN where no weight is left."""
    weight = torch.where(values.isnan().any(dim=-1), 0.0, weight)
    total = weight.sum(dim=1)
    mean = (weight[..., None] * values.nan_to_num(0.0)).sum(dim=1) / total[:, None]
    return torch.where(total[:, None] > 0, mean, torch.tensor(float("nan"))), weight


def weighted_spread(values: Tensor, weight: Tensor) -> Tensor:
    """``[N, F, C]`` values, ``[N, F]`` weights -> ``[N]`` weighted RMS distance of the values from their
    weighted mean (frames whose values are NaN get weight 0; NaN where no weight is left)."""
    mean, weight = weighted_mean(values, weight)
    squares = ((values - mean[:, None]) ** 2).sum(dim=-1).nan_to_num(0.0)
    return ((weight * squares).sum(dim=1) / weight.sum(dim=1)).sqrt()


def shape_margin(shape_iou: Tensor, shape_index: Tensor) -> Tensor:
    """``[...]`` IoU of the named shape (``shape_index [...]`` into ``shape_iou [..., 3]``) minus the best of
    the other two shapes' IoUs and :data:`SHAPE_IOU_FLOOR`."""
    named = shape_iou.gather(-1, shape_index[..., None]).squeeze(-1)
    others = shape_iou.scatter(-1, shape_index[..., None], float("-inf")).amax(dim=-1)
    return named - others.clamp_min(SHAPE_IOU_FLOOR)


def check_ranges(ranges: Sequence[tuple[int, int]], n_frames: int) -> list[tuple[int, int]]:
    """``[start, stop)`` frame ranges as int pairs; ``ValueError`` names a range outside ``0 .. n_frames``."""
    checked = []
    for i, frame_range in enumerate(ranges):
        start, stop = (int(v) for v in frame_range)
        if not 0 <= start < stop <= n_frames:
            raise ValueError(f"ranges[{i}] = {tuple(frame_range)}: expected [start, stop) with "
                             f"0 <= start < stop <= {n_frames} (the clips' frames)")
        checked.append((start, stop))
    if not checked:
        raise ValueError("ranges: expected at least one [start, stop) segment, got none")
    return checked


class MovingShapesReward(PixelMeasuringReward):
    """The exact Moving Shapes reward: mean of per-attribute soft scores in [0, 1] (see the module docstring).

    A :class:`~reward_models.base.RewardModel`, so ensembles, ``diffalign score`` and the evaluation's clip
    scoring take it like any reward: :meth:`score` treats each image as a one-frame clip (the frame part of
    the reward: what each frame of the clip should look like); :meth:`score_video` gives the whole clip
    reward, motion included. It has no weights: clips are measured with numpy on the CPU, so :attr:`device` is
    always the CPU.

    Args:
        batch_size: clips (for :meth:`score`: frames) measured together when the call gives none.
        device: must be a CPU device (``diffalign score`` passes its ``device`` to every reward).
    """

    name = "moving_shapes"
    scale = ("mean of per-attribute soft scores (background, object, colour, shape, size; direction, speed "
             "and consistency of the motion), 0-1")

    def __init__(self, batch_size: int = 16, device: str | torch.device = "cpu") -> None:
        super().__init__(batch_size, device)

    @staticmethod
    def parse_prompt(text: str) -> MovingShapesPrompt:
        return parse_prompt(text)

    def measure_clips(self, clips: Clips, batch_size: int | None = None) -> ClipMeasurements:
        """Measure every frame of N clips (any :func:`clips_to_rgb` input), ``batch_size`` clips per batch."""
        return self.measure_rgb(clips_to_rgb(clips), batch_size)

    def measure_rgb(self, rgb: np.ndarray, batch_size: int | None = None) -> ClipMeasurements:
        """:meth:`measure_clips` of clips converted by :func:`clips_to_rgb` (``[N, F, 32, 32, 3]``, 0-255)."""
        step = batch_size or self.batch_size
        frames = rgb.reshape(-1, *rgb.shape[2:])
        parts = [measure_frames(frames[start : start + step * rgb.shape[1]])
                 for start in range(0, len(frames), step * rgb.shape[1])]
        values = (torch.cat([getattr(part, x.name) for part in parts]) for x in fields(ObjectMeasurements))
        return ClipMeasurements(*(value.unflatten(0, rgb.shape[:2]) for value in values))

    def frame_scores(self, measured: ClipMeasurements, prompts: list[MovingShapesPrompt]
                     ) -> dict[str, Tensor]:
        """Per-frame scores ``{name: [N, F]}`` of :data:`FRAME_COMPONENTS` in [0, 1], each frame alone."""
        target_bg = torch.tensor([COLORS[p.bg] for p in prompts], dtype=torch.float32)[:, None]
        target_color = torch.tensor([COLORS[p.color] for p in prompts], dtype=torch.float32)[:, None]
        target_half = torch.tensor([HALF_EXTENT[p.size] for p in prompts])[:, None]
        shape_index = torch.tensor([SHAPES.index(p.shape) for p in prompts])[:, None].expand_as(measured.area)
        present = AREA_RAMP(-measured.area)
        scores = {
            "background": COLOR_RAMP((measured.background - target_bg).norm(dim=-1)),
            "object": present,
            "color": COLOR_RAMP((measured.color - target_color).norm(dim=-1)),
            "shape": SHAPE_RAMP(-shape_margin(measured.shape_iou, shape_index)),
            "size": SIZE_RAMP((measured.half_extent / target_half).log().abs()),
        }
        for key in ("color", "shape", "size"):
            scores[key] = scores[key].nan_to_num(0.0) * present
        return scores

    def motion_scores(self, measured: ClipMeasurements, prompts: list[MovingShapesPrompt]
                      ) -> dict[str, Tensor]:
        """``{"direction", "speed", "consistency": [N]}`` in [0, 1] from the line through the centres; NaN for
        one-frame clips (no motion)."""
        present = AREA_RAMP(-measured.area)
        if present.shape[1] < 2:
            return {key: torch.full(present.shape[:1], float("nan")) for key in MOTION_COMPONENTS}
        fit = fit_line(measured.center, present)
        unit = torch.tensor([DIRECTIONS[p.direction] for p in prompts], dtype=torch.float32)
        along = (fit.velocity * unit).sum(dim=-1)
        across = (fit.velocity[:, 0] * unit[:, 1] - fit.velocity[:, 1] * unit[:, 0]).abs()
        target_speed = torch.tensor([SPEED[p.speed] for p in prompts])
        steadiness = torch.stack([
            PATH_RAMP(fit.residual),
            SIZE_DRIFT_RAMP(weighted_spread(measured.half_extent.log()[..., None], present)),
            COLOR_DRIFT_RAMP(weighted_spread(measured.color, present)),
        ], dim=1)
        scores = {
            "direction": ANGLE_RAMP(torch.rad2deg(torch.atan2(across, along))) * MOVING_RAMP(-along),
            "speed": SPEED_RAMP((fit.velocity.norm(dim=-1) / target_speed).log().abs()),
            "consistency": steadiness.amin(dim=1),
        }
        return {key: value.nan_to_num(0.0) * present.mean(dim=1) for key, value in scores.items()}

    def compare(self, measured: ClipMeasurements, prompts: list[MovingShapesPrompt]) -> dict[str, Tensor]:
        """Clip scores ``{name: [N]}`` in :data:`COMPONENTS` order (motion: NaN for one-frame clips)."""
        per_frame = self.frame_scores(measured, prompts)
        scores = {key: per_frame[key].mean(dim=1) for key in ("background", "object", "color", "shape")}
        present = AREA_RAMP(-measured.area)
        log_half, _ = weighted_mean(measured.half_extent.log()[..., None], present)
        target_half = torch.tensor([HALF_EXTENT[p.size] for p in prompts])
        size = SIZE_RAMP((log_half[:, 0] - target_half.log()).abs())
        scores["size"] = size.nan_to_num(0.0) * present.mean(dim=1)
        return scores | self.motion_scores(measured, prompts)

    def components(self, clips: Clips, prompts: Sequence[str] | None, batch_size: int | None = None
                   ) -> dict[str, Tensor]:
        """Per-component scores ``{name: [N]}`` float32 on CPU in :data:`COMPONENTS` order, each in [0, 1]
        (the motion ones NaN for one-frame clips).

        Args:
            clips: ``[N, F, 3, H, W]`` floats in [0, 1], ``[N, F, H, W, 3]`` uint8 numpy, or N lists of F PIL
                frames.
            prompts: N Moving Shapes prompts.
            batch_size: clips measured together.
        """
        rgb = clips_to_rgb(clips)
        parsed = self.parse_prompts(prompts, len(rgb))
        return self.compare(self.measure_rgb(rgb, batch_size), parsed)

    def score_clips(self, clips: Clips, prompts: Sequence[str] | None, batch_size: int | None = None
                    ) -> Tensor:
        """Rewards ``[N]`` float32 on CPU in [0, 1]: the mean of the components that apply (8 if F >= 2)."""
        return mean_of(self.components(clips, prompts, batch_size))

    def segment_components(self, clips: Clips, prompts: Sequence[str] | None,
                           ranges: Sequence[tuple[int, int]], batch_size: int | None = None
                           ) -> dict[str, Tensor]:
        """Per-component scores ``{name: [N, S]}`` of each segment: the clip reward of its frames alone
        (one-frame segments: NaN motion components).

        Args:
            ranges: S frame ranges ``[start, stop)``, e.g. from
                :func:`diffusion_align.generate.dense.segment_frame_ranges`.
        """
        rgb = clips_to_rgb(clips)
        parsed = self.parse_prompts(prompts, len(rgb))
        measured = self.measure_rgb(rgb, batch_size)
        checked = check_ranges(ranges, rgb.shape[1])
        segments = [self.compare(measured.frames(start, stop), parsed) for start, stop in checked]
        return {key: torch.stack([segment[key] for segment in segments], dim=1) for key in COMPONENTS}

    def segment_scores(self, clips: Clips, prompts: Sequence[str] | None, ranges: Sequence[tuple[int, int]],
                       batch_size: int | None = None) -> Tensor:
        """Rewards ``[N, S]`` float32 on CPU of each segment: the mean of its components that apply, so a
        one-frame segment scores the mean of background, object, colour, shape and size only."""
        return mean_of(self.segment_components(clips, prompts, ranges, batch_size))

    def score(self, images: Images, prompts: Sequence[str] | None, batch_size: int | None = None) -> Tensor:
        """Rewards ``[N]`` of single frames, each scored as a one-frame clip of its prompt: the mean of
        background, object, colour, shape and size.

        Args:
            images: N PIL frames or ``[N, 3, H, W]`` floats in [0, 1].
            prompts: N Moving Shapes prompts (a frame is scored against its clip's prompt).
            batch_size: frames measured together.
        """
        rgb = frames_to_rgb(images)[:, None]
        parsed = self.parse_prompts(prompts, len(rgb))
        return mean_of(self.compare(self.measure_rgb(rgb, batch_size), parsed))

    def score_video(self, frames: Tensor | Sequence[Sequence[Image.Image]], prompts: Sequence[str] | None,
                    aggregate: str = "mean", batch_size: int | None = None) -> VideoScores:
        """The clip reward, motion included: ``VideoScores(scores [N], per_frame [N, F])``.

        Unlike image rewards, whose clip score aggregates independent frame scores, ``scores`` is
        :meth:`score_clips`; ``per_frame`` is what :meth:`score` gives each frame.

        Args:
            frames: ``[N, F, 3, H, W]`` floats in [0, 1], or N lists of F PIL frames.
            prompts: one Moving Shapes prompt per clip.
            aggregate: must be ``"mean"`` (the frame components are averaged over frames).
            batch_size: clips measured together.
        """
        if aggregate != "mean":
            raise ValueError(f"aggregate {aggregate!r}: MovingShapesReward scores whole clips (frame "
                             "components averaged over frames, plus motion): only 'mean' is defined")
        rgb = clips_to_rgb(frames)
        parsed = self.parse_prompts(prompts, len(rgb))
        measured = self.measure_rgb(rgb, batch_size)
        per_frame = torch.stack(list(self.frame_scores(measured, parsed).values()), dim=-1).mean(dim=-1)
        return VideoScores(mean_of(self.compare(measured, parsed)), per_frame)

    def score_tensor(self, pixels: Tensor, prompts: Sequence[str] | None) -> Tensor:
        """Not available: medians, thresholds and connected components have no useful gradient.

        Raises:
            TypeError: always.
        """
        raise TypeError("MovingShapesReward has no differentiable path (medians, thresholds, connected "
                        "components); use score_clips() or segment_scores() to evaluate")


def mean_of(components: dict[str, Tensor]) -> Tensor:
    """The reward from per-component scores ``{name: [...]}``: their mean over the components that apply."""
    return torch.stack([components[key] for key in COMPONENTS], dim=-1).nanmean(dim=-1)
