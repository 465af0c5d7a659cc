"""Offline tokenizers: CLIP agrees with open_clip's reference BPE; T5 round-trips through from_pretrained."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
from transformers import AutoTokenizer, CLIPTokenizer, T5Tokenizer

from diffusion_align.testing.tokenizers import CLIP_VOCAB_SIZE, T5_SPECIAL_TOKENS, t5_unigram_vocab

CLIP_EOS_ID = 49407
LONG_PROMPT = " ".join(["a watercolor painting of a lighthouse on a cliff at sunset, seagulls overhead"] * 8)
# HTML entities are left out on purpose: open_clip unescapes them, transformers' CLIPTokenizer (Stable
# Diffusion's) does not, and the tiny pipelines follow Stable Diffusion.
CLIP_PROMPTS = [
    "a photo of a cat",
    "Hello, world!!! (test) -- 'quotes', \"double\"; 3.14 #tag @user 50% off?",
    "don't it's we'll I'M",
    "Café naïve façade — 東京タワー 🐱🚀 Ünïcödé",
    "  multiple   spaces\tand\nnewlines  ",
    LONG_PROMPT,
]
ASCII_PROMPTS = [
    "a photo of a cat",
    "A photograph of an astronaut riding a horse, 4k!",
    "x=1; y=[2, 3] (ok?)",
]


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.mark.parametrize("prompt", CLIP_PROMPTS)
def test_clip_ids_match_open_clip_up_to_eos(
    prompt: str, clip_tokenizer_path: Path, open_clip_tokenizer
) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_path)
    reference = open_clip_tokenizer([prompt])[0].tolist()  # [77], padded with 0 after the EOS

    ids = tokenizer(prompt, truncation=True, max_length=77).input_ids

    assert ids == reference[: reference.index(CLIP_EOS_ID) + 1]


def test_clip_long_prompt_is_truncated_to_77_ending_in_eos(clip_tokenizer_path: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_path)

    ids = tokenizer(LONG_PROMPT, truncation=True, max_length=tokenizer.model_max_length).input_ids

    assert len(tokenizer) == CLIP_VOCAB_SIZE and tokenizer.model_max_length == 77
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == CLIP_EOS_ID


def test_clip_pads_with_endoftext_like_stable_diffusion(clip_tokenizer_path: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_path)

    ids = tokenizer("a cat", padding="max_length", max_length=77).input_ids

    assert ids[:4] == [49406, 320, 2368, CLIP_EOS_ID]
    assert ids[4:] == [CLIP_EOS_ID] * 73


def test_t5_vocab_is_deterministic_and_starts_with_t5_specials() -> None:
    vocab = t5_unigram_vocab()

    assert vocab == t5_unigram_vocab()
    assert tuple(piece for piece, _ in vocab[:3]) == T5_SPECIAL_TOKENS
    assert len({piece for piece, _ in vocab}) == len(vocab), "duplicate pieces"


@pytest.mark.parametrize("loader", [T5Tokenizer, AutoTokenizer])
def test_t5_round_trips_through_from_pretrained(loader, t5_tokenizer_path: Path, tmp_path: Path) -> None:
    tokenizer = loader.from_pretrained(t5_tokenizer_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = loader.from_pretrained(tmp_path)

    assert type(tokenizer) is type(reloaded) is T5Tokenizer
    for prompt in ASCII_PROMPTS:
        ids = tokenizer(prompt).input_ids
        assert reloaded(prompt).input_ids == ids
        assert ids[-1] == tokenizer.eos_token_id == 1
        assert tokenizer.unk_token_id not in ids, f"{prompt!r} hit <unk>"
        assert tokenizer.decode(ids, skip_special_tokens=True) == prompt


def test_t5_special_ids_and_padding(t5_tokenizer_path: Path) -> None:
    tokenizer = T5Tokenizer.from_pretrained(t5_tokenizer_path)

    ids = tokenizer("a cat", padding="max_length", max_length=8).input_ids

    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert ids[ids.index(1) + 1 :] == [0] * (8 - ids.index(1) - 1)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") >= len(t5_unigram_vocab())
    assert tokenizer("Ωmega").input_ids[:-1].count(tokenizer.unk_token_id) == 1
