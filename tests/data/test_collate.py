"""collate_preference: items -> PreferenceBatch, with errors that name the offending item and field."""

from __future__ import annotations

import pytest
import torch

from diffusion_align.data import collate_preference


def _item(index: int, **fields) -> dict:
    return {"index": index, "prompt": f"p{index}", **fields}


def test_pixel_items_stack_to_batch():
    items = [
        _item(
            i,
            pixel_values=torch.full((2, 3, 4, 4), float(i)),
            label=torch.tensor(1.0),
            scores=torch.tensor([2.0, 1.0]),
        )
        for i in (5, 9)
    ]
    batch = collate_preference(items)
    assert (
        batch.prompts == ["p5", "p9"] and batch.index.tolist() == [5, 9] and batch.index.dtype == torch.int64
    )
    assert batch.pixel_values.shape == (2, 2, 3, 4, 4) and batch.pixel_values[1].unique().tolist() == [9.0]
    assert batch.label.tolist() == [1.0, 1.0] and batch.scores.shape == (2, 2)
    assert batch.latent_mean is None and batch.prompt_embeds is None and batch.num_candidates == 2


def test_latent_items_with_prompt_embeds():
    items = [
        _item(
            i,
            latent_mean=torch.randn(2, 4, 2, 2),
            latent_std=torch.rand(2, 4, 2, 2),
            prompt_embeds={"prompt_embeds": torch.randn(7, 8), "pooled_prompt_embeds": torch.randn(8)},
        )
        for i in range(3)
    ]
    batch = collate_preference(items)
    assert batch.latent_mean.shape == (3, 2, 4, 2, 2) and batch.pixel_values is None
    assert batch.prompt_embeds["prompt_embeds"].shape == (3, 7, 8)
    assert batch.prompt_embeds["pooled_prompt_embeds"].shape == (3, 8)
    assert torch.equal(batch.prompt_embeds["prompt_embeds"][2], items[2]["prompt_embeds"]["prompt_embeds"])


def test_mismatches_are_named():
    pixels = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="empty list"):
        collate_preference([])
    with pytest.raises(ValueError, match=r"item index 1 has fields .*label"):
        collate_preference(
            [_item(0, pixel_values=pixels), _item(1, pixel_values=pixels, label=torch.tensor(1.0))]
        )
    with pytest.raises(
        ValueError, match=r"field 'pixel_values' has different shapes .*index 1: \[2, 3, 8, 8\]"
    ):
        collate_preference([_item(0, pixel_values=pixels), _item(1, pixel_values=torch.zeros(2, 3, 8, 8))])
    with pytest.raises(ValueError, match="pixel_values or latent_mean"):
        collate_preference([_item(0, pixel_values=pixels, latent_mean=pixels, latent_std=pixels)])
    with pytest.raises(ValueError, match="pixel_values or latent_mean"):
        collate_preference([_item(0, latent_mean=pixels)])
    with pytest.raises(ValueError, match="expected index, prompt"):
        collate_preference([_item(0, pixel_values=pixels, colour=1)])
    with pytest.raises(ValueError, match=r"item index 1 has prompt_embeds \['a'\], expected \['b'\]"):
        collate_preference(
            [
                _item(0, pixel_values=pixels, prompt_embeds={"b": torch.zeros(1)}),
                _item(1, pixel_values=pixels, prompt_embeds={"a": torch.zeros(1)}),
            ]
        )
