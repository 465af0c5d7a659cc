"""The transformers CLIP backbone shared by PickScore, CLIP score and the aesthetic predictor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from reward_models.base import ClipRewardModel, Images, as_dtype
from reward_models.loading import load_clip_model, load_clip_processor
from reward_models.preprocessing import ClipPreprocessing

CLIP_MAX_TOKENS = 77  # CLIP's context length; longer prompts are truncated (end token kept), as PickScore does


class TransformersClipReward(ClipRewardModel):
    """A reward on top of a transformers ``CLIPModel`` and its ``CLIPProcessor``.

    Args:
        model: Hub id or local ``from_pretrained`` directory of the ``CLIPModel``.
        processor: Hub id or local directory of the ``CLIPProcessor`` (image processor + tokenizer).
        batch_size: images per forward pass in :meth:`score`.
        device: where the weights live, e.g. ``"cpu"``, ``"cuda"``.
        dtype: weight dtype (``"float32"``, ``"float16"``, ``"bfloat16"``); scores are returned as float32.
    """

    def __init__(
        self,
        model: str | Path,
        processor: str | Path,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        super().__init__(batch_size)
        self.clip = load_clip_model(model)
        self.processor = load_clip_processor(processor)
        self.preprocessing = ClipPreprocessing.from_hf_image_processor(self.processor.image_processor, str(processor))

    def finish_init(self, device: str | torch.device, dtype: str | torch.dtype) -> None:
        """Move to ``device``/``dtype`` and freeze; subclasses call this once all their modules exist."""
        self.to(device=device, dtype=as_dtype(dtype))
        self.freeze()

    def pixel_values_from_pil(self, images: list[Image.Image]) -> Tensor:
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def embed_pixel_values(self, pixel_values: Tensor) -> Tensor:
        return F.normalize(self.clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)

    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``[n, D]`` on the model's device (padded per batch, truncated to 77)."""
        tokens = self.processor.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=CLIP_MAX_TOKENS, return_tensors="pt"
        ).to(self.device)
        features = self.clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(features.pooler_output, dim=-1)

    def cosine_from_embeddings(self, image_embeddings: Tensor, prompts: list[str] | None) -> Tensor:
        """``cos(image, text)`` per pair ``[n]`` in [-1, 1]."""
        if prompts is None:
            raise ValueError(f"{type(self).__name__}: a cosine with the prompt needs prompts, got None")
        return (image_embeddings * self.text_embeddings(prompts).to(image_embeddings.dtype)).sum(dim=-1)

    def cosine(self, images: Images, prompts: Sequence[str], batch_size: int | None = None) -> Tensor:
        """The raw cosine similarity of each (image, prompt) pair, ``[N]`` float32 on CPU, without gradients."""
        return self.map_batches(images, prompts, self.cosine_from_embeddings, batch_size)
