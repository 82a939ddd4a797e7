import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import MIXED_SIZES, embed_config

from fsar.backbones import TINY_MODEL, build_backbone
from fsar.data.feature_store import FeatureStore, FeatureStoreError
from fsar.data.manifest import read_manifest
from fsar.data.video import load_clip
from fsar.embedding import decode_record, embed_manifest, load_backbone


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


def test_decode_ships_native_uint8_centre_squares(mixed_videos):
    manifest, tmp = mixed_videos
    cfg = embed_config(manifest, tmp / "store")
    for row in read_manifest(manifest).to_pylist():
        record = decode_record(row, cfg)
        if row["video_id"] == "text":
            assert record["clip"] is None and "cannot be decoded" in record["error"]
            continue
        h, w = MIXED_SIZES[int(row["video_id"][1:])]
        side = min(h, w)
        assert record["error"] is None and record["clip"].dtype == np.uint8
        assert record["clip"].shape == (4, side, side, 3) and record["clip"].flags.c_contiguous
        full = load_clip(row["path"], num_segments=4).frames
        top, left = (h - side) // 2, (w - side) // 2
        np.testing.assert_array_equal(record["clip"], full[:, top : top + side, left : left + side])


def _old_cpu_features(backbone, path: str, *, frames: int, grid: int, fp16_pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """The computation the embed job did before pixels travelled as uint8: FramePreprocess (eval) on the CPU,
    optionally the fp16 round trip the pixels took, then the backbone in fp32 and the patch grid averaged
    to ``grid``×``grid`` blocks. Returns pooled ``(T, D)`` and flattened patches ``(T, grid·grid·D)``."""
    pixels = backbone.preprocess(load_clip(path, num_segments=frames).frames)
    if fp16_pixels:
        pixels = pixels.half().float()
    with torch.no_grad():
        pooled, patches = backbone.encode(pixels, patches=True)
    g0, d = patches.shape[1], patches.shape[-1]
    k = g0 // grid
    blocks = patches.reshape(frames, grid, k, grid, k, d).mean(dim=(2, 4))  # g0×g0 → grid×grid by block means
    return pooled.numpy(), blocks.reshape(frames, -1).numpy()


def test_uint8_path_stores_the_features_of_cpu_preprocessing(mixed_videos):
    """Videos of five native sizes (enlarged, reduced, only cropped) in one encoder batch: the stored
    features are those of FramePreprocess on the CPU followed by the backbone.

    Against the exact float32 computation the only error left is the fp16 storage, at most half an fp16
    ulp (≤ 2^-11·|x|); the bound used is one ulp (2^-10·|x|) plus 1e-5 for entries near zero, where the
    float32 summation order of a different batch composition shows. Against what the previous code
    stored (pixels rounded to fp16 before the encoder) the features differ by that rounding carried
    through the network: within 2e-3 absolute (features are O(1))."""
    manifest, tmp = mixed_videos
    cfg = embed_config(manifest, tmp / "store", batch_size=8)
    summary = embed_manifest(cfg, progress=False)
    assert (summary.videos, summary.failures) == (6, 1)
    store = FeatureStore(tmp / "store")
    pooled = store.load_split("test", view="pooled")
    grid = store.load_split("test", view="grid")
    backbone = build_backbone(TINY_MODEL)  # the same seeded random init the embed job used
    for i in range(len(MIXED_SIZES)):
        path, row = str(tmp / "mixed" / f"v{i}.mp4"), pooled.video_ids.index(f"v{i}")
        stored = (pooled.features[row].astype(np.float32), grid.features[grid.video_ids.index(f"v{i}")].astype(np.float32))
        exact = _old_cpu_features(backbone, path, frames=4, grid=2, fp16_pixels=False)
        before = _old_cpu_features(backbone, path, frames=4, grid=2, fp16_pixels=True)
        for got, want, old in zip(stored, exact, before, strict=True):
            np.testing.assert_allclose(got, want, rtol=2**-10, atol=1e-5)
            np.testing.assert_allclose(got, old, rtol=0, atol=2e-3)


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
    with pytest.raises(FeatureStoreError, match="frames=4.*delete"):  # one line from the CLI, no traceback
        embed_manifest(other, progress=False)


def test_default_weights_of_a_model_without_tags_are_a_seeded_random_init(tmp_path):
    # How `default`, `none` and paths resolve is tested on fsar.backbones.weights.resolve_weights.
    from fsar.embedding import EmbedConfig

    backbone = load_backbone(EmbedConfig(manifest=tmp_path / "m.parquet", out=tmp_path / "s", backbone=TINY_MODEL))
    assert backbone.pretrained is None and backbone.init_seed == 0


def test_sizes_below_one_are_refused(videos):
    from fsar.config import ConfigError

    manifest, tmp = videos
    with pytest.raises(ConfigError, match="chunk_size=0 must be at least 1"):
        embed_config(manifest, tmp / "store", chunk_size=0)


def test_parts_of_unfinished_shards_outlive_a_partial_run(videos):
    """A run limited to one shard merges that shard and clears the parts of shards finished earlier, but keeps
    the parts an interrupted run wrote for shards it does not reach."""
    from fsar import storage
    from fsar.embedding import decode_chunk, load_backbone, part_path, plan_embedding, write_chunk

    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store", chunk_size=2)
    backbone = load_backbone(cfg, device="cpu")
    plan = plan_embedding(cfg, backbone)
    last = [c for c in plan.chunks if c.shard == plan.todo[-1]][0]  # an interrupted run got this far
    write_chunk(last, decode_chunk(last, cfg), backbone, cfg)
    embed_manifest(cfg, progress=False, max_shards=1)
    assert storage.is_file(part_path(cfg.out, last.shard, (last.start, last.stop)))
    summary = embed_manifest(cfg, progress=False)
    assert summary.videos == 6 and not storage.list_files(tmp / "store" / "parts", recursive=True)


def test_the_advice_for_damaged_store_metadata_works(videos):
    """Delete the damaged store.json and rerun the same embed: it is written again, no shard is re-embedded."""
    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store")
    first = embed_manifest(cfg, progress=False)
    (tmp / "store" / "store.json").unlink()
    again = embed_manifest(cfg, progress=False)
    assert again.shards_written == 0 and again.videos == first.videos
    assert FeatureStore(tmp / "store").meta.frames == cfg.frames
