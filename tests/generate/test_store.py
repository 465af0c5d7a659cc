"""ShardStore: shard plan and worker split, atomic writes, markers, stale temporaries, manifest checks."""

from __future__ import annotations

import json
import logging
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import diffusion_align.generate.store as store_module
from diffusion_align.generate import ManifestMismatchError, Shard, ShardStore, Worker, plan_shards
from diffusion_align.generate.dataset import run_shards
from diffusion_align.generate.store import flatten, temporary_path


def test_plan_covers_every_prompt_once_and_workers_split_it():
    shards = plan_shards(10, 4)
    assert [(s.index, s.start, s.stop) for s in shards] == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    owners = [[s.index for s in shards if Worker(w, 2).owns(s)] for w in range(2)]
    assert owners == [[0, 2], [1]]
    with pytest.raises(ValueError, match="prompts_per_shard 0"):
        plan_shards(10, 0)
    with pytest.raises(ValueError, match="worker index 2: expected 0 <= index < count"):
        Worker(2, 2)


def test_write_renames_tables_then_marker_and_leaves_no_temporary(tmp_path):
    store = ShardStore(tmp_path, ("ranked", "pairs"), row_group_size=2)
    shard = Shard(3, 6, 8)
    tables = {"ranked": pa.table({"x": list(range(5))}), "pairs": pa.table({"y": [1.0]})}
    assert not store.is_complete(shard)
    store.write(shard, tables, {"n": 5}, Worker(1, 2))
    assert store.is_complete(shard)
    ranked = pq.ParquetFile(tmp_path / "ranked" / "shard-00003.parquet")
    assert ranked.metadata.num_row_groups == 3 and ranked.read().equals(tables["ranked"])
    marker = json.loads((tmp_path / "shards" / "shard-00003.json").read_text())
    assert marker == {"shard": 3, "prompts": [6, 8], "rows": {"ranked": 5, "pairs": 1}, "stats": {"n": 5},
                      "worker": [1, 2]}
    assert not list(tmp_path.rglob("*.tmp"))
    assert list(store.markers([Shard(0, 0, 2), shard])) == [marker]
    with pytest.raises(ValueError, match=r"got tables \['ranked'\], expected \['pairs', 'ranked'\]"):
        store.write(shard, {"ranked": tables["ranked"]}, {}, Worker())


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    store = ShardStore(tmp_path, ("ranked",))
    shard = Shard(0, 0, 1)
    store.write(shard, {"ranked": pa.table({"x": [1]})}, {}, Worker())

    def write_half_then_fail(table, path, **kwargs):
        path.write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(store_module.pq, "write_table", write_half_then_fail)
    (tmp_path / "shards" / "shard-00000.json").unlink()
    with pytest.raises(OSError, match="disk full"):
        store.write(shard, {"ranked": pa.table({"x": [2]})}, {}, Worker())
    monkeypatch.undo()
    assert pq.read_table(tmp_path / "ranked" / "shard-00000.parquet")["x"].to_pylist() == [1]
    assert not list(tmp_path.rglob("*.tmp")) and not store.is_complete(shard)


def test_remove_stale_deletes_only_this_shards_temporaries(tmp_path):
    store = ShardStore(tmp_path, ("ranked",))
    (tmp_path / "ranked").mkdir()
    mine = tmp_path / "ranked" / ".shard-00001.parquet.host.12.tmp"
    other = tmp_path / "ranked" / ".shard-00002.parquet.host.12.tmp"
    (tmp_path / "shards").mkdir()
    marker = tmp_path / "shards" / ".shard-00001.json.host.12.tmp"
    for path in (mine, other, marker):
        path.write_text("x")
    store.remove_stale(Shard(1, 1, 2))
    assert not mine.exists() and not marker.exists() and other.exists()
    assert temporary_path(tmp_path / "a.parquet").name.startswith(".a.parquet.")


def test_manifest_is_created_once_and_checked(tmp_path):
    shards = plan_shards(4, 2)
    config = {"seed": 0, "pipelines": [{"name": "a", "call": {"steps": 2}}], "pairs": ("x", 1)}
    ShardStore(tmp_path, ("ranked",)).open(config, shards)
    ShardStore(tmp_path, ("ranked",)).open(config, shards)  # same config: fine (tuples stored as lists)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["shards"] == [[0, 2], [2, 4]] and manifest["config"]["pairs"] == ["x", 1]
    with pytest.raises(ManifestMismatchError, match=r"config.seed: 0 \(manifest\) != 1 \(now\)"):
        ShardStore(tmp_path, ("ranked",)).open({**config, "seed": 1}, shards)
    with pytest.raises(ManifestMismatchError, match=r"tables: \['ranked'\] \(manifest\) != \['pairs'\] \(now\)"):
        ShardStore(tmp_path, ("pairs",)).open(config, shards)
    with pytest.raises(ManifestMismatchError, match="config.extra: '<absent>' \\(manifest\\) != 3 \\(now\\)"):
        ShardStore(tmp_path, ("ranked",)).open({**config, "extra": 3}, shards)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert flatten({"a": {"b": 1, "c": [1]}}) == {"a.b": 1, "a.c": [1]}


@pytest.mark.parametrize("text", ["", '{"shard": 0, "pro', "[]", '{"shard": 0}'])
def test_damaged_marker_counts_as_incomplete_and_the_shard_is_redone(tmp_path, caplog, monkeypatch, text):
    """A marker cut short (a crash, a disk error) must neither stop the run nor be trusted: the shard is redone."""
    # a hydra run earlier in the session (logging config with disable_existing_loggers) may have disabled the logger
    monkeypatch.setattr(logging.getLogger("diffusion_align.generate.store"), "disabled", False)
    store = ShardStore(tmp_path, ("ranked",))
    shards = plan_shards(4, 2)
    for shard in shards:
        store.write(shard, {"ranked": pa.table({"x": [shard.index]})}, {"n": 1}, Worker())
    marker = store.marker_path(shards[1])
    marker.write_text(text)
    with caplog.at_level(logging.WARNING, logger="diffusion_align.generate.store"):
        assert not store.is_complete(shards[1]) and [m["shard"] for m in store.markers(shards)] == [0]
    assert f"completion marker {marker} is damaged" in caplog.text and "shard-00001 counts as incomplete" in caplog.text
    built = []

    def build(shard, advance):
        built.append(shard.index)
        return {"ranked": pa.table({"x": [shard.index]})}, {"n": 1}

    assert run_shards(store, shards, Worker(), build, 1, progress=False) == 1 and built == [1]
    assert [m["shard"] for m in store.markers(shards)] == [0, 1]


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]", "\xff\xfe"])
def test_damaged_manifest_is_named(tmp_path, text):
    (tmp_path / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ManifestMismatchError, match=re.escape(str(tmp_path / "manifest.json")) + ": .*"
                       "expected the JSON object a generate run writes. If you are resuming with the same configuration"):
        ShardStore(tmp_path, ("ranked",)).open({"seed": 0}, plan_shards(2, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporary left


def test_manifest_is_flushed_to_disk_before_it_is_linked(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: events.append("fsync"))
    real_link = store_module.os.link
    monkeypatch.setattr(store_module.os, "link", lambda *a: (events.append("link"), real_link(*a)))
    ShardStore(tmp_path, ("ranked",)).open({"seed": 0}, plan_shards(2, 1))
    assert events == ["fsync", "link"]
