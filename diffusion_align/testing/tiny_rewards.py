"""Seeded tiny reward-model weights, written to disk and loaded back through the real loading code.

Each ``build_tiny_<reward>(directory, *, seed=0)`` writes weight files shaped like the real model's family
(transformers ``CLIPModel`` or open_clip ``CLIP``, tiny widths, the real 49,408-token vocabulary and 77
positions, 224-pixel inputs with 14-pixel patches) and returns the constructor keyword arguments of the
matching reward class, e.g. ``PickScoreReward(**build_tiny_pickscore(tmp))``. Processors carry the real
preprocessing constants (shortest side 224, bicubic, center crop 224, OpenAI CLIP mean/std) and the offline CLIP
tokenizer of :func:`diffusion_align.testing.tokenizers.build_clip_tokenizer`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from diffusion_align.testing.tiny_text import CLIP_BOS_ID, CLIP_EOS_ID, clip_tokenizer, seeded
from diffusion_align.testing.tokenizers import CLIP_VOCAB_SIZE
from reward_models.aesthetic import AestheticMLP
from reward_models.preprocessing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

TINY_WIDTH = 32  # transformer width of both towers (CLIP-H: 1280 vision / 1024 text)
TINY_PROJECTION_DIM = 16  # joint embedding width (CLIP-H: 1024; CLIP-L: 768)
CLIP_IMAGE_SIZE = 224  # what every reference processor crops to
CLIP_PATCH_SIZE = 14  # ViT-H/14 and ViT-L/14
TINY_HPS_ARCHITECTURE = "tiny-ViT-H-14"  # open_clip names configs by file stem
AVA_MEAN_RATING = 5.0  # AVA ratings are 1-10 with most images between 4 and 7


def tiny_clip_config(hidden_act: str, width: int = TINY_WIDTH, logit_scale: float = math.log(1 / 0.07)) -> CLIPConfig:
    """A 2-layer, 2-head transformers CLIP config at 224 px / patch 14 with the real vocabulary.

    Args:
        hidden_act: ``"gelu"`` for laion's CLIP-H (PickScore), ``"quick_gelu"`` for OpenAI's CLIP-L.
        width: hidden size of both towers.
        logit_scale: initial ``log`` of the logit scale (CLIP's default ``log(1/0.07)``).
    """
    layers = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {
        **layers,
        "vocab_size": CLIP_VOCAB_SIZE,
        "max_position_embeddings": 77,
        "hidden_act": hidden_act,
        "bos_token_id": CLIP_BOS_ID,
        "eos_token_id": CLIP_EOS_ID,
        "pad_token_id": CLIP_EOS_ID,
    }
    vision = {**layers, "image_size": CLIP_IMAGE_SIZE, "patch_size": CLIP_PATCH_SIZE, "hidden_act": hidden_act}
    return CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=TINY_PROJECTION_DIM, logit_scale_init_value=logit_scale
    )


def reference_clip_image_processor() -> CLIPImageProcessor:
    """The constants of laion's CLIP-H and OpenAI's CLIP-L processors: shortest side 224 bicubic, crop 224."""
    return CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        resample=Image.Resampling.BICUBIC,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def save_tiny_clip(directory: Path, config: CLIPConfig, seed: int) -> Path:
    """Write a seeded ``CLIPModel`` and a reference ``CLIPProcessor`` into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    seeded(seed, CLIPModel, config).save_pretrained(directory)
    CLIPProcessor(image_processor=reference_clip_image_processor(), tokenizer=clip_tokenizer()).save_pretrained(directory)
    return directory


def build_tiny_pickscore(directory: str | Path, *, seed: int = 0, width: int = TINY_WIDTH) -> dict[str, str]:
    """Tiny PickScore: ``model/`` (a GELU ``CLIPModel``, logit scale 100) and ``processor/``, as on the Hub.

    Returns:
        ``{"model": ..., "processor": ...}`` for :class:`reward_models.PickScoreReward`.
    """
    directory = Path(directory)
    config = tiny_clip_config("gelu", width, logit_scale=math.log(100.0))  # trained CLIPs sit at the 100 clamp
    model_dir = save_tiny_clip(directory / "model", config, seed)
    processor_dir = directory / "processor"
    CLIPProcessor(image_processor=reference_clip_image_processor(), tokenizer=clip_tokenizer()).save_pretrained(processor_dir)
    return {"model": str(model_dir), "processor": str(processor_dir)}


def build_tiny_clip_score(directory: str | Path, *, seed: int = 0, width: int = TINY_WIDTH) -> dict[str, str]:
    """Tiny OpenAI-style CLIP (QuickGELU) with its processor in one directory, for :class:`ClipScoreReward`."""
    return {"model": str(save_tiny_clip(Path(directory), tiny_clip_config("quick_gelu", width), seed))}


def build_tiny_aesthetic(
    directory: str | Path, *, seed: int = 0, width: int = TINY_WIDTH, weights_format: str = "pth"
) -> dict[str, str]:
    """Tiny CLIP-L-style model in ``clip/`` and an aesthetic MLP weight file over its embeddings.

    Args:
        weights_format: ``"pth"`` (``torch.save`` of the state dict, like the published file) or ``"safetensors"``.

    Returns:
        ``{"weights": ..., "clip": ...}`` for :class:`reward_models.AestheticReward`.
    """
    directory = Path(directory)
    clip_dir = save_tiny_clip(directory / "clip", tiny_clip_config("quick_gelu", width), seed)
    mlp = seeded(seed + 1, AestheticMLP, TINY_PROJECTION_DIM)
    with torch.no_grad():
        mlp.layers[-1].bias.fill_(AVA_MEAN_RATING)  # ratings centred where AVA's are, not at 0
    state_dict = mlp.state_dict()
    if weights_format == "pth":
        weights = directory / "aesthetic_mlp.pth"
        torch.save(state_dict, weights)
    elif weights_format == "safetensors":
        weights = directory / "aesthetic_mlp.safetensors"
        save_file({key: value.contiguous() for key, value in state_dict.items()}, weights)
    else:
        raise ValueError(f"weights_format: expected 'pth' or 'safetensors', got {weights_format!r}")
    return {"weights": str(weights), "clip": str(clip_dir)}


def tiny_open_clip_config(width: int = TINY_WIDTH) -> dict:
    """An open_clip model config in ``model_configs/ViT-H-14.json``'s format, 2 layers, at 224 px / patch 14."""
    return {
        "embed_dim": TINY_PROJECTION_DIM,
        "vision_cfg": {"image_size": CLIP_IMAGE_SIZE, "layers": 2, "width": width, "head_width": width // 2, "patch_size": CLIP_PATCH_SIZE},
        "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB_SIZE, "width": width, "heads": 2, "layers": 2},
    }


def build_tiny_hps(
    directory: str | Path, *, seed: int = 0, width: int = TINY_WIDTH, architecture: str = TINY_HPS_ARCHITECTURE
) -> dict[str, str]:
    """Tiny HPS: an open_clip config ``<architecture>.json`` and a checkpoint ``{"state_dict": ...}`` like HPS_v2.

    Returns:
        ``{"checkpoint": ..., "architecture": ..., "model_config": ...}`` for :class:`reward_models.HPSReward`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{architecture}.json"
    config_path.write_text(json.dumps(tiny_open_clip_config(width), indent=2))
    open_clip.add_model_config(config_path)
    model = seeded(seed, open_clip.create_model, architecture, pretrained=None)
    checkpoint = directory / "HPS_tiny_compressed.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return {"checkpoint": str(checkpoint), "architecture": architecture, "model_config": str(config_path)}


TINY_REWARD_BUILDERS: dict[str, Callable[..., dict[str, str]]] = {
    "pickscore": build_tiny_pickscore,
    "hps": build_tiny_hps,
    "clip_score": build_tiny_clip_score,
    "aesthetic": build_tiny_aesthetic,
}


def build_tiny_reward(name: str, directory: str | Path, **builder_kwargs) -> dict[str, str]:
    """Build the tiny weights of reward ``name`` (a key of :data:`TINY_REWARD_BUILDERS`) into ``directory``."""
    if name not in TINY_REWARD_BUILDERS:
        raise ValueError(f"unknown tiny reward '{name}'; expected one of {sorted(TINY_REWARD_BUILDERS)}")
    return TINY_REWARD_BUILDERS[name](directory, **builder_kwargs)
