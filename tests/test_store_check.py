"""fsar.data.store_check: `fsar store check` finds a damaged shard and names the fix; `fsar embed --repair`
re-embeds exactly that shard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import embed_config

from fsar.data.feature_store import FeatureStore, FeatureStoreError
from fsar.data.store_check import check_store, record_path
from fsar.embedding import embed_manifest
from pipelines.cli import main as cli


@pytest.fixture
def store(videos):
    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store")  # 9 rows in shards of 3: 3 shards
    embed_manifest(cfg, progress=False)
    return cfg


def test_a_whole_store_checks_clean(store, capsys):
    problems, shards = check_store(store.out)
    assert problems == [] and shards == 3 and record_path(store.out, 0).is_file()
    assert cli(["store", "check", str(store.out)]) == 0
    assert "3 shard(s) checked, no damage" in capsys.readouterr().out


def test_a_truncated_shard_is_named_and_repair_re_embeds_exactly_it(store, capsys):
    before = FeatureStore(store.out).load_split("test").features.copy()
    shard = store.out / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-40])
    problems, _ = check_store(store.out)
    assert [(p.shard, p.where) for p in problems] == [(1, str(shard))] and "does not read" in problems[0].what
    assert cli(["store", "check", str(store.out)]) == 1
    printed = capsys.readouterr().out
    assert str(shard) in printed and "--repair" in printed
    with pytest.raises(FeatureStoreError, match="does not read.*fsar store check.*--repair"):
        FeatureStore(store.out).load_split("test")
    repaired = embed_manifest(dataclasses.replace(store, repair=True), progress=False)
    assert repaired.shards_written == 1 and check_store(store.out)[0] == []
    np.testing.assert_array_equal(FeatureStore(store.out).load_split("test").features, before)


def test_changed_bytes_of_the_same_size_fail_the_checksum(store):
    shard = store.out / "shard-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the data pages: it may still read, but it is not what was merged
    shard.write_bytes(bytes(data))
    problems, _ = check_store(store.out)
    assert [p.shard for p in problems] == [2]
    assert any(s in problems[0].what for s in ("checksum", "does not read"))
