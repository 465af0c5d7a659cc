"""Tiny text encoders and offline tokenizers shared by the tiny pipelines of :mod:`.tiny`.

Every encoder is the real transformers class (``CLIPTextModel``, ``CLIPTextModelWithProjection``,
``T5EncoderModel``, ``UMT5EncoderModel``) with a tiny config and seeded random weights. Vocabulary sizes
match the tokenizers: 49,408 for CLIP (the real CLIP vocabulary), ``len(t5_tokenizer())`` for T5/UMT5.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from diffusion_align.testing.tokenizers import CLIP_VOCAB_SIZE, build_clip_tokenizer, build_t5_tokenizer

ModelT = TypeVar("ModelT", bound=torch.nn.Module)

CLIP_HIDDEN_SIZE = 32  # width of every tiny CLIP text encoder (SD1.5's is 768)
CLIP_MAX_POSITIONS = 77  # CLIP's context length, as in every Stable Diffusion text encoder
CLIP_BOS_ID, CLIP_EOS_ID = CLIP_VOCAB_SIZE - 2, CLIP_VOCAB_SIZE - 1  # <|startoftext|>, <|endoftext|>
T5_D_MODEL = 32  # width of the tiny T5/UMT5 encoders (T5-v1.1-XXL's is 4096)


def seeded(seed: int, build: Callable[..., ModelT], /, *args: Any, **kwargs: Any) -> ModelT:
    """Call ``build(*args, **kwargs)`` with the CPU generator seeded, then restore the caller's RNG state.

    Weights are initialised on the CPU, so only the CPU generator is seeded; accelerator generators are not
    touched. Returns the built module in eval mode (no dropout), as ``from_pretrained`` would.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return build(*args, **kwargs).eval()


@functools.cache
def _clip_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory(prefix="tiny_clip_tokenizer_") as directory:
        return build_clip_tokenizer(directory, model_max_length=CLIP_MAX_POSITIONS)


@functools.cache
def _t5_tokenizer() -> T5Tokenizer:
    with tempfile.TemporaryDirectory(prefix="tiny_t5_tokenizer_") as directory:
        return build_t5_tokenizer(directory)


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A fresh copy of the offline CLIP tokenizer (built once per process: 1-5 s the first time).

    Args:
        pad_token: ``"<|endoftext|>"`` as SD1.5/SDXL's first tokenizer, ``"!"`` as SDXL/SD3's second one.
    """
    tokenizer = copy.deepcopy(_clip_tokenizer())
    tokenizer.pad_token = pad_token
    return tokenizer


def t5_tokenizer() -> T5Tokenizer:
    """A fresh copy of the offline T5 Unigram tokenizer (built once per process), for T5 and UMT5 encoders."""
    return copy.deepcopy(_t5_tokenizer())


def _clip_text_config(projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=CLIP_HIDDEN_SIZE,
        intermediate_size=4 * CLIP_HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_POSITIONS,
        hidden_act="quick_gelu",
        projection_dim=projection_dim,
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,  # pooled output = hidden state at the first <|endoftext|>
        pad_token_id=CLIP_EOS_ID,
    )


def tiny_clip_text_encoder(seed: int) -> CLIPTextModel:
    """CLIP text encoder, hidden 32, 2 layers, 4 heads, 77 positions; pooled output ``[B, 32]``."""
    return seeded(seed, CLIPTextModel, _clip_text_config(projection_dim=CLIP_HIDDEN_SIZE))


def tiny_clip_text_encoder_with_projection(
    seed: int, projection_dim: int = 32
) -> CLIPTextModelWithProjection:
    """CLIP text encoder with text projection (SDXL's, SD3's ``text_encoder_2``); ``text_embeds [B, P]``."""
    return seeded(seed, CLIPTextModelWithProjection, _clip_text_config(projection_dim=projection_dim))


def _t5_sizes(d_model: int) -> dict[str, int | float | str]:
    return {
        "vocab_size": len(_t5_tokenizer()),
        "d_model": d_model,
        "d_kv": 8,
        "d_ff": 2 * d_model,
        "num_layers": 2,
        "num_heads": d_model // 8,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "dropout_rate": 0.0,
        "feed_forward_proj": "gated-gelu",  # T5 v1.1, the encoder of SD3, Flux, PixArt, CogVideoX
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def tiny_t5_encoder(seed: int, d_model: int = T5_D_MODEL) -> T5EncoderModel:
    """T5 v1.1 encoder (gated-GELU), 2 layers, width ``d_model``; ``last_hidden_state [B, L, d_model]``."""
    return seeded(seed, T5EncoderModel, T5Config(**_t5_sizes(d_model), is_encoder_decoder=False))


def tiny_umt5_encoder(seed: int, d_model: int = T5_D_MODEL) -> UMT5EncoderModel:
    """UMT5 encoder (Wan's), 2 layers, width ``d_model``; ``last_hidden_state [B, L, d_model]``."""
    return seeded(seed, UMT5EncoderModel, UMT5Config(**_t5_sizes(d_model), is_encoder_decoder=False))
