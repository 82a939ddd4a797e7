"""fsar.methods.a2m2.method: the registered ``a2m2`` method — evaluation paths, invariances, text, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.config import ConfigError
from fsar.data.episodes import EpisodeSampler
from fsar.evaluation.scoring import FeatureSplit, episode_scorer, gather_episodes
from fsar.methods import build_method, method_info
from fsar.methods.base import Supervision
from fsar.ops.frame_distance import pairwise_frame_distance
from fsar.ops.soft_dtw import otam_distance

# The mechanism tests start from fsar's configuration; each sets what it tests.
SMALL = {"reduce_dim": 6, "embed_dim": 16, "weight_hidden": 8, "configuration": "fsar"}


def moving_dot_videos(labels: np.ndarray, *, frames: int = 8, grid: int = 4, dim: int = 12, seed: int = 0) -> torch.Tensor:
    """Patch features ``(N, T, g, g, D)``: an object (random appearance per video) moves along its class's
    path over a noisy background; the class is the path, not the look."""
    rng = np.random.default_rng(seed)
    paths = {}
    for c in np.unique(labels):
        crng = np.random.default_rng(1000 + int(c))
        start, end = crng.integers(0, grid, size=2), crng.integers(0, grid, size=2)
        paths[int(c)] = np.round(np.linspace(start, end, frames)).astype(int)
    out = rng.normal(scale=0.3, size=(len(labels), frames, grid, grid, dim))
    for i, c in enumerate(labels):
        look = rng.normal(size=dim) * 2
        for t, (r, col) in enumerate(paths[int(c)]):
            out[i, t, r, col] += look
    return torch.from_numpy(out).float()


@pytest.fixture(scope="module")
def split():
    labels = np.repeat(np.arange(6), 5)
    return labels, moving_dot_videos(labels), torch.randn(6, 12)


def test_registered_as_a_patch_method_that_may_read_text():
    info = method_info("a2m2")
    assert info.input_kind == "patches" and not info.needs_text
    assert build_method("a2m2", feature_dim=12, text_dim=8).uses_text
    off = build_method("a2m2", feature_dim=12, text_dim=8, text=False)
    assert not off.uses_text and off.text_projection is None
    # A store without text: no projection is built, so no parameter waits for a gradient that cannot come.
    textless = build_method("a2m2", feature_dim=12)
    assert not textless.uses_text and textless.text_projection is None


@pytest.mark.parametrize("shot", [1, 3])
def test_pair_table_evaluation_equals_the_plain_forward(split, shot):
    labels, feats, text = split
    torch.manual_seed(0)
    method = build_method("a2m2", feature_dim=12, text_dim=12, fusion=0.3, **SMALL).eval()
    episodes = EpisodeSampler(labels, way=3, shot=shot, query=2, seed=1).batch(0, 20)
    with torch.no_grad():
        fast = episode_scorer(method, FeatureSplit(feats).encode(method, torch.device('cpu')), 3, class_text=text)(episodes)
        fast_again = episode_scorer(method, FeatureSplit(feats).encode(method, torch.device('cpu')), 3, class_text=text)(episodes)  # a reused table is the same
        support, s_lab, query, _ = gather_episodes(feats, episodes)
        plain = method(support, s_lab, query, 3, class_text=text[torch.as_tensor(episodes.classes)])
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_again, fast)


@pytest.mark.parametrize("order_prior", [0.0, 0.5])
def test_shuffling_candidate_order_leaves_distances_unchanged(split, order_prior):
    """Candidates are a set: permuting a video's candidates (with their weights and times) changes nothing."""
    _, feats, _ = split
    torch.manual_seed(0)
    method = build_method("a2m2", feature_dim=12, order_prior=order_prior, **SMALL).eval()
    with torch.no_grad():
        encoded = method.encode(feats[:10].reshape(2, 5, 8, 4, 4, 12))
        query = type(encoded)(*(t[:, :2] for t in encoded))
        support = type(encoded)(*(t[:, 2:] for t in encoded))
        base = method.pair_distance(support, query)
        perm = torch.randperm(encoded[0].shape[-2])
        shuffled_q = query._replace(candidates=query.candidates[..., perm, :], weight_logits=query.weight_logits[..., perm],
                                    times=query.times[..., perm])
        torch.testing.assert_close(method.pair_distance(support, shuffled_q), base, atol=1e-5, rtol=0)


def test_time_encoding_tells_a_motion_from_its_reverse(split):
    """With moments of the features alone, the candidate set of a time-reversed video is the same set
    unless the time encoding is on."""
    _, feats, _ = split
    video = feats[:1]
    reverse = video.flip(1)
    for time_encoding, same in ((False, True), (True, False)):
        torch.manual_seed(0)
        method = build_method("a2m2", feature_dim=12, time_encoding=time_encoding, marginals="uniform",
                              moment_inputs=["features"], fusion=0.0, **SMALL).eval()
        with torch.no_grad():
            enc = method.encode(torch.cat([video, reverse])[None])
            d_self = method.pair_distance(type(enc)(*(t[:, :1] for t in enc)), type(enc)(*(t[:, :1] for t in enc)))
            d_rev = method.pair_distance(type(enc)(*(t[:, 1:] for t in enc)), type(enc)(*(t[:, :1] for t in enc)))
        assert torch.isclose(d_rev, d_self, atol=1e-4).item() is same


def test_the_paper_configuration_fuses_the_frame_metric_and_fsar_adds_named_knobs():
    paper, fsar = (build_method("a2m2", feature_dim=12, configuration=c) for c in ("paper", "fsar"))
    assert build_method("a2m2", feature_dim=12).configuration == "paper"  # the default follows the seed
    assert paper.config.fusion > 0 and fsar.config.fusion == paper.config.fusion
    assert paper.config.moment_inputs == ["features"] and not paper.config.time_encoding
    assert fsar.config.moment_inputs == ["features", "motion", "position"] and fsar.config.time_encoding
    assert build_method("a2m2", feature_dim=12, configuration="fsar", fusion=0.0).config.fusion == 0.0  # knobs win


def test_fusion_one_is_the_frame_metric_alone(split):
    _, feats, _ = split
    torch.manual_seed(0)
    method = build_method("a2m2", feature_dim=12, fusion=1.0, **SMALL).eval()
    with torch.no_grad():
        enc = method.encode(feats[:6].reshape(1, 6, 8, 4, 4, 12))
        support, query = type(enc)(*(t[:, :3] for t in enc)), type(enc)(*(t[:, 3:] for t in enc))
        frames_dist = pairwise_frame_distance(query.frames, support.frames)
        torch.testing.assert_close(method.pair_distance(support, query), otam_distance(frames_dist, 0.1))
    assert enc.frames.shape == (1, 6, 8, 4 * 4 * 32)  # its own per-patch projection (frame_dim 32), flattened
    assert build_method("a2m2", feature_dim=12, fusion=0.0, **SMALL).encode(feats[:2]).frames.shape == (2, 8, 0)
    shared = build_method("a2m2", feature_dim=12, fusion=1.0, frame_dim=0, **SMALL).eval()
    assert shared.frame_projection is None and shared.encode(feats[:2]).frames.shape == (2, 8, 4 * 4 * 6)


def test_text_changes_logits_and_its_loss_is_training_only(split):
    labels, feats, text = split
    torch.manual_seed(0)
    method = build_method("a2m2", feature_dim=12, text_dim=12, **SMALL)
    episodes = EpisodeSampler(labels, way=3, shot=1, query=2, seed=0).batch(0, 4)
    support, s_lab, query, q_lab = gather_episodes(feats, episodes)
    class_text = text[torch.as_tensor(episodes.classes)]
    method.eval()
    without = method(support, s_lab, query, 3)
    with_text, aux = method.forward_with_aux(support, s_lab, query, 3, class_text=class_text)
    assert aux == {} and not torch.allclose(with_text, without)
    _, aux = method.forward_with_aux(support, s_lab, query, 3, class_text=class_text,
                                     supervision=Supervision(query_labels=q_lab))
    assert set(aux) == {"text_ce"} and aux["text_ce"] > 0
    with pytest.raises(ValueError, match="class_text must be"):
        method(support, s_lab, query, 3, class_text=class_text[:, :2])


def test_frame_features_alone_work_as_a_one_by_one_grid():
    torch.manual_seed(0)
    method = build_method("a2m2", feature_dim=12, **SMALL)
    support, query = torch.randn(2, 3, 8, 1, 1, 12), torch.randn(2, 6, 8, 1, 1, 12)
    logits = method(support, torch.arange(3).expand(2, 3), query, 3)
    assert logits.shape == (2, 6, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"scales": []}, "scales must be"),
        ({"scales": [1, 1]}, "must not repeat"),
        ({"spatial_scales": [-1]}, "spatial_scales"),
        ({"ot_epsilon": 0.0}, "ot_epsilon"),
        ({"fusion": 1.5}, "fusion"),
        ({"marginals": "mixed"}, "marginals"),
        ({"ot_backend": "cuda"}, "ot_backend"),
    ],
)
def test_bad_knobs_are_refused(knobs, message):
    with pytest.raises(ConfigError, match=message):
        build_method("a2m2", feature_dim=12, **knobs)


def test_spatial_scale_must_divide_the_grid():
    method = build_method("a2m2", feature_dim=12, spatial_scales=[0, 3], **SMALL)
    with pytest.raises(ValueError, match="does not divide the 4x4"):
        method(torch.randn(3, 8, 4, 4, 12), torch.arange(3), torch.randn(3, 8, 4, 4, 12), 3)


def test_training_decreases_the_loss():
    """A few dozen 5-way episodes on moving-dot features: the episode loss falls."""
    labels = np.repeat(np.arange(10), 6)
    feats = moving_dot_videos(labels, seed=1)
    torch.manual_seed(0)
    method = build_method("a2m2", feature_dim=12, **SMALL)
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    sampler = EpisodeSampler(labels, way=5, shot=1, query=2, seed=0)
    losses = []
    for step in range(40):
        support, s_lab, query, q_lab = gather_episodes(feats, sampler.batch(step * 4, 4))
        logits, aux = method.forward_with_aux(support, s_lab, query, 5)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), q_lab.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, (first, last)  # measured 1.62 → 1.12


def reversal_and_mirror_distances(feats, **knobs):
    """Distances of a video to itself, to its time reverse and to its left-right mirror image."""
    torch.manual_seed(0)
    method = build_method("a2m2", feature_dim=12, marginals="uniform", time_encoding=False, fusion=0.0,
                          **SMALL | knobs).eval()
    video = feats[:1]
    with torch.no_grad():
        enc = method.encode(torch.cat([video, video.flip(1), video.flip(3)])[None])
        one = type(enc)(*(t[:, :1] for t in enc))
        return [float(method.pair_distance(type(enc)(*(t[:, i : i + 1] for t in enc)), one)) for i in range(3)]


def test_moment_inputs_make_order_and_layout_visible(split):
    """Moments of unordered patch features are blind to a video's time reverse and to its mirror image;
    the motion cross-moments see the reverse, the position cross-moments see the mirror."""
    _, feats, _ = split
    self_d, reverse, mirror = reversal_and_mirror_distances(feats, moment_inputs=["features"])
    assert reverse == pytest.approx(self_d, abs=1e-4) and mirror == pytest.approx(self_d, abs=1e-4)
    self_d, reverse, _ = reversal_and_mirror_distances(feats, moment_inputs=["features", "motion"])
    assert reverse > self_d + 1e-3
    self_d, _, mirror = reversal_and_mirror_distances(feats, moment_inputs=["features", "position"])
    assert mirror > self_d + 1e-3


def test_order_prior_tells_a_motion_from_its_reverse(split):
    _, feats, _ = split
    self_d, reverse, _ = reversal_and_mirror_distances(feats, order_prior=1.0)
    assert reverse > self_d + 1e-3
    with pytest.raises(ConfigError, match="order_prior"):
        build_method("a2m2", feature_dim=12, order_prior=-1.0)
    with pytest.raises(ConfigError, match="moment_inputs"):
        build_method("a2m2", feature_dim=12, moment_inputs=["features", "colour"])


def test_a2m2_explains_a_match_by_its_transport_plan_between_candidates():
    torch.manual_seed(0)
    method = build_method("a2m2", feature_dim=12).eval()
    with torch.no_grad():
        enc = method.encode(torch.randn(2, 8, 4, 4, 12))
        one = [type(enc)(*(f[i] for f in enc)) for i in range(2)]
        explanation = method.explain(one[0], one[1])
    k = enc.candidates.shape[1]
    assert explanation.kind == "transport plan" and explanation.weights.shape == (k, k)
    torch.testing.assert_close(explanation.weights.sum(), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert explanation.query_items.min() >= 0 and explanation.query_items.max() <= 1  # window centres
