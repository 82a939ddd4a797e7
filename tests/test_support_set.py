"""fsar.prediction.support_set: one file per class on a path or a bucket, and class scores that equal the method's
own episode logits, whatever the query batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.config import ConfigError
from fsar.methods.registry import build_method
from fsar.prediction.support_set import (
    SupportClass,
    class_logits,
    class_names,
    delete_class,
    encode_supports,
    listing,
    load_classes,
    save_class,
)


def _classes(rng, names=("run", "jump", "wave"), shots=3, frames=4, dim=8):
    return [SupportClass(n, [f"{n}/{i}.mp4" for i in range(shots)],
                         rng.standard_normal((shots, frames, dim)).astype(np.float16), [f"/v/{n}/{i}.mp4" for i in range(shots)])
            for n in names]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_classes_are_saved_listed_replaced_and_dropped(where, tmp_path, request):
    root = str(tmp_path / "supports") if where == "local" else request.getfixturevalue("s3") + "/supports"
    rng = np.random.default_rng(0)
    for c in _classes(rng):
        save_class(root, c)
    assert class_names(root) == ["jump", "run", "wave"]
    loaded = load_classes(root)
    assert [c.video_ids for c in loaded][1] == ["run/0.mp4", "run/1.mp4", "run/2.mp4"]
    assert loaded[1].sources[0] == "/v/run/0.mp4" and loaded[1].features.shape == (3, 4, 8)
    before = listing(root)
    save_class(root, SupportClass("run", ["x"], np.zeros((1, 4, 8), np.float16)))
    assert listing(root) != before  # a replaced class changes the listing replicas watch
    assert delete_class(root, "jump") and not delete_class(root, "jump")
    assert class_names(root) == ["run", "wave"]


@pytest.mark.parametrize("name", ["", "../up", "a/b", " lead", "x" * 201, "tab\there"])
def test_a_class_name_that_cannot_be_one_is_refused(name, tmp_path):
    with pytest.raises(ConfigError, match="is not allowed"):
        save_class(tmp_path, SupportClass(name, ["v"], np.zeros((1, 4, 8), np.float16)))


def test_dataset_class_names_survive_the_round_trip(tmp_path):
    names = ["Pushing [something] from left to right", "moving a little down, then far up", "50% off?", "..", "a:b*c"]
    for name in names:
        save_class(tmp_path, SupportClass(name, ["v"], np.zeros((1, 4, 8), np.float16)))
    assert class_names(tmp_path) == sorted(names)
    assert all(p.name.endswith(".npz") and "/" not in p.name for p in (tmp_path / "classes").iterdir())


def test_logits_are_the_methods_own_episode_logits_in_any_batches():
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    method = build_method("otam", feature_dim=8, proj_dim=6).eval()
    classes = _classes(rng)
    supports = encode_supports(method, classes, torch.device("cpu"))
    queries = torch.from_numpy(rng.standard_normal((7, 4, 8)).astype(np.float32))
    logits = class_logits(method, supports, queries, batch_size=3)
    features = torch.from_numpy(np.concatenate([c.features for c in classes])).float()
    with torch.no_grad():
        reference = method(features[None], supports.labels, queries[None], 3)[0]
    assert torch.allclose(logits, reference, atol=1e-5)
    assert torch.allclose(class_logits(method, supports, queries.flip(0), batch_size=1), logits.flip(0), atol=1e-5)


def test_classes_with_unequal_shots_or_none_are_refused():
    rng = np.random.default_rng(2)
    method = build_method("protonet", feature_dim=8)
    uneven = _classes(rng)[:2] + _classes(rng, names=("wave",), shots=2)
    with pytest.raises(ConfigError, match="same number of example clips"):
        encode_supports(method, uneven, torch.device("cpu"))
    with pytest.raises(ConfigError, match="holds no class"):
        encode_supports(method, [], torch.device("cpu"))
