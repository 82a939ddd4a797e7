"""pipelines.bench.end_to_end: each row's training config, and the table's paired comparisons (the benchmark itself
is run by hand; one tiny run is in the slow set)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.bench.end_to_end import DEFAULT_ROWS, EndToEndBenchConfig, format_table, train_config


def test_rows_get_the_same_budget_their_data_and_their_warm_start(tmp_path):
    config = EndToEndBenchConfig(out=tmp_path, steps=7, episodes_per_step=4, lr_scale=0.25)
    configs = {name: train_config(config, name, tmp_path / "m.parquet", tmp_path / "store") for name in DEFAULT_ROWS}
    trained = {n: c for n, c in configs.items() if not DEFAULT_ROWS[n].get("untrained")}
    assert {(c.steps, c.episodes_per_step) for c in trained.values()} == {(7, 4)}
    assert {c.lr for n, c in configs.items() if DEFAULT_ROWS[n].get("untrained")} == {0.0}
    assert configs["otam cached"].source == "store" and configs["otam lora:4"].source == "manifest"
    assert configs["otam lora:4"].data.stage.tune == "lora:4" and configs["otam lora:4"].data.stage.lr_scale == 0.25
    assert configs["dmgal_ft"].data.stage is None  # DMGAL brings its own encoder
    assert configs["a2m2 last:1 warm"].init_from == configs["a2m2 cached"].out
    assert len({c.out for c in configs.values()}) == len(configs)


def test_table_pairs_each_row_with_its_reference():
    rng = np.random.default_rng(0)
    base = (rng.random(50) < 0.4).astype(float)
    better = np.maximum(base, (rng.random(50) < 0.5).astype(float))
    rows = {"otam cached": {"episodes_per_s": 100.0, "peak_rss_mib": 900.0},
            "otam full": {"episodes_per_s": 5.0, "peak_rss_mib": 1500.0}}
    summary = {"rows": rows, "accuracies": {"otam cached": {1: base}, "otam full": {1: better}}}
    table = format_table(summary, EndToEndBenchConfig(out="x", shots=[1]))  # type: ignore[arg-type]
    full = next(line for line in table.splitlines() if line.startswith("| otam full"))
    diff = 100 * (better - base).mean()
    assert f"+{diff:.2f}" in full and "otam cached" in full and "| 5.0 | 1500 |" in full


@pytest.mark.slow
def test_a_tiny_benchmark_runs_end_to_end(tmp_path):
    from pipelines.bench.end_to_end import run

    rows = {"otam cached": {"method": "otam", "knobs": {"proj_dim": 16}, "tune": "cached"},
            "otam lora:4": {"method": "otam", "knobs": {"proj_dim": 16}, "tune": "lora:4"}}
    summary = run(EndToEndBenchConfig(out=tmp_path, rows=rows, classes=50, videos_per_class=3, steps=2, val_every=1,
                                      val_episodes=10, episodes=20, shots=[1]), progress=False)
    assert set(summary["rows"]) == set(rows) and (tmp_path / "end_to_end.md").is_file()
    assert all(len(summary["accuracies"][r][1]) == 20 for r in rows)
