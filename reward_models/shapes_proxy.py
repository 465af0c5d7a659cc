"""The learned proxy reward of the Shapes world: a tiny CLIP trained contrastively on Shapes renders.

It plays PickScore's part on real data: it labels training pairs, while the exact programmatic reward
(:class:`reward_models.shapes.ShapesReward`) evaluates. It is a good but imperfect judge: it saw only the train
split's (colour, shape, background) combinations and it learned from renders, not from generated images.

A model directory holds open_clip's local-dir format, so ``open_clip.create_model_and_transforms("local-dir:DIR")``
reads it too:

* ``open_clip_config.json``: ``{"model_cfg": {embed_dim, vision_cfg, text_cfg}, "preprocess_cfg": {...}}``;
* ``open_clip_model.safetensors``: the weights (stored as float16; loaded into the requested dtype).

The weights are loaded strictly (every key and shape checked). Text goes through open_clip's CLIP BPE tokenizer
(49,408 tokens) with the config's context length, images through open_clip's ``preprocess_val`` (64 x 64,
bicubic, OpenAI CLIP mean/std). Score = ``logit_scale × cosine(text, image)``, the learned logit scale
(:attr:`ShapesProxyReward.logit_scale`) times the cosine, as PickScore scores. Train a new one with
``python -m diffusion_align.shapes.proxy --out DIR``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import Tensor

from diffusion_align.shapes import world
from reward_models.base import as_dtype
from reward_models.loading import load_state_dict_file, load_state_dict_strict, read_json, require_local_dir
from reward_models.open_clip_base import OpenClipReward
from reward_models.preprocessing import ClipPreprocessing

PROXY_CONFIG_FILE = "open_clip_config.json"
PROXY_WEIGHTS_FILE = "open_clip_model.safetensors"
SHIPPED_PROXY_DIR = Path(world.__file__).resolve().with_name("assets") / "proxy"
OPEN_CLIP_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def read_proxy_config(directory: Path) -> tuple[dict, PreprocessCfg]:
    """The open_clip model config and preprocessing of a proxy directory; errors name the file and key."""
    path = directory / PROXY_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: proxy model config not found (expected {PROXY_CONFIG_FILE} in {directory})")
    config = read_json(path)
    for key in ("model_cfg", "preprocess_cfg"):
        if key not in config:
            raise ValueError(f"{path}: expected keys 'model_cfg' and 'preprocess_cfg', missing '{key}'")
    missing = [key for key in OPEN_CLIP_CONFIG_KEYS if key not in config["model_cfg"]]
    if missing:
        raise ValueError(f"{path}: 'model_cfg' is not an open_clip model config; missing keys {missing}")
    return config["model_cfg"], PreprocessCfg(**config["preprocess_cfg"])


class ShapesProxyReward(OpenClipReward):
    """Tiny-CLIP proxy reward of the Shapes world: ``logit_scale × cosine(text, image)``.

    Args:
        directory: a proxy model directory (see the module docstring); ``None`` = the shipped model in
            ``diffusion_align/shapes/assets/proxy/``.
        batch_size: images per forward pass in :meth:`score` when the call gives none.
        device, dtype: where the weights live and their floating dtype.
    """

    name = "shapes_proxy"
    scale = "logit_scale × cosine(text, image); shipped model: logit_scale ≈ 38.0, matching renders ≈ 33-36, others ≈ -3 to 32"

    def __init__(
        self,
        directory: str | Path | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> None:
        super().__init__(batch_size)
        directory = require_local_dir(SHIPPED_PROXY_DIR if directory is None else directory, "Shapes proxy model")
        model_cfg, preprocess_cfg = read_proxy_config(directory)
        weights = directory / PROXY_WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: proxy weight file not found (expected {PROXY_WEIGHTS_FILE} in {directory})")
        self.clip = open_clip.CLIP(**model_cfg)
        load_state_dict_strict(self.clip, load_state_dict_file(weights), weights)
        self.preprocess_val = image_transform_v2(preprocess_cfg, is_train=False)
        self.preprocessing = ClipPreprocessing.from_open_clip_cfg(asdict(preprocess_cfg), str(directory))
        self.tokenizer = open_clip.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])
        self.directory = directory
        self.to(device=device, dtype=as_dtype(dtype))
        self.freeze()

    @property
    def logit_scale(self) -> float:
        """The learned multiplier of the cosine (``exp`` of the stored log scale)."""
        return float(self.clip.logit_scale.exp())

    def reward_from_embeddings(self, image_embeddings: Tensor, prompts: list[str] | None) -> Tensor:
        text = self.text_embeddings(prompts).to(image_embeddings.dtype)
        return self.clip.logit_scale.exp() * (image_embeddings * text).sum(dim=-1)
