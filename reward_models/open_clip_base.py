"""The open_clip backbone shared by HPSv2/v2.1 and the Shapes proxy: images through ``preprocess_val``, text through
the model's tokenizer, both embedded and L2-normalised by ``encode_image`` / ``encode_text``."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from reward_models.base import ClipRewardModel


class OpenClipReward(ClipRewardModel):
    """A reward on an open_clip ``CLIP`` model; subclasses set ``clip``, ``tokenizer`` and ``preprocess_val`` and say
    how a cosine becomes a score (:meth:`reward_from_embeddings`)."""

    def pixel_values_from_pil(self, images: list[Image.Image]) -> Tensor:
        return torch.stack([self.preprocess_val(image) for image in images])

    def embed_pixel_values(self, pixel_values: Tensor) -> Tensor:
        return self.clip.encode_image(pixel_values, normalize=True)

    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """L2-normalised text embeddings ``[n, D]`` (the tokenizer's context length, zero-padded)."""
        return self.clip.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)
