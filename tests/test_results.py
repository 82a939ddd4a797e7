"""fsar.evaluation.results: accuracy summaries, paired differences, the results and per-episode files, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsar.evaluation.results import (
    RESULT_KEYS,
    ResultRecord,
    accuracy_ci,
    format_table,
    paired_difference,
    read_per_episode,
    read_results,
    write_per_episode,
    write_results,
)


def test_accuracy_ci_matches_the_formula():
    acc = np.random.default_rng(0).integers(0, 6, 1000) / 5
    mean, ci = accuracy_ci(acc)
    assert mean == pytest.approx(100 * acc.mean())
    assert ci == pytest.approx(100 * 1.96 * acc.std(ddof=1) / np.sqrt(1000))
    assert accuracy_ci(np.ones(10)) == (100.0, 0.0)


def test_paired_difference_uses_the_per_episode_differences():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 500).astype(float)
    better = np.where(rng.random(500) < 0.2, 1.0, base)  # the same episodes, a few more right
    diff, ci = paired_difference(better, base)
    assert diff == pytest.approx(100 * (better - base).mean())
    assert ci == pytest.approx(100 * 1.96 * (better - base).std(ddof=1) / np.sqrt(500))
    assert ci < accuracy_ci(better)[1]  # shared episode difficulty cancels
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference(better, base[:10])


def test_results_file_schema_and_table(tmp_path):
    rec = ResultRecord("otam", "synth", "test", 5, 1, 100, 55.5, 1.2, 0, "/s", None, 0.3)
    path = write_results([rec], tmp_path / "results.json")
    data = json.loads(path.read_text())
    assert list(data[0]) == list(RESULT_KEYS)
    assert read_results(path) == [rec]
    assert "| otam | synth | test | 5 | 1 | 100 | 55.50 ± 1.20 |" in format_table([rec])


def test_per_episode_file_keeps_other_shots_and_replaces_a_rerun(tmp_path):
    path = tmp_path / "per_episode.parquet"
    write_per_episode(path, {("otam", 1): np.array([1.0, 0.0, 1.0]), ("a2m2", 1): np.array([1.0, 1.0, 1.0])})
    write_per_episode(path, {("otam", 5): np.array([0.4, 0.6]), ("otam", 1): np.array([0.0, 0.0, 0.0])})
    table = read_per_episode(path)
    assert sorted(table) == [("a2m2", 1), ("otam", 1), ("otam", 5)]
    np.testing.assert_array_equal(table[("otam", 1)], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(table[("otam", 5)], [0.4, 0.6])


def test_table_has_a_paired_difference_column():
    records = [ResultRecord(m, "d", "test", 5, 1, 4, 100 * a.mean(), 0.0, 0, "s", None, 1.0)
               for m, a in (("otam", np.array([1.0, 0, 0, 1])), ("a2m2", np.array([1.0, 1, 0, 1])))]
    per_episode = {("otam", 1): np.array([1.0, 0, 0, 1]), ("a2m2", 1): np.array([1.0, 1, 0, 1])}
    table = format_table(records, per_episode=per_episode)
    assert "Δ vs otam (paired)" in table.splitlines()[0]
    assert "| otam | d | test | 5 | 1 | 4 | 50.00 ± 0.00 | — |" in table
    assert "| a2m2 | d | test | 5 | 1 | 4 | 75.00 ± 0.00 | +25.00 ± 49.00 |" in table
