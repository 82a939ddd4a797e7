"""pipelines.bench.seeds: reverse-pair episodes and the summary table (the benchmark itself is run by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.bench.seeds import format_summary, reverse_pair_episodes


def test_reverse_pair_episodes_hold_a_class_and_its_reverse(tmp_path):
    # Test classes 10/11 and 12/13 are reverse pairs; 14's partner is in train, so it is never used.
    classes = [{"id": 100 + i, "label": 10 + i, "partner": 100 + (i ^ 1), "split": "test"} for i in range(4)]
    classes += [{"id": 104, "label": 14, "partner": 105, "split": "test"}, {"id": 105, "label": 3, "partner": 104,
                                                                            "split": "train"}]
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    labels = np.repeat([10, 11, 12, 13, 14], 4)
    episodes = reverse_pair_episodes(tmp_path / "classes.json", labels, count=40, seed=0)
    assert len(episodes) == 40 and episodes.support.shape == (40, 2, 1) and episodes.query.shape == (40, 2, 1)
    pairs = {tuple(sorted(c)) for c in episodes.classes.tolist()}
    assert pairs == {(10, 11), (12, 13)}
    assert (labels[episodes.support[..., 0]] == episodes.classes).all()
    assert (labels[episodes.query[..., 0]] == episodes.classes).all()
    assert (episodes.support != episodes.query).all()
    (tmp_path / "classes.json").write_text(json.dumps(classes[4:]))
    with pytest.raises(ValueError, match="no test class has its time reverse"):
        reverse_pair_episodes(tmp_path / "classes.json", labels, count=10, seed=0)


def test_summary_marks_differences_beyond_the_paired_ci():
    summary = {"plain": {"options": {}, "seconds": 60.0, "methods": {
        "otam": {"1-shot": (70.0, 0.9, 0.0, 0.0)},
        "a2m2": {"1-shot": (80.0, 0.8, 10.0, 0.7)},
        "i2st": {"1-shot": (70.2, 0.9, 0.2, 0.5)},
    }}}
    text = format_summary(summary)
    assert "| a2m2 | 80.00 ± 0.80 | **+10.00 ± 0.70** |" in text
    assert "| i2st | 70.20 ± 0.90 | +0.20 ± 0.50 |" in text and "| otam | 70.00 ± 0.90 | — |" in text
