"""The latent cache: items equal on-the-fly encoding bit for bit; stale caches are refused; killed builds resume."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset
from transformers import CLIPTextConfig, CLIPTextModel

from diffusion_align.data import (
    CachedPreferenceDataset,
    PairwiseParquetDataset,
    RankedParquetDataset,
    StaleCacheError,
    UnpairedDataset,
    VideoPairDataset,
    build_cache,
    collate_preference,
)
from diffusion_align.data.cache import CorruptCacheError
from diffusion_align.testing.data import write_tiny_pairwise_parquet


def fake_posterior(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic stand-in for a VAE: ``[N, (F,) 3, H, W] -> [N, (F,) 3, H/4, W/4]`` mean and std."""
    mean = F.avg_pool2d(pixels.flatten(0, -4), 4).unflatten(0, pixels.shape[:-3])
    return mean, torch.sigmoid(mean) + 0.1


def fake_prompts(prompts: list[str]) -> dict[str, torch.Tensor]:
    codes = torch.tensor([[float(sum(map(ord, p)) % 97), float(len(p))] for p in prompts])
    return {
        "prompt_embeds": codes[:, None, :].expand(-1, 3, -1).contiguous(),
        "pooled_prompt_embeds": codes * 2,
    }


def assert_matches_on_the_fly(
    source, cached, encode_posterior=fake_posterior, encode_prompts=fake_prompts, epochs=3
):
    """Every cached item == the source item encoded now, for several epochs (flips and dropout replayed)."""
    for epoch in range(epochs):
        source.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(source)):
            expected, got = source[index], cached[index]
            with torch.no_grad():
                mean, std = encode_posterior(expected["pixel_values"])
                embeds = encode_prompts([expected["prompt"]])
            assert got["prompt"] == expected["prompt"] and got["index"] == index
            assert torch.equal(got["latent_mean"], mean) and torch.equal(got["latent_std"], std)
            assert sorted(got["prompt_embeds"]) == sorted(embeds)
            assert all(torch.equal(got["prompt_embeds"][k], embeds[k][0]) for k in embeds)
            for name in ("label", "scores", "segment_label"):
                assert (name in got) == (name in expected) and (
                    name not in got or torch.equal(got[name], expected[name])
                )


@pytest.fixture
def pairs(tmp_path):
    return write_tiny_pairwise_parquet(tmp_path / "pairs", n_rows=10, ties=1)


def _shard_shapes(out, name: str) -> list[torch.Size]:
    return [load_file(str(path))[name].shape for path in sorted(out.glob("shard-*.safetensors"))]


def _dataset(paths, **options):
    defaults = {"resolution": 16, "proportion_empty_prompts": 0.4, "score_prefix": "ps_score", "seed": 3}
    return PairwiseParquetDataset(paths, **{**defaults, **options})


def test_cached_items_equal_on_the_fly_encoding(pairs, tmp_path):
    source = _dataset(pairs)
    cached = build_cache(
        source, fake_posterior, fake_prompts, tmp_path / "cache", batch_size=4, encoder_id="fake"
    )
    assert len(cached) == len(source) == 9
    assert_matches_on_the_fly(source, cached)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["content"]["transform"]["resolution"] == 16
    batch = collate_preference([cached[i] for i in range(3)])
    assert batch.latent_mean.shape == (3, 2, 3, 4, 4) and batch.prompt_embeds["prompt_embeds"].shape == (
        3,
        3,
        2,
    )
    assert batch.pixel_values is None and batch.scores.shape == (3, 2)


def test_cache_with_real_tiny_vae_and_clip_text_encoder(pairs, tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    ).eval()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=128,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
        )
    ).eval()

    def encode_posterior(pixels):
        dist = vae.encode(pixels).latent_dist
        return dist.mean, dist.std

    def encode_prompts(prompts):
        ids = [[126] + [ord(c) % 120 for c in p][:14] for p in prompts]
        ids = torch.tensor([row + [127] * (16 - len(row)) for row in ids])
        return {"prompt_embeds": text(input_ids=ids).last_hidden_state}

    source = _dataset(pairs)
    cached = build_cache(
        source, encode_posterior, encode_prompts, tmp_path / "cache", batch_size=3, encoder_id="tiny"
    )
    assert cached[0]["latent_mean"].shape == (2, 4, 8, 8) and cached[0]["prompt_embeds"][
        "prompt_embeds"
    ].shape == (16, 16)
    assert_matches_on_the_fly(source, cached, encode_posterior, encode_prompts, epochs=2)


def test_stale_cache_is_detected(pairs, tmp_path):
    out = tmp_path / "cache"
    build_cache(_dataset(pairs), fake_posterior, fake_prompts, out, encoder_id="vae-a")
    with pytest.raises(StaleCacheError, match=r"encoder_id: cache has 'vae-a', now 'vae-b'"):
        build_cache(_dataset(pairs), fake_posterior, fake_prompts, out, encoder_id="vae-b")
    with pytest.raises(StaleCacheError, match=r"content.transform.resolution: cache has 16, now 32"):
        CachedPreferenceDataset(out, source=_dataset(pairs, resolution=32))
    with pytest.raises(StaleCacheError, match=r"content.tie_policy: cache has 'drop', now 'half'"):
        build_cache(_dataset(pairs, tie_policy="half"), fake_posterior, fake_prompts, out, encoder_id="vae-a")
    CachedPreferenceDataset(
        out, source=_dataset(pairs, seed=11), encoder_id="vae-a"
    )  # sampling is not content
    write_tiny_pairwise_parquet(tmp_path / "pairs", n_rows=10, ties=1, seed=1)  # the data changed on disk
    stat = os.stat(pairs[0])
    os.utime(pairs[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(StaleCacheError, match=r"content.files\[0\].(mtime_ns|size): cache has"):
        CachedPreferenceDataset(out)
    with pytest.raises(StaleCacheError, match=r"content.files\[0\]"):
        build_cache(_dataset(pairs), fake_posterior, fake_prompts, out, encoder_id="vae-a")
    os.remove(pairs[0])
    assert len(CachedPreferenceDataset(out)) == 9  # self-contained once built


def killed_build(pairs, out):
    """A build killed after shards 0 and 1 (4 encoder calls each); returns the source, the encoder's call log, its
    kill switch (``[None]``: never) and the encoder itself."""
    source, calls, die_after = _dataset(pairs), [], [8]

    def dying_posterior(pixels):
        if len(calls) == die_after[0]:
            raise RuntimeError("killed")
        calls.append(len(pixels))
        return fake_posterior(pixels)

    with pytest.raises(RuntimeError, match="killed"):
        build_cache(source, dying_posterior, fake_prompts, out, batch_size=2, encoder_id="fake")
    return source, calls, die_after, dying_posterior


def test_killed_build_resumes_where_it_stopped(pairs, tmp_path):
    out = tmp_path / "cache"
    source, calls, die_after, dying_posterior = killed_build(pairs, out)
    assert sorted(p.name for p in out.glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    with pytest.raises(RuntimeError, match="incomplete: run build_cache again"):
        CachedPreferenceDataset(out)
    with pytest.raises(ValueError, match="resume with that batch_size, not 4"):
        build_cache(source, fake_posterior, fake_prompts, out, batch_size=4, encoder_id="fake")
    calls.clear()
    die_after[0] = None
    resumed = build_cache(source, dying_posterior, fake_prompts, out, batch_size=2, encoder_id="fake")
    assert sum(calls) == 5 * 2 * 2  # items 4 .. 8 (shards 2, 3, 4) x 2 orientations x 2 candidates
    assert_matches_on_the_fly(source, resumed, epochs=2)
    calls.clear()
    build_cache(source, dying_posterior, fake_prompts, out, batch_size=2, encoder_id="fake")
    assert calls == []  # complete: nothing re-encoded


def test_truncated_shard_and_leftover_temporaries_are_rebuilt_on_resume(pairs, tmp_path, caplog):
    """A shard cut short under its final name (a crash before files were flushed) is re-encoded, not trusted."""
    out = tmp_path / "cache"
    source, calls, die_after, dying_posterior = killed_build(pairs, out)
    shard = out / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    leftovers = [out / ".shard-00002.safetensors.otherhost.123.tmp", out / ".manifest.json.tmp-99"]
    for leftover in leftovers:
        leftover.write_bytes(b"half")
    calls.clear()
    die_after[0] = None
    logging.getLogger("diffusion_align.data.cache").disabled = False  # an earlier hydra run may have disabled it
    with caplog.at_level(logging.WARNING, logger="diffusion_align.data.cache"):
        resumed = build_cache(source, dying_posterior, fake_prompts, out, batch_size=2, encoder_id="fake")
    assert f"{shard}: not a readable safetensors file" in caplog.text and "encoding it again" in caplog.text
    assert sum(calls) == 7 * 2 * 2  # items 2 .. 8 (shards 1 .. 4) x 2 orientations x 2 candidates
    assert not any(leftover.exists() for leftover in leftovers)
    assert_matches_on_the_fly(source, resumed, epochs=1)


@pytest.mark.parametrize("damage", [b"", b"garbage, not a header", "truncated"])
def test_damaged_cache_files_are_named_when_read(pairs, tmp_path, damage):
    out = tmp_path / "cache"
    build_cache(_dataset(pairs), fake_posterior, fake_prompts, out, batch_size=4, encoder_id="fake")
    for name in ("shard-00001.safetensors", "empty_prompt.safetensors"):
        path = out / name
        original = path.read_bytes()
        path.write_bytes(original[:-7] if damage == "truncated" else damage)
        with pytest.raises(CorruptCacheError, match=re.escape(f"latent cache file {path}: not a readable")) as error:
            CachedPreferenceDataset(out)[5]  # shard 1
        assert "delete it (or the whole cache directory) and run build_cache again" in str(error.value)
        path.write_bytes(original)
    assert CachedPreferenceDataset(out)[5]["index"] == 5  # restored: reads again


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "not valid JSON"), ('{"complete": tr', "not valid JSON"), ("{}", r"missing \['format'"),
     ("[1]", "expected a JSON object")],
)
def test_corrupt_manifest_is_named(pairs, tmp_path, text, expected):
    out = tmp_path / "cache"
    build_cache(_dataset(pairs), fake_posterior, fake_prompts, out, batch_size=4, encoder_id="fake")
    (out / "manifest.json").write_text(text)
    message = re.escape(f"latent cache file {out / 'manifest.json'}: ") + f".*{expected}.*run build_cache again"
    with pytest.raises(CorruptCacheError, match=message):
        CachedPreferenceDataset(out)
    with pytest.raises(StaleCacheError, match=message):  # CorruptCacheError is a StaleCacheError
        build_cache(_dataset(pairs), fake_posterior, fake_prompts, out, batch_size=4, encoder_id="fake")


def test_cache_refuses_random_crops_and_other_datasets(pairs, tmp_path):
    with pytest.raises(ValueError, match="random_crop=True cannot be cached"):
        build_cache(
            _dataset(pairs, random_crop=True), fake_posterior, fake_prompts, tmp_path / "c", encoder_id="x"
        )
    with pytest.raises(TypeError, match="expected a PreferenceDataset, got TensorDataset"):
        build_cache(
            TensorDataset(torch.zeros(2)), fake_posterior, fake_prompts, tmp_path / "d", encoder_id="x"
        )


def test_unpaired_view_is_cached_through_its_source(pairs, tmp_path):
    source = UnpairedDataset(_dataset(pairs))
    cached = build_cache(
        source, fake_posterior, fake_prompts, tmp_path / "cache", batch_size=4, encoder_id="fake"
    )
    assert isinstance(cached, UnpairedDataset) and isinstance(cached.source, CachedPreferenceDataset)
    assert len(cached) == len(source) == 18
    for epoch in range(2):
        source.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(source)):
            expected, got = source[index], cached[index]
            assert torch.equal(got["latent_mean"], fake_posterior(expected["pixel_values"])[0])
            assert got["desirable"].tolist() == expected["desirable"].tolist() == [index % 2 == 0]
            assert got["prompt"] == expected["prompt"]


def test_no_hflip_stores_one_orientation_and_workers_build_and_read_shards(pairs, tmp_path):
    source = _dataset(pairs, hflip=False, proportion_empty_prompts=0.0)
    out = tmp_path / "cache"
    cached = build_cache(
        source, fake_posterior, fake_prompts, out, batch_size=4, encoder_id="fake", num_workers=2
    )
    assert [tuple(shape) for shape in _shard_shapes(out, "latent_mean")] == [(4, 1, 2, 3, 4, 4)] * 2 + [
        (1, 1, 2, 3, 4, 4)
    ]
    assert_matches_on_the_fly(source, cached, epochs=1)
    loader = DataLoader(cached, batch_size=4, num_workers=2, collate_fn=collate_preference)
    assert torch.cat([b.index for b in loader]).tolist() == list(range(9))
    unpaired = UnpairedDataset(cached, labelling="per_pair")
    assert unpaired[3]["latent_mean"].shape == (1, 3, 4, 4) and unpaired[3]["desirable"].tolist() == [False]
    assert torch.equal(unpaired[3]["latent_std"][0], cached[1]["latent_std"][1])


def test_ranked_and_video_caches(tiny_ranked, tiny_videos, tmp_path):
    ranked = RankedParquetDataset(tiny_ranked, resolution=16, k=3, same_flip_for_pair=True)
    cached = build_cache(
        ranked, fake_posterior, fake_prompts, tmp_path / "ranked", batch_size=3, encoder_id="fake"
    )
    assert cached[0]["latent_mean"].shape == (3, 3, 4, 4)
    assert_matches_on_the_fly(ranked, cached, epochs=2)
    videos = VideoPairDataset(tiny_videos, resolution=16, tie_policy="half", proportion_empty_prompts=0.5)
    cached = build_cache(
        videos, fake_posterior, fake_prompts, tmp_path / "videos", batch_size=4, encoder_id="fake"
    )
    assert cached[0]["latent_mean"].shape == (2, 4, 3, 4, 4) and len(cached) == 6
    assert_matches_on_the_fly(videos, cached, epochs=2)
