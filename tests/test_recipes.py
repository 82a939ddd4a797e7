"""fsar.recipes: every shipped recipe resolves and validates, runs a few steps at a tiny size with its structure
unchanged, and `fsar train --recipe` records it."""

from __future__ import annotations

import pytest
import yaml

from fsar.config import ConfigError, from_dict
from fsar.embedding import EmbedConfig
from fsar.methods import method_info
from fsar.methods.registry import resolve_configuration
from fsar.recipes import all_recipes, get_recipe, recipe_files, recipes_table, shrink
from fsar.training.config import TrainConfig
from pipelines.cli import main as cli

RECIPES = all_recipes()


@pytest.fixture(scope="module")
def tiny_store(synth, tmp_path_factory):
    """The synth videos embedded by fsar-tiny with a 4x4 grid and class text: what a fast recipe reads, shrunk."""
    from fsar.backbones import TINY_MODEL
    from pipelines.embed import run as embed

    out = tmp_path_factory.mktemp("store") / "store"
    embed(EmbedConfig(manifest=synth, out=out, backbone=TINY_MODEL, pretrained="none", frames=4, patch_grid=4,
                      engine="local", mlflow=False), progress=False)
    return out


def as_train_config(mapping: dict, source: str, where: str) -> TrainConfig:
    data = dict(mapping.get("data") or {}) | {source: where}
    return from_dict(TrainConfig, mapping | {"data": data, "out": "/runs/x"})


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_resolves_and_validates(recipe):
    train = recipe.train_mapping()
    config = as_train_config(train, "store" if recipe.kind == "fast" else "manifest", "/data/m")
    assert config.recipe == f"{recipe.name}@{recipe.family.version}" and config.shot == recipe.shot
    knobs = dict(config.knobs)
    _, base = resolve_configuration(config.method, knobs.pop("configuration", None))
    from_dict(method_info(config.method).config, base | knobs, where=recipe.name)  # the method's knobs are its own
    if recipe.kind == "fast":
        embed = recipe.embed_mapping()
        assert embed is not None
        from_dict(EmbedConfig, embed | {"manifest": "/data/m", "out": "/stores/s"})
    else:
        assert config.source == "manifest" and config.episodes_per_step % max(1, config.workers) == 0
    facts = recipe.family.facts
    assert facts.frames == config.data.frames if recipe.kind == "end_to_end" else True
    assert recipe.target.source  # every target names its source, found or not


def test_recipe_names_and_errors():
    families = {f.family for f in recipe_files()}
    assert {"trx", "dmgal_ft", "clip_fsar", "otam", "a2m2-paper", "a2m2-fsar", "i2st-paper", "i2st-fsar",
            "dmgal_adapter-paper", "dmgal_adapter-fsar"} <= families
    assert get_recipe("trx/ucf_arn/5shot").target.accuracy == 96.1
    with pytest.raises(ConfigError, match="FAMILY\\[-fast\\]/BENCHMARK/Kshot.*trx/"):
        get_recipe("trx/ucf/5shot")
    table = recipes_table([get_recipe("clip_fsar-fast/hmdb_arn/5shot")])
    assert "| clip_fsar-fast/hmdb_arn/5shot | 1 | clip_fsar | fast | CLIP RN50 | frozen (store) | 2000 x 16 |" in table
    assert get_recipe("clip_fsar/hmdb_arn/5shot").train_mapping()["knobs"] == {
        "gamma": 0.5, "text_loss_weight": 1.2, "merge_support": True}


FAMILY_SAMPLES = sorted({r.name.split("/")[0]: r for r in RECIPES if r.benchmark == "ucf_arn" and r.shot == 1}.values(),
                        key=lambda r: r.name)


@pytest.mark.parametrize("recipe", FAMILY_SAMPLES, ids=[r.name for r in FAMILY_SAMPLES])
def test_every_recipe_family_runs_a_few_steps_at_a_tiny_size(recipe, synth, tiny_store, tmp_path):
    from pipelines.train import run

    mapping = shrink(recipe.train_mapping())
    assert mapping["method"] == recipe.family.method and mapping["knobs"].keys() >= (
        recipe.train_mapping()["knobs"].keys())  # the structure is the recipe's
    source, where = ("store", tiny_store) if recipe.kind == "fast" else ("manifest", synth)
    config = as_train_config(mapping | {"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "way": 3},
                             source, str(where))
    result = run(from_dict(TrainConfig, as_dict(config) | {"out": str(tmp_path / "run")}))
    assert result.steps == 2 and (tmp_path / "run" / "best.pt").is_file()
    assert yaml.safe_load((tmp_path / "run" / "train_config.yaml").read_text())["recipe"] == recipe.label


def as_dict(config: TrainConfig) -> dict:
    from fsar.config import to_dict

    return to_dict(config)


def test_train_recipe_flag_records_the_recipe_and_overrides_apply(synth, tmp_path, monkeypatch):
    from pipelines.train import TrainResult

    seen = {}

    def resolved_only(config, address=None, overwrite=False):  # what `fsar train` resolved, without training
        seen["config"] = config
        return TrainResult(tmp_path, tmp_path / "best.pt", 0.0, 0, config.steps, None)

    monkeypatch.setattr("pipelines.train.run", resolved_only)
    assert cli(["train", "--recipe", "trx/hmdb_arn/1shot", "--manifest", str(synth), "--out", str(tmp_path / "r"),
                "lr=0.01", "data.stage.pretrained=/weights/r50.pt"]) == 0
    config = seen["config"]
    assert config.recipe == "trx/hmdb_arn/1shot@1" and config.lr == 0.01 and config.optimizer == "sgd"
    assert config.data.stage.pretrained == "/weights/r50.pt" and config.data.stage.backbone == "resnet50"
    assert cli(["train", "--recipe", "trx/nowhere/1shot", "--manifest", str(synth), "--out", str(tmp_path / "r")]) == 2


def test_a_recipe_that_expects_weights_refuses_to_start_without_them(synth, tmp_path, capsys):
    assert cli(["train", "--recipe", "trx/ucf_arn/1shot", "--manifest", str(synth), "--out", str(tmp_path / "r")]) == 2
    assert "set data.stage.pretrained=FILE" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
