import numpy as np
import pytest

from fsar.data.feature_store import (
    FeatureStore,
    FeatureStoreError,
    StoreMeta,
    finished_shards,
    read_meta,
    write_meta,
    write_shard,
)

META = StoreMeta(backbone="fsar-tiny", pretrained=None, frames=4, embed_dim=6, patch_grid=2, image_size=64)


def rows(start, n, split="test"):
    rng = np.random.default_rng(start)
    return [
        {"video_id": f"v{i}", "label": i % 3, "class_name": f"c{i % 3}", "split": split, "num_frames": 30,
         "frame_indices": [1, 2, 3, 4], "frames": rng.normal(size=(4, 6)), "patches": rng.normal(size=(4, 2, 2, 6))}
        for i in range(start, start + n)
    ]


@pytest.fixture
def store(tmp_path):
    write_meta(tmp_path, META)
    a, b = rows(0, 5), rows(5, 4, split="train")
    write_shard(tmp_path, 0, a)
    write_shard(tmp_path, 1, b)
    return tmp_path, a + b


def test_round_trip_views(store):
    root, written = store
    fs = FeatureStore(root)
    assert fs.meta == read_meta(root) and fs.splits() == ["test", "train"]
    test = fs.load_split("test", view="pooled")
    assert test.features.shape == (5, 4, 6) and test.features.dtype == np.float16
    np.testing.assert_allclose(test.features[2], written[2]["frames"].astype(np.float16))
    assert fs.load_split("test").features.shape == (5, 4, 6)  # the default is the pooled embedding, grid or not
    assert fs.meta.view_for("frames") == "pooled" and fs.meta.view_for("frames", "grid") == "grid"
    assert fs.meta.view_for("patches") == "patches"  # patch methods still read the grid they need
    assert fs.meta.view_for("patches", "grid") == "patches"  # one data.view=grid serves both kinds of method
    grid = fs.load_split("test", view="grid")
    assert grid.features.shape == (5, 4, 24)
    np.testing.assert_allclose(grid.features[1], written[1]["patches"].reshape(4, 24).astype(np.float16))
    assert test.labels.tolist() == [0, 1, 2, 0, 1] and test.class_names == {0: "c0", 1: "c1", 2: "c2"}


def test_finished_shards_ignore_temporary_files(store):
    root, _ = store
    (root / ".shard-00002.parquet.abc.tmp").write_bytes(b"partial")
    assert finished_shards(root) == {0, 1}


def test_mismatched_store_is_refused(store):
    root, _ = store
    fs = FeatureStore(root)
    fs.check(backbone="fsar-tiny", frames=4)
    with pytest.raises(FeatureStoreError, match="built with backbone 'fsar-tiny' but the job expects 'ViT-B-16'"):
        fs.check(backbone="ViT-B-16")
    with pytest.raises(FeatureStoreError, match="4 frames per video, the job expects 8"):
        fs.check(frames=8)
    with pytest.raises(FeatureStoreError, match="no videos in split 'val'"):
        fs.load_split("val")


def test_not_a_store(tmp_path):
    with pytest.raises(FeatureStoreError, match="not a feature store"):
        FeatureStore(tmp_path)
    write_meta(tmp_path, StoreMeta(backbone="b", pretrained=None, frames=4, embed_dim=6, patch_grid=0, image_size=8))
    with pytest.raises(FeatureStoreError, match="no shards"):
        FeatureStore(tmp_path).load_split("test")
    with pytest.raises(FeatureStoreError, match="no patch grid"):
        FeatureStore(tmp_path).check(view="grid")


def test_split_labels_read_without_features(store):
    root, _ = store
    fs = FeatureStore(root)
    labels, names = fs.split_labels("test")
    assert fs._table is None  # no feature bytes were read
    full = fs.load_split("test")
    assert labels.tolist() == full.labels.tolist() and names == full.class_names
    with pytest.raises(FeatureStoreError, match="no videos in split 'val'"):
        fs.split_labels("val")


def test_a_job_reads_only_its_split_and_its_view(tmp_path):
    """Train rows whose grid bytes are damaged: a read of the test split, or of the pooled view, never
    touches them (a read that did would fail the row-size check), and a read of the train grid does."""
    write_meta(tmp_path, META)
    damaged = rows(10, 6, split="train")
    for r in damaged:
        r["patches"] = r["patches"][:, :1]  # half the grid: the wrong number of values per row
    write_shard(tmp_path, 0, rows(0, 5)[:2] + damaged + rows(2, 3))  # splits interleaved within one shard
    fs = FeatureStore(tmp_path)
    test = fs.load_split("test", view="grid")
    assert test.features.shape == (5, 4, 24) and test.video_ids == ["v0", "v1", "v2", "v3", "v4"]
    np.testing.assert_allclose(test.features[3], rows(2, 3)[1]["patches"].reshape(4, 24).astype(np.float16))
    assert fs.load_split("train", view="pooled").features.shape == (6, 4, 6)
    with pytest.raises(FeatureStoreError, match="expected 96 .* the store is damaged, re-embed"):
        fs.load_split("train", view="grid")
    with pytest.raises(FeatureStoreError, match=r"no videos in split 'val' \(has \['test', 'train'\]\)"):
        fs.load_split("val")


def test_a_patch_method_on_a_store_without_a_grid_is_refused_unless_it_asks_for_the_pooled_view():
    from fsar.data.feature_store import FeatureStoreError, StoreMeta

    pooled_only = StoreMeta(backbone="fsar-tiny", pretrained=None, frames=4, embed_dim=6, patch_grid=0, image_size=64)
    for asked in ("auto", "grid", "patches"):
        with pytest.raises(FeatureStoreError, match="embed again with --patch-grid 4.*data.view=pooled"):
            pooled_only.view_for("patches", asked)
    assert pooled_only.view_for("patches", "pooled") == "pooled"  # the 1x1 grid, on purpose
    assert pooled_only.view_for("frames") == "pooled"


def test_damaged_store_metadata_is_named_with_a_fix_that_works(store):
    from fsar.data.feature_store import FeatureStoreError

    root, _ = store
    meta = root / "store.json"
    meta.write_text(meta.read_text()[:20])
    with pytest.raises(FeatureStoreError, match=f"{meta} does not read.*delete it and rerun the `fsar embed`"):
        read_meta(root)


@pytest.mark.parametrize("view,as_grid,shape", [("pooled", False, (4, 6)), ("grid", False, (4, 24)),
                                                ("patches", False, (4, 2, 2, 6)), ("pooled", True, (4, 1, 1, 6))])
def test_a_shard_read_alone_holds_every_split_in_the_view_asked(store, view, as_grid, shape):
    root, written = store
    fs = FeatureStore(root)
    ids, features = [], []
    for shard in fs.shard_files():
        part_ids, part = fs.read_shard(shard, view=view, as_grid=as_grid)
        ids += part_ids
        features.append(part)
    features = np.concatenate(features)
    assert ids == [r["video_id"] for r in written] and features.shape == (9, *shape)
    column = "frames" if view == "pooled" else "patches"
    np.testing.assert_allclose(features[6].reshape(-1), written[6][column].astype(np.float16).reshape(-1))
