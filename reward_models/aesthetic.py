"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor", Schuhmann et al.).

An MLP (768 → 1024 → 128 → 64 → 16 → 1, no activations; dropout between the first layers, so the state-dict
keys are ``layers.{0,2,4,6,7}.{weight,bias}``) over L2-normalised OpenAI CLIP ViT-L/14 image embeddings.
The published weights ``sac+logos+ava1-l14-linearMSE.pth`` ship in the authors' repository (Apache-2.0) and are
vendored by DiffusionDPO and flow_grpo. The output is on the AVA rating scale (roughly 1–10, most images 4–7).
The prompt plays no part.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from reward_models.hf_clip import TransformersClipReward
from reward_models.loading import load_state_dict_file, load_state_dict_strict

AESTHETIC_WEIGHTS = "checkpoints/sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
AESTHETIC_HIDDEN_SIZES = (1024, 128, 64, 16)  # the published layer widths
AESTHETIC_DROPOUTS = (0.2, 0.2, 0.1)  # after the first three linear layers (inactive in eval mode)


class AestheticMLP(nn.Module):
    """The predictor head, with the authors' exact ``nn.Sequential`` layout (dropouts included).

    Args:
        input_size: CLIP embedding width (768 for ViT-L/14).
    """

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        widths = (input_size, *AESTHETIC_HIDDEN_SIZES)
        layers: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(width_in, width_out))
            if i < len(AESTHETIC_DROPOUTS):
                layers.append(nn.Dropout(AESTHETIC_DROPOUTS[i]))
        layers.append(nn.Linear(widths[-1], 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, embeddings: Tensor) -> Tensor:
        """``[N, input_size]`` L2-normalised CLIP image embeddings -> ``[N]`` AVA-scale ratings."""
        return self.layers(embeddings).squeeze(-1)


class AestheticReward(TransformersClipReward):
    """LAION aesthetic predictor v2 over CLIP ViT-L/14 image embeddings.

    Args:
        weights: the MLP's weight file (``.pth`` read with ``torch.load(weights_only=True)``, or ``.safetensors``).
        clip: Hub id or local directory of the CLIP model (OpenAI ViT-L/14 for the published weights).
        processor: its processor; ``clip``'s directory when ``None``.
        batch_size, device, dtype: see :class:`TransformersClipReward`.
    """

    name = "aesthetic"
    scale = "AVA rating scale, roughly 1-10 (LAION aesthetic predictor v2; most images 4-7)"
    uses_prompts = False

    def __init__(
        self,
        weights: str | Path = AESTHETIC_WEIGHTS,
        clip: str | Path = AESTHETIC_CLIP,
        processor: str | Path | None = None,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        super().__init__(clip, clip if processor is None else processor, batch_size)
        self.mlp = AestheticMLP(self.clip.config.projection_dim)
        load_state_dict_strict(self.mlp, load_state_dict_file(weights), weights)
        self.finish_init(device, dtype)

    def reward_from_embeddings(self, image_embeddings: Tensor, prompts: list[str] | None) -> Tensor:
        return self.mlp(image_embeddings)
