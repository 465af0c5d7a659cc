"""Batching: dataset items -> :class:`~diffusion_align.types.PreferenceBatch`."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_align.types import PreferenceBatch

TENSOR_FIELDS = ("pixel_values", "latent_mean", "latent_std", "label", "scores", "desirable", "segment_label")
ITEM_FIELDS = frozenset({"index", "prompt", "prompt_embeds", *TENSOR_FIELDS})


def _stack(items: list[dict], name: str) -> Tensor:
    shapes = {tuple(item[name].shape) for item in items}
    if len(shapes) > 1:
        detail = ", ".join(f"index {item['index']}: {list(item[name].shape)}" for item in items)
        raise ValueError(
            f"collate_preference: field '{name}' has different shapes across the batch ({detail})"
        )
    return torch.stack([item[name] for item in items])


def _stack_embeds(items: list[dict]) -> dict[str, Tensor]:
    names = set(items[0]["prompt_embeds"])
    for item in items:
        if set(item["prompt_embeds"]) != names:
            raise ValueError(
                f"collate_preference: item index {item['index']} has prompt_embeds "
                f"{sorted(item['prompt_embeds'])}, expected {sorted(names)}"
            )
    return {
        name: _stack([{"index": it["index"], name: it["prompt_embeds"][name]} for it in items], name)
        for name in names
    }


def collate_preference(items: list[dict]) -> PreferenceBatch:
    """Stack B items (each ``K`` candidates) into a :class:`PreferenceBatch`.

    Every item must carry the same fields; an item has ``index`` and ``prompt`` and exactly one image source
    (``pixel_values``, or ``latent_mean`` with ``latent_std``). Per-item tensors gain the batch dim: ``[K, ...]`` ->
    ``[B, K, ...]``, a 0-dim ``label`` -> ``[B]``, prompt embeds ``[...]`` -> ``[B, ...]``.

    Raises:
        ValueError: an empty batch, an unknown field, items with different fields or shapes, or not exactly one
            image source.
    """
    if not items:
        raise ValueError("collate_preference: got an empty list of items")
    fields = set(items[0])
    for item in items:
        if set(item) != fields:
            raise ValueError(
                f"collate_preference: item index {item.get('index')} has fields {sorted(item)}, "
                f"item index {items[0].get('index')} has {sorted(fields)}"
            )
    unknown = fields - ITEM_FIELDS
    if unknown or not {"index", "prompt"} <= fields:
        raise ValueError(
            f"collate_preference: fields {sorted(fields)}: expected index, prompt and some of "
            f"{', '.join(sorted(ITEM_FIELDS - {'index', 'prompt'}))}"
        )
    sources = [name for name in ("pixel_values", "latent_mean") if name in fields]
    if len(sources) != 1 or ("latent_mean" in fields) != ("latent_std" in fields):
        raise ValueError(
            f"collate_preference: items need pixel_values or latent_mean + latent_std, got {sorted(fields)}"
        )
    batch = {name: _stack(items, name) for name in TENSOR_FIELDS if name in fields}
    if "prompt_embeds" in fields:
        batch["prompt_embeds"] = _stack_embeds(items)
    index = torch.tensor([item["index"] for item in items], dtype=torch.int64)
    return PreferenceBatch(prompts=[item["prompt"] for item in items], index=index, **batch)
