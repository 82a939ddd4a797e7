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
    """The CPU half of the GPU layout, without Ray: one object column of uint8 centre squares, one per row
    at the video's own size; a failed video ships an empty clip of the same rank and its reason."""
    from conftest import MIXED_SIZES

    from fsar.data.manifest import read_manifest
    from pipelines.embed import _decode_batch

    manifest, tmp = mixed_videos
    table = read_manifest(manifest)
    batch = {k: np.asarray(table[k].to_pylist(), dtype=object) for k in table.column_names}
    batch["shard"] = np.zeros(len(table), dtype=np.int64)
    out = _decode_batch(batch, config=embed_config(manifest, tmp / "store"))
    assert out["clip"].dtype == object
    for video_id, clip, error in zip(out["video_id"], out["clip"], out["error"], strict=True):
        assert clip.dtype == np.uint8
        if video_id == "text":
            assert clip.shape == (4, 0, 0, 3) and "cannot be decoded" in error
        else:
            side = min(MIXED_SIZES[int(video_id[1:])])
            assert clip.shape == (4, side, side, 3) and error == ""


def test_decode_tasks_feed_encoder_actors_with_mixed_sizes(mixed_videos, ray_local):
    """The GPU cluster layout run on CPUs (the actor asks for no GPU): decode tasks ship uint8 clips of
    several native sizes through Ray's object store to an encoder actor, batches spanning decode tasks;
    the features equal the local engine's (fp16 storage: one ulp) and the broken video is a failure."""
    from fsar.data.manifest import read_manifest
    from pipelines.embed import _decode_then_encode

    manifest, tmp = mixed_videos
    cfg = embed_config(manifest, tmp / "ray", device="cpu", decode_batch=3, batch_size=4)
    items = [dict(row, shard=0) for row in read_manifest(manifest).to_pylist()]
    ds = _decode_then_encode(ray_local.data.from_items(items), cfg, actors=1, gpus_per_actor=0)
    rows = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        assert "clip" not in batch  # pixels stop at the encoder
        for i, video_id in enumerate(batch["video_id"]):
            rows[str(video_id)] = (str(batch["error"][i]), batch["frames"][i].astype(np.float32))
    assert set(rows) == {"text", *(f"v{i}" for i in range(6))} and "cannot be decoded" in rows["text"][0]
    run(embed_config(manifest, tmp / "local", batch_size=8), progress=False)
    local = FeatureStore(tmp / "local").load_split("test", view="pooled")
    for row, video_id in enumerate(local.video_ids):
        error, frames = rows[video_id]
        assert error == ""
        np.testing.assert_allclose(frames, local.features[row].astype(np.float32), rtol=2**-10, atol=1e-5)
