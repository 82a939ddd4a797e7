"""pipelines.reproduce: a benchmark's recipes from a video tree laid out like the benchmark to one table, at the
smoke size, and a rerun that recomputes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsar.config import ConfigError
from fsar.data.split_lists import write_split_lists
from pipelines.cli import main as cli
from pipelines.reproduce import ReproduceConfig, run


def test_reproduce_a_table_then_resume_with_nothing_recomputed(synth, tmp_path, capsys):
    splits = write_split_lists(synth, tmp_path / "splits", "ucf_arn")
    out = tmp_path / "repro"
    args = ["reproduce", "--recipe-set", "ucf_arn", "--data", str(synth.parent / "videos"), "--out", str(out),
            "--splits", str(splits), "smoke=true", "families=[otam, a2m2-fsar]", "shots=[1]", "episodes=40",
            "embed={engine: local}", "train={way: 3}", "way=3"]
    assert cli(args) == 0
    summary = json.loads((out / "reproduce.json").read_text())
    assert set(summary["rows"]) == {"a2m2-fsar", "a2m2-fsar-fast", "otam"} and summary["reference"] == "a2m2-fsar"
    stages = summary["stages"]
    assert all(stage["ran"] for stage in stages.values())
    assert {"manifest", "train a2m2-fsar-fast/ucf_arn/1shot", "train a2m2-fsar/ucf_arn/1shot",
            "train otam/ucf_arn/1shot"} <= set(stages)
    warm = yaml_of(out / "runs" / "a2m2-fsar" / "1shot" / "train_config.yaml")
    assert warm["init_from"] == str(out / "runs" / "a2m2-fsar-fast" / "1shot")  # the end-to-end run starts warm
    assert warm["recipe"] == "a2m2-fsar/ucf_arn/1shot@1" and warm["data"]["stage"]["backbone"] == "fsar-tiny"
    otam = summary["rows"]["otam"]["1"]
    assert 0 <= otam["accuracy"] <= 100 and otam["published"] is None and "paired" in otam
    table = (out / "reproduce.md").read_text()
    assert "| otam |" in table and "smoke" in table
    capsys.readouterr()
    assert cli(args) == 0  # the same command again: every stage found done
    again = json.loads((out / "reproduce.json").read_text())["stages"]
    assert not any(stage["ran"] for stage in again.values()), again
    assert "0 of" in capsys.readouterr().out


def yaml_of(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_reproduce_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="recipe_set 'ucf' is a benchmark"):
        ReproduceConfig(recipe_set="ucf", data=tmp_path, out=tmp_path / "o")
    with pytest.raises(ConfigError, match="shots must be 1 and/or 5"):
        ReproduceConfig(recipe_set="ucf_arn", data=tmp_path, out=tmp_path / "o", shots=[3])
    with pytest.raises(ConfigError, match="unknown recipe families \\['otm'\\]"):
        run(ReproduceConfig(recipe_set="ucf_arn", data=tmp_path, out=tmp_path / "o", families=["otm"]))
