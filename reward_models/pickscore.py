"""PickScore (Kirstain et al., 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic human preferences.

Loaded exactly as the PickScore repository's README does: the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` and the model ``yuvalkirstain/PickScore_v1``; images and text are
processed separately (text padded, truncated to 77 tokens); features are L2-normalised and
``score = logit_scale.exp() * cos(text, image)``; a softmax over one prompt's candidates gives preference
probabilities.

Scales seen in the wild (say which one you report): the repo's ``logit_scale × cosine`` (our :meth:`score`;
≈ 20–23 for SD-class images); the raw cosine of DiffusionDPO and SmPO (our :meth:`cosine`); flow_grpo's
``logit_scale × cosine / 26`` ("normalised to 0–1").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from reward_models.hf_clip import TransformersClipReward
from reward_models.video import flatten_groups

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward(TransformersClipReward):
    """PickScore: ``logit_scale × cosine(text, image)``.

    Args:
        model: Hub id or local directory of ``PickScore_v1`` (a ``CLIPModel``).
        processor: Hub id or local directory of the laion CLIP-H processor.
        batch_size, device, dtype: see :class:`TransformersClipReward`.
    """

    name = "pickscore"
    scale = "logit_scale × cosine(text, image) (PickScore repo; logit_scale ≈ 100, ≈ 20-23 for SD-class images)"

    def __init__(
        self,
        model: str | Path = PICKSCORE_MODEL,
        processor: str | Path = PICKSCORE_PROCESSOR,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        super().__init__(model, processor, batch_size)
        self.finish_init(device, dtype)

    def reward_from_embeddings(self, image_embeddings: Tensor, prompts: list[str] | None) -> Tensor:
        return self.clip.logit_scale.exp() * self.cosine_from_embeddings(image_embeddings, prompts)

    def preference_probs(
        self,
        candidates: Tensor | Sequence[Sequence[Image.Image]],
        prompts: Sequence[str],
        batch_size: int | None = None,
    ) -> Tensor:
        """Probability that each candidate is preferred among its prompt's candidates, as in the PickScore repo.

        Args:
            candidates: ``[P, K, 3, H, W]`` in [0, 1], or P lists of K PIL images (K candidates per prompt).
            prompts: the P prompts.
            batch_size: images per forward pass.

        Returns:
            ``[P, K]`` float32 on CPU, ``softmax`` over each row of logit-scaled scores (rows sum to 1).
        """
        images, n_prompts, n_candidates = flatten_groups(candidates)
        prompts = self.check_prompts(prompts, n_prompts)
        repeated = [prompt for prompt in prompts for _ in range(n_candidates)]
        scores = self.score(images, repeated, batch_size).view(n_prompts, n_candidates)
        return scores.softmax(dim=-1)
