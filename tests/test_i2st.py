"""The I2ST method: knobs, global-local matching, mask losses, encode-once evaluation, training with each
mask source, and inference that never touches a mask source."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import I2ST_SMALL, i2st_config, make_actor_patch_store

from fsar.config import ConfigError
from fsar.data.episodes import EpisodeSampler, episode_labels
from fsar.data.feature_store import FeatureStore
from fsar.evaluation.scoring import FeatureSplit, episode_accuracies, episode_scorer, gather_episodes
from fsar.methods import build_method, method_info
from fsar.methods.base import Supervision
from fsar.training.checkpoint import load_checkpoint, save_checkpoint
from fsar.training.loop import train_worker

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def patch_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2st")
    make_actor_patch_store(root / "store", masks_root=root / "masks")
    return root / "store", root / "masks"


def episodes(batch=3, way=3, shot=2, n_query=2, frames=4, grid=2, dim=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s_lab = torch.as_tensor(episode_labels(way, shot)).expand(batch, -1)
    q_lab = torch.as_tensor(episode_labels(way, n_query)).expand(batch, -1)
    support = torch.randn(batch, way * shot, frames, grid, grid, dim, generator=gen)
    query = torch.randn(batch, way * n_query, frames, grid, grid, dim, generator=gen)
    return support, s_lab, query, q_lab


def build(**knobs):
    torch.manual_seed(0)
    return build_method("i2st", feature_dim=12, **(I2ST_SMALL | knobs))


# ---------------------------------------------------------------- knobs and contract
def test_registered_with_patch_input_and_no_text_requirement():
    info = method_info("i2st")
    assert info.input_kind == "patches" and not info.needs_text
    assert not build().uses_text and not build(mask_source="files", mask_files="m").uses_text
    assert build(mask_source="pseudo").uses_text


@pytest.mark.parametrize("knobs, match", [
    ({"lambda_global": 1.5}, "lambda_global"), ({"lambda_global": -0.1}, "lambda_global"),
    ({"dim": 10, "heads": 4}, "divisible"), ({"instances": 0}, "instances"), ({"layers": -1}, "layers"),
    ({"mask_source": "files"}, "mask_files"), ({"mask_source": "masks"}, "mask_source"),
    ({"local_metric": "trx"}, "local_metric"), ({"pseudo_threshold": 1.0}, "pseudo_threshold"),
    ({"mask_loss_weight": -1.0}, "mask_loss_weight"), ({"otam_gamma": -0.1}, "otam_gamma"),
    ({"mlp_ratio": 0.0}, "mlp_ratio"), ({"input_norm": "batch"}, "input_norm"),
])
def test_bad_knobs_are_refused(knobs, match):
    with pytest.raises(ConfigError, match=match):
        build_method("i2st", feature_dim=12, **knobs)


@pytest.mark.parametrize("knobs", [{"layers": 0}, {"layers": 2}, {"match_features": "frame"}, {"input_norm": "patch"},
                                   {"match_features": "instances", "local_metric": "bimhm"},
                                   {"temporal_centre": True, "proj_dim": 8}])
def test_variants_run_and_train(knobs):
    method = build(**knobs).train()
    support, s_lab, query, q_lab = episodes()
    logits = method(support, s_lab, query, 3)
    assert logits.shape == (3, 6, 3) and torch.isfinite(logits).all()
    F.cross_entropy(logits.reshape(-1, 3), q_lab.reshape(-1)).backward()
    assert all(p.grad is not None for p in method.parameters())


def test_any_grid_including_one_by_one_and_unequal_lengths():
    method = build(mask_source="pseudo").train()
    for grid in (1, 4):
        support, s_lab, query, q_lab = episodes(grid=grid)
        query = query[:, :, :3]  # 3 query frames against 4 support frames
        logits, aux = method.forward_with_aux(support, s_lab, query, 3, class_text=torch.randn(3, 3, 12),
                                              supervision=Supervision(query_labels=q_lab))
        assert logits.shape == (3, 6, 3) and torch.isfinite(aux["mask"])


# ---------------------------------------------------------------- global-local matching
@pytest.mark.parametrize("metric", ["otam", "bimhm"])
def test_global_local_matching_is_global_at_lambda_one_and_local_at_zero(metric):
    support, s_lab, query, _ = episodes()
    method = build(local_metric=metric, learn_scale=False, temperature=1.0).eval()
    with torch.no_grad():
        s_frames, q_frames = method.encode(support)[0], method.encode(query)[0]
        g = method.global_distance(s_frames, s_lab, q_frames, 3)
        loc = method.local_distance(s_frames, s_lab, q_frames, 3)
        for lam, expected in ((1.0, g), (0.0, loc), (0.3, 0.3 * g + 0.7 * loc)):
            method.config.lambda_global = lam
            torch.testing.assert_close(method.distance(s_frames, s_lab, q_frames, 3), expected)
            torch.testing.assert_close(method(support, s_lab, query, 3), -expected)  # temperature 1
    # The two terms are the baselines' own distances on the encoded frames: ProtoNet and OTAM / Bi-MHM.
    width = s_frames.shape[-1]
    protonet = build_method("protonet", feature_dim=width, temperature=1.0)
    from fsar.methods.base import FrameEncoding

    torch.testing.assert_close(g, -protonet.head(FrameEncoding(s_frames.mean(-2, keepdim=True)), s_lab,
                                                 FrameEncoding(q_frames.mean(-2, keepdim=True)), 3).logits)
    local = build_method(metric, feature_dim=width, temperature=1.0, **({"gamma": 0.1} if metric == "otam" else {}))
    terms = 2 * s_frames.shape[-2] if metric == "otam" else 2  # local_mean: per-frame distances, as the global one
    torch.testing.assert_close(loc, -local.head(FrameEncoding(s_frames), s_lab, FrameEncoding(q_frames), 3).logits / terms)
    assert not torch.allclose(g, loc)
    assert float(loc.min()) >= 0 and float(loc.max()) <= 2.0 + 1e-4  # on the global term's scale
    method.config.local_mean = False
    torch.testing.assert_close(method.local_distance(s_frames, s_lab, q_frames, 3), loc * terms)


def test_local_distance_is_order_aware_with_otam():
    support, s_lab, query, _ = episodes(batch=1)
    method = build(lambda_global=0.0).eval()
    with torch.no_grad():
        s_frames, q_frames = method.encode(support)[0], method.encode(query)[0]
        forward = method.local_distance(s_frames, s_lab, q_frames, 3)
        reverse = method.local_distance(s_frames, s_lab, q_frames.flip(-2), 3)
        assert not torch.allclose(forward, reverse)
        g = method.global_distance(s_frames, s_lab, q_frames, 3)
        torch.testing.assert_close(g, method.global_distance(s_frames, s_lab, q_frames.flip(-2), 3))


# ---------------------------------------------------------------- masks in training, none at inference
def test_mask_logits_exist_only_in_training_mode_with_a_source():
    support = episodes()[0]
    with_source = build(mask_source="pseudo")
    frames, masks, patches, mean = with_source.train().encode(support)
    assert frames.shape[:3] == (3, 6, 4) and masks.shape == (3, 6, 4, 3, 2, 2)
    assert patches is support
    torch.testing.assert_close(mean, frames.mean(dim=-2))
    for method in (with_source.eval(), build().train()):
        _, masks, patches, _ = method.encode(support)
        assert masks.shape == (3, 6, 0) and patches.shape == (3, 6, 0)


def test_logits_never_depend_on_supervision_or_text():
    support, s_lab, query, q_lab = episodes()
    method = build(mask_source="pseudo").train()
    plain = method(support, s_lab, query, 3)
    text = torch.randn(3, 3, 12)
    logits, aux = method.forward_with_aux(support, s_lab, query, 3, class_text=text,
                                          supervision=Supervision(query_labels=q_lab))
    torch.testing.assert_close(logits, plain)
    assert set(aux) == {"mask"} and float(aux["mask"].detach()) > 0
    other, _ = method.forward_with_aux(support, s_lab, query, 3, class_text=-text,
                                       supervision=Supervision(query_labels=q_lab))
    torch.testing.assert_close(other, plain)


def test_mask_loss_is_weighted_and_needs_its_inputs():
    support, s_lab, query, q_lab = episodes()
    masks = Supervision(query_labels=q_lab, support_masks=torch.rand(3, 6, 4, 2, 2),
                        query_masks=torch.rand(3, 6, 4, 2, 2))
    one = build(mask_source="files", mask_files="m").train()
    three = build(mask_source="files", mask_files="m", mask_loss_weight=3.0).train()
    loss_one = one.forward_with_aux(support, s_lab, query, 3, supervision=masks)[1]["mask"]
    loss_three = three.forward_with_aux(support, s_lab, query, 3, supervision=masks)[1]["mask"]
    torch.testing.assert_close(loss_three, 3 * loss_one)
    assert build(mask_source="files", mask_files="m", mask_loss_weight=0.0).train().forward_with_aux(
        support, s_lab, query, 3, supervision=masks)[1] == {}
    assert one.eval().forward_with_aux(support, s_lab, query, 3, supervision=masks)[1] == {}
    with pytest.raises(ValueError, match="carries no masks"):
        one.train().forward_with_aux(support, s_lab, query, 3, supervision=Supervision(query_labels=q_lab))
    with pytest.raises(ValueError, match="needs class_text"):
        build(mask_source="pseudo").train().forward_with_aux(support, s_lab, query, 3,
                                                             supervision=Supervision(query_labels=q_lab))
    with pytest.raises(ValueError, match=r"\(B, N, T, g, g\)"):
        bad = Supervision(query_labels=q_lab, support_masks=torch.rand(3, 6, 4, 3, 3), query_masks=torch.rand(3, 6, 4, 3, 3))
        one.forward_with_aux(support, s_lab, query, 3, supervision=bad)


def test_invalid_videos_take_no_part_in_the_mask_loss():
    support, s_lab, query, q_lab = episodes()
    method = build(mask_source="files", mask_files="m").train()
    s_masks, q_masks = torch.rand(3, 6, 4, 2, 2), torch.rand(3, 6, 4, 2, 2)
    valid = torch.zeros(3, 6, dtype=torch.bool)
    valid[0, 0] = True

    def loss(s, q):
        sup = Supervision(query_labels=q_lab, support_masks=s, query_masks=q, support_mask_valid=valid,
                          query_mask_valid=torch.zeros_like(valid))
        return method.forward_with_aux(support, s_lab, query, 3, supervision=sup)[1]["mask"]

    changed = s_masks.clone()
    changed[1:] = 1 - changed[1:]
    torch.testing.assert_close(loss(s_masks, q_masks), loss(changed, 1 - q_masks))
    changed[0, 0] = 1 - changed[0, 0]
    assert not torch.allclose(loss(s_masks, q_masks), loss(changed, q_masks))


@pytest.mark.parametrize("match", ["best", "union"])
def test_mask_supervision_teaches_the_masks(match):
    """Optimising on file masks of one foreground cell makes the predicted masks fit them."""
    gen = torch.Generator().manual_seed(0)
    support, s_lab, query, q_lab = episodes(batch=4, grid=3)
    cells = torch.randint(0, 9, (4, 12, 4), generator=gen)  # the foreground cell of every frame
    both = torch.cat([support, query], dim=1)
    # Make the foreground cell look different, so the masks are learnable from the features.
    marker = 2 * torch.randn(12, generator=gen)
    both.view(4, 12, 4, 9, 12)[torch.arange(4)[:, None, None], torch.arange(12)[None, :, None],
                               torch.arange(4)[None, None], cells] += marker
    support, query = both[:, :6], both[:, 6:]
    target = F.one_hot(cells, 9).float().view(4, 12, 4, 3, 3)
    sup = Supervision(query_labels=q_lab, support_masks=target[:, :6], query_masks=target[:, 6:])
    method = build(mask_source="files", mask_files="m", mask_match=match).train()
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    history = []
    for _ in range(40):
        _, aux = method.forward_with_aux(support, s_lab, query, 3, supervision=sup)
        opt.zero_grad()
        aux["mask"].backward()
        opt.step()
        history.append(float(aux["mask"].detach()))
    assert np.mean(history[-5:]) < 0.6 * np.mean(history[:5])


def test_encode_once_evaluation_matches_the_plain_forward():
    torch.manual_seed(0)
    features = torch.randn(12, 4, 2, 2, 12)
    labels = np.repeat(np.arange(4), 3)
    eps = EpisodeSampler(labels, way=3, shot=1, query=2, seed=0).batch(0, 5)
    for knobs in ({}, {"mask_source": "pseudo"}):
        method = build(**knobs).eval()
        text = torch.randn(4, 12)
        logits = episode_scorer(method, FeatureSplit(features).encode(method, torch.device('cpu')), 3, class_text=text)(eps)
        support, s_lab, query, _ = gather_episodes(features, eps)
        with torch.no_grad():
            torch.testing.assert_close(logits, method(support, s_lab, query, 3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["none", "pseudo", "files"])
def test_a_short_training_run_lowers_the_loss(patch_store, tmp_path, source):
    store, masks = patch_store
    knobs = {"mask_source": source} | ({"mask_files": str(masks)} if source == "files" else {})
    reports = []
    train_worker(i2st_config(store, tmp_path / "run", **knobs), report=lambda m, p: reports.append(m))
    losses = [m["train_loss"] for m in reports]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert losses[-1] < 0.85 * losses[0], losses


def supervision_seen_by_the_mask_loss(monkeypatch) -> list:
    """Record the ``Supervision`` every I2ST mask-loss call receives (the loss itself still runs)."""
    from fsar.methods.i2st import I2ST

    seen, original = [], I2ST.mask_loss

    def spy(self, mask_logits, patches, support_labels, *, class_text, supervision):
        seen.append(supervision)
        return original(self, mask_logits, patches, support_labels, class_text=class_text, supervision=supervision)

    monkeypatch.setattr(I2ST, "mask_loss", spy)
    return seen


def test_training_on_mask_files_passes_them_to_the_method(patch_store, tmp_path, monkeypatch):
    """The supervision reaching the method holds the actor's cell of each sampled frame."""
    store, masks = patch_store
    seen = supervision_seen_by_the_mask_loss(monkeypatch)
    cfg = i2st_config(store, tmp_path / "run", mask_source="files", mask_files=str(masks))
    train_worker(dataclasses.replace(cfg, steps=2, val_every=2), report=lambda m, p: None)
    assert len(seen) == 2
    sup = seen[0]
    assert sup.support_masks.shape == (4, 5, 4, 3, 3) and sup.query_masks.shape == (4, 10, 4, 3, 3)
    assert bool(sup.support_mask_valid.all()) and bool(sup.query_mask_valid.all())
    # One cell per frame is foreground, and it is where the features hold the class vector.
    assert torch.equal(sup.support_masks.sum(dim=(-1, -2)), torch.ones(4, 5, 4))


def test_hungarian_matching_trains_on_instance_masks(patch_store, tmp_path, monkeypatch):
    """mask_match=hungarian asks the pipeline for instance masks (ids apart, up to the query count) and trains
    on them; it is refused with a mask source that has no instances."""
    store, masks = patch_store
    seen = supervision_seen_by_the_mask_loss(monkeypatch)
    from fsar.data.masks import read_mask_file, write_mask_file

    ids = tmp_path / "instance-masks"  # the helper marks the actor 255; as an instance it is id 1
    for path in sorted(masks.glob("*.npz")):
        pixels, frames = read_mask_file(path)
        write_mask_file(ids, path.name.removesuffix(".npz"), (pixels > 0).astype(np.uint8), frames)
    cfg = i2st_config(store, tmp_path / "run", mask_source="files", mask_files=str(ids), mask_match="hungarian")
    reports = []
    train_worker(dataclasses.replace(cfg, steps=2, val_every=2), report=lambda m, p: reports.append(m))
    instances = I2ST_SMALL["instances"]
    assert seen[0].support_masks.shape == (4, 5, 4, instances, 3, 3)
    # The actor is instance 1: its cell in every frame; no other instance is present.
    assert torch.equal(seen[0].support_masks[:, :, :, 0].sum(dim=(-1, -2)), torch.ones(4, 5, 4))
    assert float(seen[0].support_masks[:, :, :, 1:].sum()) == 0.0
    assert np.isfinite(reports[-1]["train_loss"])
    with pytest.raises(ConfigError, match="mask_match=hungarian matches the queries to the instances of mask files"):
        build_method("i2st", feature_dim=16, mask_source="pseudo", mask_match="hungarian")


def test_inference_never_touches_a_mask_source(patch_store, tmp_path, monkeypatch):
    """Train on mask files, delete them, then evaluate and round-trip the checkpoint: nothing reads masks."""
    store, masks = patch_store
    own_masks = tmp_path / "masks"
    shutil.copytree(masks, own_masks)
    payloads = []
    cfg = i2st_config(store, tmp_path / "run", mask_source="files", mask_files=str(own_masks))
    train_worker(dataclasses.replace(cfg, steps=10), report=lambda m, p: payloads.append(p))
    path = save_checkpoint(payloads[-1], tmp_path / "best.pt")
    test = FeatureStore(store).load_split("test", view="patches")
    eps = EpisodeSampler(test.labels, way=5, shot=1, query=1, seed=3).batch(0, 50)
    trained = build_method("i2st", feature_dim=16, **payloads[-1]["knobs"])
    trained.load_state_dict(payloads[-1]["state_dict"])
    before = episode_accuracies(trained, test.features, eps, batch_size=50)  # masks still on disk
    shutil.rmtree(own_masks)

    def forbidden(*args, **kwargs):
        raise AssertionError("a mask source was read at inference")

    import fsar.methods.i2st
    import fsar.sources.masks

    monkeypatch.setattr(fsar.sources.masks, "load_masks", forbidden)
    monkeypatch.setattr(fsar.methods.i2st, "text_pseudo_masks", forbidden)
    monkeypatch.setattr(fsar.methods.i2st.I2ST, "mask_loss", forbidden)
    method, payload = load_checkpoint(path)
    assert payload["knobs"]["mask_source"] == "files" and not own_masks.exists()
    accuracy = episode_accuracies(method, test.features, eps, batch_size=25)
    np.testing.assert_array_equal(accuracy, before)
    assert 0.0 < accuracy.mean() < 1.0
    # The pseudo source reads text only in training: evaluation with the store's text is just as blind to it.
    pseudo = build_method("i2st", feature_dim=16, **(payload["knobs"] | {"mask_source": "pseudo"}))
    pseudo.load_state_dict(payloads[-1]["state_dict"])
    text = torch.from_numpy(FeatureStore(store).class_text())
    np.testing.assert_array_equal(episode_accuracies(pseudo, test.features, eps, class_text=text), before)


def test_i2st_explains_a_match_by_its_frame_alignment_and_its_instance_masks():
    method = build().eval()
    videos = torch.randn(2, 4, 3, 3, 12)
    with torch.no_grad():
        enc = method.encode(videos)
        one = [type(enc)(*(f[i] for f in enc)) for i in range(2)]
        explanation = method.explain(one[0], one[0], query_video=videos[0])
        without = method.explain(one[0], one[1])
    assert explanation.kind.startswith("frame alignment") and explanation.weights.shape == (4, 4)
    assert explanation.weights.argmax(dim=1).tolist() == [0, 1, 2, 3]  # a video against itself: the diagonal
    assert explanation.query_masks.shape == (4, 3, 3)
    assert explanation.query_masks.min() >= 0 and explanation.query_masks.max() <= 1
    assert without.query_masks is None  # no input given: the alignment alone
