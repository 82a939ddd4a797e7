import numpy as np
import pytest

from fsar.data.episodes import EpisodeError, EpisodeSampler, read_episode_file, write_episode_file

LABELS = np.repeat(np.arange(12), 10)[np.random.default_rng(0).permutation(120)]


def sampler(**kw):
    args = {"way": 5, "shot": 2, "query": 3, "seed": 7} | kw
    return EpisodeSampler(LABELS, **args)


def test_same_seed_same_episodes_different_seed_different():
    a, b, c = sampler().batch(0, 50), sampler().batch(0, 50), sampler(seed=8).batch(0, 50)
    assert np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
    assert not np.array_equal(a.support, c.support)


def test_episode_structure():
    eps = sampler().batch(0, 300)
    assert eps.support.shape == (300, 5, 2) and eps.query.shape == (300, 5, 3)
    for e in range(300):
        assert len(set(eps.classes[e])) == 5
        videos = np.concatenate([eps.support[e].ravel(), eps.query[e].ravel()])
        assert len(set(videos.tolist())) == videos.size  # no video in both support and query
        assert np.array_equal(LABELS[eps.support[e]], np.repeat(eps.classes[e][:, None], 2, 1))
        assert np.array_equal(LABELS[eps.query[e]], np.repeat(eps.classes[e][:, None], 3, 1))


def test_batches_are_slices_of_one_sequence():
    s = sampler()
    whole = s.batch(0, 2500)  # crosses block boundaries
    part = sampler().batch(1000, 700)
    assert np.array_equal(whole.support[1000:1700], part.support)


def test_ranks_get_disjoint_streams_and_the_union_ignores_world_size():
    s = sampler()
    one = [next(iter_) for iter_ in [s.stream(rank=0, world_size=1, episodes_per_step=4)] for _ in range(4)]
    r0, r1 = s.stream(rank=0, world_size=2, episodes_per_step=4), s.stream(rank=1, world_size=2, episodes_per_step=4)
    two = [next(r0), next(r1), next(r0), next(r1)]
    assert not np.array_equal(two[0].support, two[1].support)
    cat = lambda parts: np.concatenate([p.support for p in parts])  # noqa: E731
    assert np.array_equal(cat(one), cat(two))


def test_classes_are_used_evenly():
    eps = sampler().batch(0, 4000)
    counts = np.bincount(eps.classes.ravel(), minlength=12)
    assert counts.min() > 0.8 * counts.mean()


def test_impossible_requests_fail_with_the_fix():
    with pytest.raises(EpisodeError, match="shot\\+query=11.*Lower shot/query"):
        sampler(shot=8, query=3)
    with pytest.raises(EpisodeError, match="way=13 needs 13 classes"):
        sampler(way=13)
    with pytest.raises(EpisodeError, match="shot must be >= 1"):
        sampler(shot=0)


def test_small_classes_named_or_dropped():
    labels = np.concatenate([np.repeat(np.arange(6), 5), [6, 6]])
    with pytest.raises(EpisodeError, match="walking \\(2\\)"):
        EpisodeSampler(labels, way=5, shot=1, query=2, seed=0, class_names={6: "walking"})
    s = EpisodeSampler(labels, way=5, shot=1, query=2, seed=0, drop_small_classes=True)
    assert 6 not in s.batch(0, 200).classes


def test_episode_file_round_trip_and_foreign_store(tmp_path):
    ids = [f"v{i:03d}" for i in range(120)]
    eps = sampler().batch(0, 40)
    path = write_episode_file(tmp_path / "ep.json", eps, ids, meta={"seed": 7, "split": "test"})
    # the same videos in another order (another store) map back to the same ids
    order = np.random.default_rng(1).permutation(120)
    shuffled_ids = [ids[i] for i in order]
    back, meta = read_episode_file(path, shuffled_ids, LABELS[order])
    assert meta["seed"] == 7 and meta["count"] == 40
    assert np.array_equal(order[back.support], eps.support)
    assert np.array_equal(back.classes, eps.classes)
    with pytest.raises(EpisodeError, match="not in the feature store"):
        read_episode_file(path, ids[:60], LABELS[:60])
