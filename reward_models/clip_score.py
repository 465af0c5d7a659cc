"""CLIP score (Hessel et al., 2021) as torchmetrics defines it: ``max(100 · cos(E_image, E_text), 0)``.

Backbone: transformers ``openai/clip-vit-large-patch14`` (torchmetrics' default) with its own processor.
Prompts longer than CLIP's 77 tokens are truncated by the tokenizer (end token kept), where torchmetrics cuts
the token ids. DiffusionDPO's ``clip_utils.py`` reports a different number (open_clip ViT-H-14 laion2B, raw
cosine): state the backbone with the score.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from reward_models.hf_clip import TransformersClipReward

CLIP_SCORE_MODEL = "openai/clip-vit-large-patch14"


class ClipScoreReward(TransformersClipReward):
    """CLIP score ``max(100 · cos, 0)`` (torchmetrics ``CLIPScore``, per sample).

    Args:
        model: Hub id or local directory of a ``CLIPModel``.
        processor: its processor; the model's own directory when ``None``.
        batch_size, device, dtype: see :class:`TransformersClipReward`.
    """

    name = "clip_score"
    scale = "max(100 × cosine(text, image), 0) (torchmetrics CLIPScore; 0-100)"

    def __init__(
        self,
        model: str | Path = CLIP_SCORE_MODEL,
        processor: str | Path | None = None,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        super().__init__(model, model if processor is None else processor, batch_size)
        self.finish_init(device, dtype)

    def reward_from_embeddings(self, image_embeddings: Tensor, prompts: list[str] | None) -> Tensor:
        return (100.0 * self.cosine_from_embeddings(image_embeddings, prompts)).clamp(min=0.0)
