"""The Ray Data embed job: same store as the local engine, failures recorded, resumable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from helpers import embed_config

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


def test_an_embed_job_records_its_store_in_mlflow(videos):
    from mlflow.tracking import MlflowClient

    manifest, tmp = videos
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run(embed_config(manifest, tmp / "tracked", engine="local", mlflow=True, mlflow_uri=uri), progress=False)
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run((tmp / "tracked" / "mlflow_run_id").read_text().strip())
    meta = FeatureStore(tmp / "tracked").meta
    assert logged.data.params["backbone"] == meta.backbone and int(logged.data.params["frames"]) == meta.frames
    assert (logged.data.metrics["videos"], logged.data.metrics["failures"]) == (6, 3)
    assert "failures.parquet" in {a.path for a in client.list_artifacts(logged.info.run_id)}


def test_ray_engine_resumes_after_interruption(videos, ray_local):
    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store")
    assert run(cfg, progress=False, max_shards=2).shards_written == 2
    again = run(cfg, progress=False)
    assert (again.shards_written, again.shards_skipped) == (1, 2)
    ids = FeatureStore(tmp / "store").table["video_id"].to_pylist()
    assert sorted(ids) == [f"good{i}" for i in range(6)] and len(ids) == len(set(ids))


def test_decode_task_ships_uint8_clips_of_native_size(mixed_videos):
    """The CPU half of the GPU layout, without Ray: a task reads its chunk's rows from the manifest itself and
    ships one row per chunk holding uint8 centre squares, one per video at the video's own size; a failed
    video ships its reason instead."""
    import pickle

    from helpers import MIXED_SIZES

    from pipelines.embed import _decode_chunks

    manifest, tmp = mixed_videos
    batch = {"shard": np.array([0, 0]), "start": np.array([0, 4]), "stop": np.array([4, 7])}
    out = _decode_chunks(batch, config=embed_config(manifest, tmp / "store"))
    records = [r for payload in out["records"] for r in pickle.loads(payload)]
    assert [len(pickle.loads(p)) for p in out["records"]] == [4, 3]
    assert len({r["video_id"] for r in records}) == 7
    for r in records:
        if r["video_id"] == "text":
            assert r["clip"] is None and "cannot be decoded" in r["error"]
        else:
            side = min(MIXED_SIZES[int(r["video_id"][1:])])
            assert r["clip"].dtype == np.uint8 and r["clip"].shape == (4, side, side, 3) and r["error"] is None


def test_decode_tasks_feed_encoder_actors_with_mixed_sizes(mixed_videos, ray_local):
    """The GPU cluster layout run on CPUs (the actor asks for no GPU): decode tasks ship uint8 clips of
    several native sizes through Ray's object store to an encoder actor, which writes the parts itself and
    hands back counts only; the merged store equals the local engine's (fp16 storage: one ulp) and the
    broken video is a failure."""
    import pipelines.embed as embed
    from fsar.embedding import load_backbone, merge_shard, plan_embedding

    manifest, tmp = mixed_videos
    cfg = embed_config(manifest, tmp / "ray", device="cpu", chunk_size=3, batch_size=2, shard_size=100)
    plan = plan_embedding(cfg, load_backbone(cfg, device="cpu"))
    items = [dataclasses.asdict(c) for c in plan.chunks]
    ds = embed._decode_then_encode(ray_local.data.from_items(items), cfg, actors=1, gpus_per_actor=0)
    reports = list(ds.iter_rows())
    assert all(set(r) == {"shard", "start", "videos", "failures"} for r in reports)  # no pixels, no features
    assert sum(r["videos"] for r in reports) == 6 and sum(r["failures"] for r in reports) == 1
    merge_shard(cfg.out, 0, plan.parts[0])
    run(embed_config(manifest, tmp / "local", batch_size=8), progress=False)
    local = FeatureStore(tmp / "local").load_split("test", view="pooled")
    ray = FeatureStore(tmp / "ray").load_split("test", view="pooled")
    assert sorted(ray.video_ids) == sorted(local.video_ids) == [f"v{i}" for i in range(6)]
    order = [ray.video_ids.index(v) for v in local.video_ids]
    np.testing.assert_allclose(ray.features[order].astype(np.float32), local.features.astype(np.float32),
                               rtol=2**-10, atol=1e-5)


def test_ray_engine_embeds_videos_on_object_storage_into_a_store_there(videos, ray_local, s3):
    """Manifest, videos and store all in a bucket (relative video paths resolve against the manifest's
    folder): the Ray job reads, decodes and writes there, resumes there, and the store reads back equal
    to a local one."""
    from fsar import storage
    from fsar.data.feature_store import read_table
    from fsar.data.manifest import read_manifest, write_manifest

    manifest, tmp = videos
    table = read_manifest(manifest, resolve_paths=False).to_pylist()
    for row in table:
        storage.write_bytes(f"{s3}/data/videos/{row['video_id']}.mp4", Path(row["path"]).read_bytes())
        row["path"] = f"videos/{row['video_id']}.mp4"
    remote_manifest = write_manifest(table, f"{s3}/data/manifest.parquet")
    cfg = embed_config(remote_manifest, f"{s3}/store", chunk_size=2)
    assert run(cfg, progress=False, max_shards=1).shards_written == 1
    summary = run(cfg, progress=False)
    assert (summary.videos, summary.failures, summary.shards_written, summary.shards_skipped) == (6, 3, 2, 1)
    assert storage.list_files(f"{s3}/store/parts", recursive=True) == []  # merged and cleared
    run(embed_config(manifest, tmp / "local"), progress=False)
    remote, local = FeatureStore(f"{s3}/store").load_split("test"), FeatureStore(tmp / "local").load_split("test")
    assert remote.video_ids == local.video_ids
    np.testing.assert_array_equal(remote.features, local.features)
    assert sorted(read_table(f"{s3}/store/failures.parquet")["video_id"].to_pylist()) == ["cut", "empty", "text"]
