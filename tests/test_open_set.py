"""fsar.prediction.open_set: the threshold's false-accept rate against a brute-force reference, open-set episodes,
and a calibration stored with the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.config import ConfigError
from fsar.prediction.open_set import calibrate, choose_threshold, open_set_episodes, rates


@pytest.mark.parametrize("target", [0.0, 0.05, 0.2, 0.5])
def test_the_threshold_is_the_lowest_that_keeps_false_accepts_within_the_target(target):
    rng = np.random.default_rng(0)
    unknown = np.round(rng.random(200), 2)  # ties, as softmax scores of similar queries have
    threshold = choose_threshold(unknown, target)
    candidates = np.unique(np.r_[unknown, np.nextafter(unknown, np.inf)])
    reference = min(t for t in candidates if (unknown >= t).mean() <= target)  # brute force
    assert threshold == pytest.approx(reference) and (unknown >= threshold).mean() <= target


def test_rates_count_what_the_threshold_accepts():
    known_best = np.array([0.9, 0.8, 0.3, 0.6])
    known_right = np.array([True, False, True, True])
    out = rates(known_best, known_right, np.array([0.7, 0.2]), threshold=0.5)
    assert out == {"false_accept_rate": 0.5, "known_accuracy": 0.5, "closed_set_accuracy": 0.75,
                   "known_rejected": 0.25}
    with pytest.raises(ConfigError, match="target_far"):
        choose_threshold(np.array([0.5]), 1.0)


def test_open_set_episodes_hold_one_class_out_of_the_supports():
    labels = np.repeat(np.arange(6), 8)
    eps = open_set_episodes(labels, way=3, shot=2, query=3, episodes=50, seed=0)
    assert eps.classes.shape == (50, 4) and eps.support.shape == (50, 4, 2)
    for e in range(50):
        assert len(set(eps.classes[e])) == 4
        assert set(labels[eps.query[e, 3]]) == {eps.classes[e, 3]}  # the unknown class's queries


def test_calibration_on_separable_classes_rejects_the_unknown_and_keeps_the_known(tmp_path):
    """Classes far apart in feature space: a query of a class not among the supports scores low on all of them."""
    from fsar.methods.registry import build_method

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((6, 16)) * 4
    labels = np.repeat(np.arange(6), 10)
    features = torch.from_numpy(centres[labels][:, None, :] + rng.standard_normal((60, 4, 16)) * 0.3).float()
    method = build_method("protonet", feature_dim=16, temperature=0.05).eval()
    result = calibrate(method, features, labels, way=3, shot=2, query=3, episodes=200, target_far=0.05)
    assert result.false_accept_rate <= 0.05 and result.closed_set_accuracy > 0.95
    assert result.known_accuracy > 0.5 and result.known_accuracy <= result.closed_set_accuracy
