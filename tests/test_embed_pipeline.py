"""The Ray Data embed job: same store as the local engine, failures recorded, resumable."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from conftest import embed_config

from fsar.data.feature_store import FeatureStore
from pipelines.embed import run


def test_ray_engine_matches_local_engine_and_records_failures(videos, ray_local):
    manifest, tmp = videos
    summary = run(embed_config(manifest, tmp / "ray"), progress=False)
    assert (summary.videos, summary.failures, summary.shards_written) == (6, 3, 3)
    local = run(embed_config(manifest, tmp / "local", engine="local"), progress=False)
    assert local.videos == 6
    a = FeatureStore(tmp / "ray").load_split("test")
    b = FeatureStore(tmp / "local").load_split("test")
    order = [a.video_ids.index(v) for v in b.video_ids]
    np.testing.assert_allclose(a.features[order].astype(np.float32), b.features.astype(np.float32), atol=1e-3)
    reasons = pq.read_table(tmp / "ray" / "failures.parquet").to_pydict()
    assert sorted(reasons["video_id"]) == ["cut", "empty", "text"]


def test_ray_engine_resumes_after_interruption(videos, ray_local):
    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store")
    assert run(cfg, progress=False, max_shards=2).shards_written == 2
    again = run(cfg, progress=False)
    assert (again.shards_written, again.shards_skipped) == (1, 2)
    ids = FeatureStore(tmp / "store").table["video_id"].to_pylist()
    assert sorted(ids) == [f"good{i}" for i in range(6)] and len(ids) == len(set(ids))
