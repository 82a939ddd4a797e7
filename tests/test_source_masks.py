"""fsar.sources.masks: up-front checks, the train split's mask table, per-episode Supervision."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from helpers import I2ST_SMALL, i2st_config, make_actor_patch_store

from fsar.config import ConfigError
from fsar.data.episodes import EpisodeSampler
from fsar.data.feature_store import FeatureStore
from fsar.evaluation.scoring import gather_episodes
from fsar.methods import build_method
from fsar.methods.base import MaskRequest
from fsar.sources.masks import MaskTable, check_mask_inputs, load_mask_table
from fsar.training.loop import check_training_inputs


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("masksup")
    make_actor_patch_store(root / "store", masks_root=root / "masks")
    make_actor_patch_store(root / "plain", text=False)
    return root / "store", root / "masks", root / "plain"


def i2st(**knobs):
    return build_method("i2st", feature_dim=16, **(I2ST_SMALL | knobs))


def test_store_splits_carry_their_sampled_frame_numbers(stores):
    split = FeatureStore(stores[0]).load_split("train", view="patches")
    assert split.frame_indices.shape == (48, 4) and split.frame_indices.dtype == np.int64
    assert (np.diff(split.frame_indices, axis=1) == 3).all()  # as make_actor_patch_store wrote them


def test_mask_request_of_methods_with_and_without_the_knob(stores):
    assert build_method("otam", feature_dim=16).mask_request is None
    assert i2st().mask_request is None and i2st(mask_source="pseudo").mask_request == MaskRequest("pseudo", "")
    assert i2st(mask_source="files", mask_files="m").mask_request == MaskRequest("files", "m")
    store = FeatureStore(stores[0])
    assert load_mask_table(i2st(), store, store.load_split("train", view="patches")) is None
    assert load_mask_table(i2st(mask_source="pseudo"), store, store.load_split("train", view="patches")) is None


def test_up_front_checks(stores, tmp_path):
    store, masks, plain = stores
    check_mask_inputs(i2st(mask_source="files", mask_files=str(masks)), FeatureStore(store))
    check_mask_inputs(i2st(mask_source="pseudo"), FeatureStore(store))
    with pytest.raises(ConfigError, match="is not a folder.*fsar masks"):
        check_mask_inputs(i2st(mask_source="files", mask_files=str(tmp_path / "none")), FeatureStore(store))
    with pytest.raises(ConfigError, match="needs class-name text embeddings"):
        check_mask_inputs(i2st(mask_source="pseudo"), FeatureStore(plain))
    # The training job's own up-front check runs them before any worker starts.
    check_training_inputs(i2st_config(store, tmp_path / "r", mask_source="files", mask_files=str(masks)))
    with pytest.raises(ConfigError, match="is not a folder"):
        check_training_inputs(i2st_config(store, tmp_path / "r", mask_source="files", mask_files=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="needs class-name text"):
        check_training_inputs(i2st_config(plain, tmp_path / "r", mask_source="pseudo"))
    check_training_inputs(i2st_config(plain, tmp_path / "r", mask_source="none"))


def test_mask_table_follows_the_split_and_the_episodes(stores):
    store, masks, _ = stores
    fs = FeatureStore(store)
    split = fs.load_split("train", view="patches")
    table = load_mask_table(i2st(mask_source="files", mask_files=str(masks)), fs, split)
    assert table.masks.shape == (48, 4, 3, 3) and table.valid.all()
    # Each frame's mask marks the one cell holding the class vector: the patch most like the class text.
    patches = torch.from_numpy(split.features.astype(np.float32)).flatten(2, 3)  # (N, T, P, D)
    text = torch.from_numpy(fs.class_text())[torch.from_numpy(split.labels)]  # (N, D)
    similarity = torch.nn.functional.cosine_similarity(patches, text[:, None, None], dim=-1)
    assert torch.equal(table.masks.flatten(2).argmax(-1), similarity.argmax(-1))
    assert torch.equal(table.masks.flatten(2).sum(-1), torch.ones(48, 4))
    episodes = EpisodeSampler(split.labels, way=5, shot=2, query=1, seed=0).batch(0, 3)
    sup = table.supervision(episodes)
    s_masks, _, q_masks, _ = gather_episodes(table.masks, episodes)
    s_valid, _, _, _ = gather_episodes(table.valid, episodes)
    assert sup.support_masks.shape == (3, 10, 4, 3, 3) and sup.query_masks.shape == (3, 5, 4, 3, 3)
    assert torch.equal(sup.support_masks, s_masks) and torch.equal(sup.query_masks, q_masks)
    assert torch.equal(sup.support_mask_valid, s_valid) and sup.query_mask_valid.shape == (3, 5)


def test_missing_mask_files_are_counted_not_fatal(stores, tmp_path, caplog):
    store, masks, _ = stores
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in sorted(masks.glob("c0v*.npz")):
        (partial / path.name).write_bytes(path.read_bytes())
    fs = FeatureStore(store)
    split = fs.load_split("train", view="patches")
    with caplog.at_level(logging.WARNING, logger="fsar.data.masks"):
        table = load_mask_table(i2st(mask_source="files", mask_files=str(partial)), fs, split)
    assert isinstance(table, MaskTable) and int(table.valid.sum()) == 6
    assert table.valid[torch.from_numpy(split.labels == 0)].all()
    assert "6 of 48 videos loaded, 42 without a mask file" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="none of the 48 videos has a usable mask"):
        load_mask_table(i2st(mask_source="files", mask_files=str(empty)), fs, split)
