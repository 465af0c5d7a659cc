"""The official Diffusion-DPO image transforms, made deterministic per dataset item.

Salesforce DiffusionDPO ``train.py`` (and the diffusers DPO port) apply, to each image independently:
``Resize(res, bilinear)`` → ``CenterCrop(res)`` (``RandomCrop`` with ``--random_crop``) →
``RandomHorizontalFlip()`` → ``ToTensor()`` → ``Normalize([0.5], [0.5])``, giving ``[3, res, res]`` in [-1, 1].
They draw crops and flips from the global RNG; here every draw comes from a ``random.Random`` seeded by
``(seed, epoch, item index, purpose)``, so a resumed run, a different worker count or the latent cache see the
same augmentation for the same item in the same epoch.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode


def item_rng(seed: int, epoch: int, index: int, purpose: str) -> random.Random:
    """A ``random.Random`` fixed by ``(purpose, seed, epoch, index)``; ``purpose`` keeps draws independent."""
    digest = hashlib.blake2b(f"{purpose}/{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


@dataclass(frozen=True)
class SamplingSettings:
    """The per-item random choices a dataset makes at read time (and the latent cache replays).

    Attributes:
        seed: seeds every draw together with the epoch and the item index.
        hflip: random horizontal flip with probability 0.5 (Salesforce default: on).
        same_flip_for_pair: one flip for all K candidates of an item (MaPO, the diffusers SDXL script) instead of
            one per image (Salesforce).
        proportion_empty_prompts: probability of replacing the caption by ``""`` (Salesforce default 0.2; the
            diffusers port and ours: 0).
    """

    seed: int = 0
    hflip: bool = True
    same_flip_for_pair: bool = False
    proportion_empty_prompts: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.proportion_empty_prompts <= 1.0:
            raise ValueError(
                f"proportion_empty_prompts {self.proportion_empty_prompts}: expected a value in [0, 1]"
            )

    def as_dict(self) -> dict:
        return asdict(self)

    def flips(self, epoch: int, index: int, num_candidates: int) -> list[bool]:
        """Whether each of the item's K candidates is flipped (all ``False`` when ``hflip`` is off)."""
        if not self.hflip:
            return [False] * num_candidates
        rng = item_rng(self.seed, epoch, index, "hflip")
        draws = [rng.random() < 0.5 for _ in range(num_candidates)]
        return [draws[0]] * num_candidates if self.same_flip_for_pair else draws

    def drop_prompt(self, epoch: int, index: int) -> bool:
        """Whether the item's caption is replaced by the empty prompt this epoch."""
        if self.proportion_empty_prompts == 0.0:
            return False
        return item_rng(self.seed, epoch, index, "prompt_dropout").random() < self.proportion_empty_prompts


class PreferenceTransform:
    """Resize → crop → (flip) → to tensor → normalize, for one image or every frame of one video.

    Args:
        resolution: output size in pixels (square); the shorter side is resized to it first.
        random_crop: ``RandomCrop`` instead of ``CenterCrop`` (Salesforce ``--random_crop``; default off).
    """

    def __init__(self, resolution: int, random_crop: bool = False) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution {resolution}: expected a positive number of pixels")
        self.resolution = resolution
        self.random_crop = random_crop

    def describe(self) -> dict:
        """What the cache fingerprint records about these transforms."""
        return {
            "resize": "shorter side, bilinear (PIL, antialiased)",
            "resolution": self.resolution,
            "crop": "random" if self.random_crop else "center",
            "normalize": [0.5, 0.5],
        }

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int]:
        """``(top, left)`` of the crop in a resized image of ``width`` × ``height`` pixels."""
        spare_h, spare_w = height - self.resolution, width - self.resolution
        if self.random_crop:
            return rng.randint(0, spare_h), rng.randint(0, spare_w)
        return int(round(spare_h / 2.0)), int(round(spare_w / 2.0))

    def resize(self, image: Image.Image) -> Image.Image:
        return TF.resize(image, [self.resolution], interpolation=InterpolationMode.BILINEAR)

    def finish(self, image: Image.Image, top: int, left: int, flip: bool) -> Tensor:
        """Crop at ``(top, left)``, flip, and map to a float tensor ``[3, res, res]`` in [-1, 1]."""
        image = TF.crop(image, top, left, self.resolution, self.resolution)
        if flip:
            image = TF.hflip(image)
        return TF.normalize(TF.to_tensor(image), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])

    def __call__(self, image: Image.Image, flip: bool, rng: random.Random) -> Tensor:
        """One RGB image -> ``[3, res, res]`` float32 in [-1, 1]."""
        image = self.resize(image)
        top, left = self.crop_box(image.width, image.height, rng)
        return self.finish(image, top, left, flip)

    def video(self, frames: np.ndarray, flip: bool, rng: random.Random) -> Tensor:
        """uint8 frames ``[F, H, W, 3]`` -> ``[F, 3, res, res]`` in [-1, 1]; one crop and one flip for all frames."""
        resized = [self.resize(Image.fromarray(frame)) for frame in frames]
        top, left = self.crop_box(resized[0].width, resized[0].height, rng)
        return torch.stack([self.finish(frame, top, left, flip) for frame in resized])
