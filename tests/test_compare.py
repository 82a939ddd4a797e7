"""pipelines.compare: methods trained with one budget and scored on the same episodes, summarised in one table."""

from __future__ import annotations

import json

from helpers import make_shifting_patch_store

from pipelines.compare import CompareConfig, comparison_table, run


def test_comparison_trains_each_method_and_scores_all_on_the_same_episodes(tmp_path):
    store = make_shifting_patch_store(tmp_path / "store")
    config = CompareConfig(
        store=store, out=tmp_path / "cmp", steps=4, val_every=2, episodes=60, shots=[1, 2], workers=0,
        methods={"protonet": {"proj_dim": 8}, "a2m2@tiny": {"reduce_dim": 4, "embed_dim": 8, "weight_hidden": 8}},
    )
    records = run(config, progress=False)
    assert [(r.method.split(" ")[0].split("[")[0], r.shot) for r in records] == [
        ("protonet", 1), ("a2m2", 1), ("protonet", 2), ("a2m2", 2)]
    # A method with named configurations says which it ran, and the knobs set beside it.
    assert records[1].method == "a2m2[paper, embed_dim=8, reduce_dim=4, weight_hidden=8] (trained: a2m2@tiny)"
    assert records[1].configuration == "paper" and records[0].configuration == ""
    assert (tmp_path / "cmp" / "runs" / "a2m2@tiny" / "best.pt").is_file()
    assert all(r.episodes == 60 and r.run for r in records)
    episode_files = sorted(p.name for p in (tmp_path / "cmp" / "eval").glob("episodes-*.json"))
    assert len(episode_files) == 2  # one file per shot, shared by both methods
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.splitlines()[0].startswith("| method | 1-shot accuracy (%) | 2-shot accuracy (%) | Δ 1-shot vs protonet")
    assert "| a2m2@tiny |" in table and "| protonet | " in table
    assert len(json.loads((tmp_path / "cmp" / "eval" / "results.json").read_text())) == 4
    # The paired differences come from the per-episode file, which holds every (method, shot).
    from fsar.evaluation.results import read_per_episode

    per_episode = read_per_episode(tmp_path / "cmp" / "eval" / "per_episode.parquet")
    assert sorted(per_episode) == sorted((r.method, r.shot) for r in records)
    a2m2, proto = (next(r for r in records if r.shot == 1 and r.method.startswith(m)) for m in ("a2m2", "protonet"))
    diff = per_episode[(a2m2.method, 1)].mean() - per_episode[(proto.method, 1)].mean()
    assert f"{100 * diff:+.2f} ±" in table


def test_table_lists_parameters_and_rates():
    from fsar.evaluation.results import ResultRecord

    rec = ResultRecord("otam (trained)", "d", "test", 5, 1, 1000, 70.0, 0.5, 0, "s", "runs/otam", 0.5)
    table = comparison_table([rec], {"otam": 1234}, {"otam": 12.0}, train_rates={"otam": 400.0})
    assert "| otam | 70.00 ± 0.50 | 1,234 | 12 | 400 | 2,000 |" in table


def test_paired_differences_are_marked_when_they_exclude_zero():
    import numpy as np

    from fsar.evaluation.results import ResultRecord

    better = np.r_[np.ones(60), np.zeros(40)]  # 60 % on 100 episodes
    worse = np.r_[np.ones(50), np.zeros(50)]  # the same episodes but 10 fewer right: a paired difference of +10
    records = [ResultRecord(m, "d", "test", 5, 1, 100, 100 * a.mean(), 9.0, 0, "s", f"runs/{m}", 1.0)
               for m, a in (("otam", worse), ("a2m2", better))]
    table = comparison_table(records, {}, {}, reference="otam",
                             per_episode={("otam", 1): worse, ("a2m2", 1): better})
    row = next(line for line in table.splitlines() if line.startswith("| a2m2 |"))
    assert "**+10.00 ± 5.91**" in row  # the CI of the differences, far narrower than the accuracies' own (9.0)
    assert "| otam | 50.00 ± 9.00 | — |" in table


def test_ablation_variants_change_one_component_of_the_full_method(tmp_path):
    from pipelines.compare import ablation_methods

    config = CompareConfig(store=tmp_path, out=tmp_path, ablation="i2st", base={"temporal_centre": True, "layers": 2})
    methods = ablation_methods(config)
    assert methods["i2st"] == {"temporal_centre": True, "layers": 2}
    assert methods["i2st@0 attention layers"] == {"temporal_centre": True, "layers": 0}
    assert "i2st@2 attention layers" not in methods  # the full method already has 2 layers
    assert "i2st@masks: files" not in methods  # no mask folder for this store
    masks = tmp_path / "masks"
    masks.mkdir()
    with_masks = ablation_methods(CompareConfig(store=tmp_path, out=tmp_path, ablation="i2st", mask_files=str(masks)))
    assert with_masks["i2st@masks: files"] == {"mask_source": "files", "mask_files": str(masks)}
    assert set(ablation_methods(CompareConfig(store=tmp_path, out=tmp_path, ablation="dmgal"))) == {
        "dmgal", "dmgal@without S-MGA", "dmgal@without C-MGA", "dmgal@without the mixer"}
    import pytest

    from fsar.config import ConfigError

    with pytest.raises(ConfigError, match="no ablation for 'otam'"):
        ablation_methods(CompareConfig(store=tmp_path, out=tmp_path, ablation="otam"))
