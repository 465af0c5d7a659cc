"""HPSv2 and HPSv2.1 (Wu et al., 2023): an open_clip ViT-H-14 fine-tuned on Human Preference Dataset v2.

Loaded as ``hpsv2.score`` does, but offline: ``open_clip.create_model_and_transforms("ViT-H-14",
pretrained=None)`` builds the architecture, the LOCAL checkpoint ``HPS_v2_compressed.pt`` or
``HPS_v2.1_compressed.pt`` (``xswu/HPSv2`` on the Hub) is read with ``torch.load(weights_only=True)`` and its
``"state_dict"`` loaded strictly (it covers every weight, so no base CLIP weights are needed), images go through
open_clip's ``preprocess_val`` and text through ``get_tokenizer("ViT-H-14")``. Score = cosine of the
normalised image and text features.

Scale: ``hpsv2.score()`` returns the raw cosine (≈ 0.25–0.35); the paper's tables and its benchmark code use
×100 (≈ 27–33): ``multiplier=100``. v2.0 and v2.1 scores are not comparable with each other. ``hpsv2`` runs
under AMP autocast; we run in the weights' dtype (float32 by default). Unlike ``hpsv2.score``, the checkpoint is
read once, at construction, not on every call.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torch import Tensor

from reward_models.base import as_dtype
from reward_models.loading import load_state_dict_file, load_state_dict_strict, read_json
from reward_models.open_clip_base import OpenClipReward
from reward_models.preprocessing import ClipPreprocessing

HPS_ARCHITECTURE = "ViT-H-14"
OPEN_CLIP_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def register_open_clip_config(model_config: str | Path, architecture: str) -> None:
    """Register an open_clip model-config JSON (open_clip's ``model_configs/*.json`` format) as ``architecture``.

    open_clip names a config by its file stem, so the file must be ``<architecture>.json``. The registry is
    open_clip's own, process-wide: a later registration of the same name replaces the earlier one.
    """
    path = Path(model_config).expanduser()
    config = read_json(path)
    missing = [key for key in OPEN_CLIP_CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"{path}: not an open_clip model config; missing keys {missing}")
    if path.stem != architecture:
        raise ValueError(f"{path}: open_clip registers this config as '{path.stem}', but architecture='{architecture}'")
    open_clip.add_model_config(path)


def load_hps_state_dict(checkpoint: str | Path) -> dict[str, Tensor]:
    """The ``"state_dict"`` entry of an HPS checkpoint file (``torch.load(weights_only=True)``)."""
    content = load_state_dict_file(checkpoint)
    if "state_dict" not in content:
        raise KeyError(f"{checkpoint}: expected an HPS checkpoint {{'state_dict': ...}}, found keys {sorted(content)[:5]}")
    return content["state_dict"]


class HPSReward(OpenClipReward):
    """Human Preference Score v2 / v2.1: ``multiplier × cosine(text, image)``.

    Args:
        checkpoint: local ``HPS_v2_compressed.pt`` or ``HPS_v2.1_compressed.pt`` (a dict with ``"state_dict"``).
        architecture: open_clip architecture name (``"ViT-H-14"`` for the published weights).
        model_config: optional open_clip model-config JSON defining ``architecture`` (file ``<architecture>.json``),
            for architectures open_clip does not ship, such as the tiny test models.
        multiplier: 1 for the raw cosine of ``hpsv2.score()``, 100 for the paper's tables.
        batch_size, device, dtype: images per forward pass, weight device and dtype.
    """

    name = "hps"
    scale = "multiplier × cosine(text, image): raw cosine by default (hpsv2.score(), ≈ 0.25-0.35); ×100 in the paper"

    def __init__(
        self,
        checkpoint: str | Path,
        architecture: str = HPS_ARCHITECTURE,
        model_config: str | Path | None = None,
        multiplier: float = 1.0,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        super().__init__(batch_size)
        if model_config is not None:
            register_open_clip_config(model_config, architecture)
        state_dict = load_hps_state_dict(checkpoint)
        self.clip, _, self.preprocess_val = open_clip.create_model_and_transforms(architecture, pretrained=None)
        load_state_dict_strict(self.clip, state_dict, checkpoint)
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.preprocessing = ClipPreprocessing.from_open_clip_cfg(self.clip.visual.preprocess_cfg, architecture)
        self.multiplier = multiplier
        self.to(device=device, dtype=as_dtype(dtype))
        self.freeze()

    def reward_from_embeddings(self, image_embeddings: Tensor, prompts: list[str] | None) -> Tensor:
        text = self.text_embeddings(prompts).to(image_embeddings.dtype)
        return self.multiplier * (image_embeddings * text).sum(dim=-1)
