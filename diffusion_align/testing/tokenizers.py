"""A real CLIP BPE tokenizer that works offline.

open_clip ships the byte-pair vocabulary of OpenAI's CLIP (``bpe_simple_vocab_16e6.txt.gz``). From it we write
transformers' ``CLIPTokenizer`` and save it as a normal tokenizer folder, so every tiny pipeline gets
the same 49,408-token tokenizer as Stable Diffusion without touching the Hub.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from transformers import CLIPTokenizer

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
