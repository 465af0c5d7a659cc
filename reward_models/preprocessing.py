"""CLIP image preprocessing: the reference constants, and the same steps as differentiable torch ops.

Every reward model here is CLIP-based and preprocesses alike: resize the shortest side to 224 with bicubic
interpolation, center-crop 224×224, scale to [0, 1], normalise with OpenAI CLIP's mean/std. The reference code
does this on uint8 images (transformers' CLIP image processor; open_clip's ``preprocess_val`` on PIL); the
functions below do the same on float tensors so that gradients reach the pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # per-channel RGB mean of OpenAI CLIP's training images
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIL_RESAMPLE_NAMES = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling codes we can mirror
PIL_FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}  # kernel radius in input pixels at scale 1
PIL_BICUBIC_A = -0.5  # PIL's cubic-convolution parameter (torchvision's antialiased resize uses it too)


@dataclass(frozen=True)
class ClipPreprocessing:
    """What a CLIP image preprocessor does, as plain constants.

    Attributes:
        resize_shortest: target length of the shortest side, pixels (224 for every model here).
        crop_size: side of the square center crop, pixels.
        interpolation: ``"bicubic"`` (all references) or ``"bilinear"``, with PIL's kernels.
        mean: per-channel RGB mean subtracted after scaling to [0, 1].
        std: per-channel RGB standard deviation divided by after subtracting ``mean``.
        crop_offset: how the crop's top/left offset is rounded: ``"floor"`` (transformers) or ``"round"``
            (torchvision's ``CenterCrop``, used by open_clip). They differ by one pixel for some odd margins.
    """

    resize_shortest: int
    crop_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_offset: Literal["floor", "round"] = "floor"

    @classmethod
    def from_hf_image_processor(cls, processor: Any, source: str) -> ClipPreprocessing:
        """Read the constants of a transformers CLIP image processor; ``source`` names it in errors."""
        if processor.size.shortest_edge is None or processor.crop_size.height != processor.crop_size.width:
            raise ValueError(
                f"{source}: expected an image processor resizing the shortest edge and center-cropping a square; "
                f"got size={processor.size}, crop_size={processor.crop_size}"
            )
        flags = {name: getattr(processor, name) for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize")}
        if not all(flags.values()):
            raise ValueError(f"{source}: expected resize, center crop, rescale and normalize all on; got {flags}")
        resample = int(processor.resample)
        if resample not in PIL_RESAMPLE_NAMES:
            raise ValueError(f"{source}: resample={resample} is not one of {PIL_RESAMPLE_NAMES}")
        return cls(
            resize_shortest=processor.size.shortest_edge,
            crop_size=processor.crop_size.height,
            interpolation=PIL_RESAMPLE_NAMES[resample],
            mean=tuple(float(m) for m in processor.image_mean),
            std=tuple(float(s) for s in processor.image_std),
            crop_offset="floor",
        )

    @classmethod
    def from_open_clip_cfg(cls, cfg: Mapping[str, Any], source: str) -> ClipPreprocessing:
        """Read open_clip's ``model.visual.preprocess_cfg`` (its ``preprocess_val``); ``source`` names it in errors."""
        size = cfg["size"]
        side = size if isinstance(size, int) else size[0]
        if not isinstance(size, int) and size[0] != size[1]:
            raise ValueError(f"{source}: expected a square image size, got {size}")
        if cfg["resize_mode"] != "shortest" or cfg["interpolation"] not in PIL_RESAMPLE_NAMES.values():
            raise ValueError(
                f"{source}: expected resize_mode='shortest' and interpolation in {sorted(PIL_RESAMPLE_NAMES.values())}; "
                f"got {cfg['resize_mode']!r}, {cfg['interpolation']!r}"
            )
        return cls(
            resize_shortest=side,
            crop_size=side,
            interpolation=cfg["interpolation"],
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
            crop_offset="round",
        )


def resized_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """``(height, width)`` after resizing the shortest side to ``shortest``, long side truncated as the references do."""
    if height <= width:
        return shortest, int(shortest * width / height)
    return int(shortest * height / width), shortest


def crop_offset(length: int, crop: int, rounding: str) -> int:
    """Top/left offset of a centered crop of ``crop`` pixels out of ``length``."""
    margin = (length - crop) / 2.0
    return int(round(margin)) if rounding == "round" else int(margin)


def pil_filter(x: Tensor, interpolation: str) -> Tensor:
    """PIL's resampling kernels: triangle (bilinear) or Keys cubic with ``a = -0.5`` (bicubic)."""
    x = x.abs()
    if interpolation == "bilinear":
        return (1 - x).clamp_min(0)
    a = PIL_BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


@functools.lru_cache(maxsize=64)
def pil_resize_matrix(in_size: int, out_size: int, interpolation: str) -> Tensor:
    """``[out_size, in_size]`` float64 weights of PIL's antialiased resize along one axis.

    Follows PIL's ``precompute_coeffs``: output pixel ``i`` is centred at ``(i + 0.5) · scale`` in the input; when
    shrinking, the kernel is stretched by ``scale`` (antialiasing); taps outside the image are dropped and each
    row is renormalised to sum to 1.
    """
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = PIL_FILTER_SUPPORT[interpolation] * stretch
    centers = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    first = (centers - support + 0.5).trunc().clamp_min(0)
    last = (centers + support + 0.5).trunc().clamp_max(in_size)
    positions = torch.arange(in_size, dtype=torch.float64)
    weights = pil_filter((positions[None, :] - centers[:, None] + 0.5) / stretch, interpolation)
    weights = weights * ((positions[None, :] >= first[:, None]) & (positions[None, :] < last[:, None]))
    return weights / weights.sum(dim=1, keepdim=True)


def pil_resize(pixels: Tensor, size: tuple[int, int], interpolation: str) -> Tensor:
    """Resize ``[N, C, H, W]`` in [0, 1] to ``size = (h, w)`` as PIL does, without its rounding; differentiable.

    PIL (and torchvision's uint8 resize) run a horizontal pass, clip to the pixel range, then a vertical pass;
    clipping the intermediate matters where the cubic kernel overshoots at sharp edges. The result matches PIL
    to about one uint8 level (PIL also rounds in between and at the end).
    """
    rows = pil_resize_matrix(pixels.shape[-2], size[0], interpolation).to(pixels.device, pixels.dtype)
    columns = pil_resize_matrix(pixels.shape[-1], size[1], interpolation).to(pixels.device, pixels.dtype)
    horizontal = (pixels @ columns.T).clamp(0.0, 1.0)
    return (rows @ horizontal).clamp(0.0, 1.0)


def preprocess_pixels(pixels: Tensor, preprocessing: ClipPreprocessing) -> Tensor:
    """Resize, center-crop and normalise images with torch ops, keeping gradients.

    Mirrors the reference processors on float input: PIL's antialiased two-pass resize (:func:`pil_resize`;
    torchvision's uint8 resize in transformers agrees with PIL to one level), the center crop, normalisation.
    Only the references' rounding to uint8 is left out, so outputs agree to about one uint8 level.

    Args:
        pixels: ``[N, 3, H, W]`` RGB in [0, 1], any float dtype.
        preprocessing: the model's constants.

    Returns:
        ``[N, 3, crop, crop]`` normalised pixel values in ``pixels``' dtype.
    """
    height, width = pixels.shape[-2:]
    target = resized_size(height, width, preprocessing.resize_shortest)
    if target != (height, width):
        pixels = pil_resize(pixels, target, preprocessing.interpolation)
    crop = preprocessing.crop_size
    if min(target) < crop:
        raise ValueError(f"resized image {target} is smaller than the {crop}-pixel crop; resize_shortest must be >= crop")
    top = crop_offset(target[0], crop, preprocessing.crop_offset)
    left = crop_offset(target[1], crop, preprocessing.crop_offset)
    pixels = pixels[..., top : top + crop, left : left + crop]
    mean = torch.tensor(preprocessing.mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def check_pixels(pixels: Tensor, name: str = "pixels") -> None:
    """Raise ``ValueError`` unless ``pixels`` is a floating ``[N, 3, H, W]`` tensor."""
    if pixels.ndim != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor [N, 3, H, W] in [0, 1], got {pixels.dtype} {tuple(pixels.shape)}")


def pixels_to_pil(pixels: Tensor) -> list[Image.Image]:
    """``[N, 3, H, W]`` floats in [0, 1] -> N RGB PIL images, rounded to uint8 as diffusers' ``numpy_to_pil`` does."""
    check_pixels(pixels)
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"pixels: expected values in [0, 1], got min {low:.4f}, max {high:.4f}")
    array = (pixels.detach().float().cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(image)) for image in array]


def pil_to_pixels(images: Sequence[Image.Image]) -> Tensor:
    """N PIL images of one size -> ``[N, 3, H, W]`` float32 in [0, 1] (converted to RGB)."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"images: expected one size to stack into a tensor, got sizes {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
