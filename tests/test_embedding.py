import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import embed_config

from fsar.backbones import TINY_MODEL, build_backbone
from fsar.data.feature_store import FeatureStore
from fsar.embedding import decode_record, embed_manifest, encode_pixels, resolve_pretrained


def test_good_rows_stored_and_failures_listed(videos):
    manifest, tmp = videos
    summary = embed_manifest(embed_config(manifest, tmp / "store"), progress=False)
    assert (summary.videos, summary.failures, summary.shards_written) == (6, 3, 3)
    store = FeatureStore(tmp / "store")
    split = store.load_split("test", view="pooled")
    assert sorted(split.video_ids) == [f"good{i}" for i in range(6)]
    assert split.features.shape == (6, 4, 64) and np.isfinite(split.features).all()
    assert store.load_split("test", view="grid").features.shape == (6, 4, 2 * 2 * 64)
    failures = pq.read_table(tmp / "store" / "failures.parquet").to_pylist()
    reasons = {f["video_id"]: f["reason"] for f in failures}
    assert set(reasons) == {"empty", "text", "cut"}
    assert "empty" in reasons["empty"] and "cannot be decoded" in reasons["text"]
    table = store.table.to_pylist()
    good0 = next(r for r in table if r["video_id"] == "good0")
    assert good0["num_frames"] == 12 and good0["frame_indices"] == [1, 4, 7, 10]


def test_stored_features_equal_a_direct_forward(videos):
    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store")
    embed_manifest(cfg, progress=False)
    stored = FeatureStore(tmp / "store").load_split("test", view="pooled")
    backbone = build_backbone(TINY_MODEL)  # the same seeded random init the embed job used
    record = decode_record({"video_id": "good3", "path": str(tmp / "videos" / "good3.mp4"), "label": 1,
                            "class_name": "c1", "split": "test"}, cfg, backbone.preprocess)
    assert record["error"] is None and record["pixels"].shape == (4, 3, 64, 64)
    pixels = torch.from_numpy(record["pixels"]).float()
    frames, patches = encode_pixels(backbone, pixels[None], patch_grid=2)
    with torch.no_grad():
        pooled, grid = backbone.encode(pixels, patches=True)
    np.testing.assert_allclose(frames[0].astype(np.float32), pooled.numpy(), atol=2e-3, rtol=1e-2)
    pooled_grid = grid.reshape(4, 2, 4, 2, 4, 64).mean(dim=(2, 4))  # 8×8 → 2×2 by averaging 4×4 blocks
    np.testing.assert_allclose(patches[0].astype(np.float32), pooled_grid.numpy(), atol=2e-3, rtol=1e-2)
    row = stored.video_ids.index("good3")
    np.testing.assert_allclose(stored.features[row].astype(np.float32), frames[0].astype(np.float32), atol=2e-3)


def test_interrupted_run_resumes_without_duplicates(videos):
    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store")
    first = embed_manifest(cfg, progress=False, max_shards=1)
    assert first.shards_written == 1
    second = embed_manifest(cfg, progress=False)
    assert second.shards_written == 2 and second.shards_skipped == 1
    ids = FeatureStore(tmp / "store").table["video_id"].to_pylist()
    assert sorted(ids) == [f"good{i}" for i in range(6)]
    again = embed_manifest(cfg, progress=False)
    assert again.shards_written == 0 and again.videos == 6 and again.failures == 3


def test_rerun_with_other_settings_is_refused(videos):
    manifest, tmp = videos
    embed_manifest(embed_config(manifest, tmp / "store"), progress=False, max_shards=1)
    other = embed_config(manifest, tmp / "store", frames=8)
    with pytest.raises(ValueError, match="frames=4.*delete"):
        embed_manifest(other, progress=False)


def test_resolve_pretrained():
    assert resolve_pretrained("ViT-B-16", "default") == "openai"
    assert resolve_pretrained(TINY_MODEL, "default") is None
    assert resolve_pretrained("ViT-B-16", "none") is None
    assert resolve_pretrained("ViT-B-16", "/w.pt") == "/w.pt"
