"""pipelines.compare: methods trained with one budget and scored on the same episodes, summarised in one table."""

from __future__ import annotations

import json

from pipelines.compare import CompareConfig, comparison_table, run
from tests.test_training import make_patch_store


def test_comparison_trains_each_method_and_scores_all_on_the_same_episodes(tmp_path):
    store = make_patch_store(tmp_path / "store")
    config = CompareConfig(
        store=store, out=tmp_path / "cmp", steps=4, val_every=2, episodes=60, shots=[1, 2], workers=0,
        methods={"protonet": {"proj_dim": 8}, "a2m2@tiny": {"reduce_dim": 4, "embed_dim": 8, "weight_hidden": 8}},
    )
    records = run(config, progress=False)
    assert [(r.method.split(" ")[0], r.shot) for r in records] == [
        ("protonet", 1), ("a2m2", 1), ("protonet", 2), ("a2m2", 2)]
    assert (tmp_path / "cmp" / "runs" / "a2m2@tiny" / "best.pt").is_file()
    assert all(r.episodes == 60 and r.run for r in records)
    episode_files = sorted(p.name for p in (tmp_path / "cmp" / "eval").glob("episodes-*.json"))
    assert len(episode_files) == 2  # one file per shot, shared by both methods
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.splitlines()[0].startswith("| method | 1-shot accuracy (%) | 2-shot accuracy (%) | parameters")
    assert "| a2m2@tiny |" in table
    assert len(json.loads((tmp_path / "cmp" / "eval" / "results.json").read_text())) == 4


def test_table_lists_parameters_and_rates():
    from fsar.eval import ResultRecord

    rec = ResultRecord("otam (trained)", "d", "test", 5, 1, 1000, 70.0, 0.5, 0, "s", "runs/otam", 0.5)
    table = comparison_table([rec], {"otam": 1234}, {"otam": 12.0})
    assert "| otam | 70.00 ± 0.50 | 1,234 | 12 | 2,000 |" in table
