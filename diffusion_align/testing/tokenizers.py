"""Real CLIP BPE and T5 Unigram tokenizers that work offline.

open_clip ships the byte-pair vocabulary of OpenAI's CLIP (``bpe_simple_vocab_16e6.txt.gz``). From it we write
transformers' ``CLIPTokenizer`` and save it as a normal tokenizer folder, so every tiny pipeline gets
the same 49,408-token tokenizer as Stable Diffusion without touching the Hub. T5's SentencePiece model cannot
be had offline, so the T5 tokenizer is the real transformers ``T5Tokenizer`` (Unigram) over a small vocabulary
drawn from the same CLIP file.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

from transformers import CLIPTokenizer, T5Tokenizer

CLIP_VOCAB_SIZE = 49408
_N_MERGES = CLIP_VOCAB_SIZE - 256 * 2 - 2  # byte symbols, byte symbols + "</w>", two specials


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _open_clip_bpe_path() -> Path:
    import open_clip.tokenizer

    path = Path(open_clip.tokenizer.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary is missing: expected {path}")
    return path


def clip_bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP vocabulary (token -> id, 49,408 entries) and its ordered BPE merges, from open_clip's file."""
    lines = gzip.open(_open_clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{_open_clip_bpe_path()}: expected {CLIP_VOCAB_SIZE} CLIP tokens, built {len(vocab)}")
    return {tok: i for i, tok in enumerate(vocab)}, merges


def build_clip_tokenizer(directory: str | Path, model_max_length: int = 77) -> CLIPTokenizer:
    """Build a CLIP tokenizer, save it into ``directory`` and return it reloaded through ``from_pretrained``.

    Padding uses ``<|endoftext|>`` as Stable Diffusion's tokenizer does (open_clip pads with id 0 instead).
    """
    vocab, merges = clip_bpe_vocab_and_merges()
    tokenizer = CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)


T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5's SentencePiece model
_T5_WORD_SCORE = -6.0  # log-probability of the most frequent word piece; rarer pieces score lower
_T5_CHARACTER_SCORE = -20.0  # single characters are the last resort, so whole words and subwords win


def t5_unigram_vocab(n_words: int = 1000, n_subwords: int = 400) -> list[tuple[str, float]]:
    """A small SentencePiece-style Unigram vocabulary of ``(piece, log-probability)`` pairs, in id order.

    Not T5's real vocabulary (which cannot be fetched offline) but the same kind of thing: T5's three
    special tokens first, ``"▁"`` (the word-start marker), ``n_words`` word-start pieces ``"▁word"`` and
    ``n_subwords`` continuation pieces, both in frequency order from CLIP's BPE merges, then every printable
    ASCII character with and without ``"▁"``, so any ASCII prompt tokenizes without ``<unk>``; other
    characters map to ``<unk>`` (there is no byte fallback). Deterministic: same arguments, same list.
    """
    clip_tokens = list(clip_bpe_vocab_and_merges()[0])[256 * 2 :]  # merged tokens only, most frequent first
    words = [tok[: -len("</w>")] for tok in clip_tokens if tok.endswith("</w>")]
    words = [w for w in words if w.isascii() and w.isalpha()][:n_words]
    subwords = [tok for tok in clip_tokens if tok.isascii() and tok.isalpha()][:n_subwords]
    pieces: dict[str, float] = {tok: 0.0 for tok in T5_SPECIAL_TOKENS}
    pieces["▁"] = -2.0
    for rank, word in enumerate(words):
        pieces.setdefault("▁" + word, _T5_WORD_SCORE - math.log1p(rank))
    for rank, subword in enumerate(subwords):
        pieces.setdefault(subword, _T5_WORD_SCORE - 2.0 - math.log1p(rank))
    for char in map(chr, range(ord("!"), ord("~") + 1)):
        pieces.setdefault("▁" + char, _T5_CHARACTER_SCORE)
        pieces.setdefault(char, _T5_CHARACTER_SCORE)
    return list(pieces.items())


def build_t5_tokenizer(
    directory: str | Path, model_max_length: int = 512, extra_ids: int = 100
) -> T5Tokenizer:
    """Build a T5 (Unigram) tokenizer over :func:`t5_unigram_vocab`, save it, return it reloaded from there.

    Serves T5 and UMT5 text encoders alike (SD3, Flux, PixArt, CogVideoX, Wan): ``<pad>`` = 0, ``</s>`` = 1
    appended to every sequence, ``<unk>`` = 2, and ``extra_ids`` sentinel tokens ``<extra_id_N>`` after the
    vocabulary as in T5. The vocabulary size to give a text encoder is ``len(tokenizer)``.
    """
    tokenizer = T5Tokenizer(vocab=t5_unigram_vocab(), extra_ids=extra_ids, model_max_length=model_max_length)
    tokenizer.save_pretrained(directory)
    return T5Tokenizer.from_pretrained(directory)
