"""``fsar eval`` (pipelines.evaluate): several shots in one table, the view and the training data in
results.json, cross-dataset runs (same features, another dataset) and the refusals, and the MLflow run of
an evaluation linked to the training runs it scored."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from helpers import make_signal_store

from fsar.data.feature_store import read_meta, write_meta
from pipelines.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store, another dataset embedded the same way, and a ProtoNet run trained on the first."""
    root = tmp_path_factory.mktemp("evaluate")
    store = make_signal_store(root / "store-a")
    other = make_signal_store(root / "store-b", seed=5)
    run = root / "run"
    assert main(["train", "--store", str(store), "--method", "protonet", "--out", str(run), "--steps", "20",
                 "--lr", "0.03", "knobs.proj_dim=16", "val_every=10", "val_episodes=100", "log_checkpoint=true"]) == 0
    return store, other, run


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_several_shots_one_table_each_on_its_own_episodes(trained, tmp_path):
    store, _, run = trained
    out = tmp_path / "eval"
    assert main(["eval", "--store", str(store), "--out", str(out), "--method", "otam", "--run", str(run),
                 "--episodes", "40", "--shot", "1,3,5", "mlflow=false"]) == 0
    records = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["shot"]) for r in records] == [
        (m, s) for s in (1, 3, 5) for m in ("otam", "protonet (trained: run)")]
    assert sorted(p.name for p in out.glob("episodes-*.json")) == [
        f"episodes-test-5way{s}shot1q-n40-seed0.json" for s in (1, 3, 5)]
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| method | 5-way 1-shot (%) | 5-way 3-shot (%) | 5-way 5-shot (%) | Δ 1-shot vs otam")
    assert table[3].startswith("| protonet (trained: run) | " + " | ".join(
        f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" for r in records[1::2]))
    assert (out / "results.png").stat().st_size > 1000
    assert all(r["view"] == "pooled" for r in records)  # frame methods read the pooled embedding by default
    trained_record = records[1]
    assert trained_record["train_store"] == str(store) and trained_record["train_dataset"] == store.name
    assert records[0]["train_store"] is None
    # The same evaluation run again for one shot reads back that shot's episodes: identical scores.
    assert main(["eval", "--store", str(store), "--out", str(out), "--method", "otam", "--episodes", "40",
                 "--shot", "3", "mlflow=false"]) == 0
    (again,) = json.loads((out / "results.json").read_text())
    assert again["accuracy"] == records[2]["accuracy"]


@pytest.mark.parametrize("text,message", [("0", "shot must be a positive number"), ("1,1", "distinct")])
def test_bad_shot_lists_are_refused(trained, tmp_path, capsys, text, message):
    store, _, _ = trained
    assert main(["eval", "--store", str(store), "--out", str(tmp_path / "e"), "--method", "otam",
                 "--shot", text]) == 2
    assert message in capsys.readouterr().err


def test_a_run_scores_on_another_dataset_with_the_same_features(trained, tmp_path):
    store, other, run = trained
    out = tmp_path / "cross"
    assert main(["eval", "--store", str(other), "--out", str(out), "--run", str(run), "--episodes", "40",
                 "mlflow=false"]) == 0
    (record,) = json.loads((out / "results.json").read_text())
    assert (record["dataset"], record["train_dataset"]) == ("store-b", "store-a")
    assert record["store"] == str(other) and record["train_store"] == str(store)


@pytest.mark.parametrize("change,message", [
    ({"backbone": "ViT-B-16"}, "trained on fsar-tiny/None features but store"),
    ({"frames": 6}, "trained on 4 frames per video but store"),
])
def test_a_store_with_other_features_is_refused(trained, tmp_path, capsys, change, message):
    _, other, run = trained
    changed = tmp_path / "changed"
    shutil.copytree(other, changed)
    write_meta(changed, dataclasses.replace(read_meta(changed), **change))
    assert main(["eval", "--store", str(changed), "--out", str(tmp_path / "e"), "--run", str(run),
                 "mlflow=false"]) == 2
    err = capsys.readouterr().err
    assert message in err and ("--backbone" in err or "--frames" in err)


@pytest.mark.parametrize("args,message", [
    (["--episodes", "0"], "episodes must be >= 1, got 0"),
    (["way=40"], "way=40 needs 40 classes"),
])
def test_an_impossible_evaluation_is_refused_before_it_writes_a_file(trained, tmp_path, capsys, args, message):
    store, _, _ = trained
    out = tmp_path / "e"
    assert main(["eval", "--store", str(store), "--out", str(out), "--method", "protonet", "mlflow=false",
                 *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # no config, no episode file, not even the folder


def test_an_evaluation_is_an_mlflow_run_linked_to_the_runs_it_scored(trained, tmp_path):
    store, _, run = trained
    out = tmp_path / "eval"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["eval", "--store", str(store), "--out", str(out), "--method", "otam", "--run", str(run),
                 "--episodes", "30", "--shot", "1,5", f"mlflow_uri={uri}"]) == 0
    client = mlflow_client(uri)
    evaluation = client.get_run((out / "mlflow_run_id").read_text().strip())
    records = json.loads((out / "results.json").read_text())
    assert {k: round(v, 6) for k, v in evaluation.data.metrics.items() if k.startswith("accuracy/")} == {
        f"accuracy/{'otam' if r['run'] is None else 'protonet_trained_run'}/{r['shot']}shot": round(r["accuracy"], 6)
        for r in records}
    assert evaluation.data.tags["fsar.training_runs"] == (run / "mlflow_run_id").read_text().strip()
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"results.json", "results.md", "results.png", "per_episode.parquet"} <= artifacts


def test_a_training_run_names_its_best_checkpoint(trained):
    _, _, run = trained
    client = mlflow_client(f"sqlite:///{run / 'mlflow.db'}")
    training = client.get_run((run / "mlflow_run_id").read_text().strip())
    assert training.data.tags["fsar.best_checkpoint"] == str((run / "best.pt").resolve())
    assert "best.pt" in {a.path for a in client.list_artifacts(training.info.run_id)}  # log_checkpoint=true


def test_a_run_and_an_evaluation_on_object_storage(trained, tmp_path, s3):
    """Store, trained run and output folder all in a bucket, through the command line: the same scores as
    the local evaluation of the same run, the results written there, the episodes read back on a rerun."""
    import pyarrow.fs as pafs

    from fsar import storage

    store, _, run = trained
    pafs.copy_files(str(store), f"{s3}/store")
    pafs.copy_files(str(run / "best.pt"), f"{s3}/runs/run/best.pt")
    out, local = f"{s3}/eval", tmp_path / "eval"
    common = ["--method", "otam", "--episodes", "30", "--shot", "1,5", "mlflow=false"]
    assert main(["eval", "--store", f"{s3}/store", "--out", out, "--run", f"{s3}/runs/run", *common]) == 0
    assert main(["eval", "--store", str(store), "--out", str(local), "--run", str(run), *common]) == 0
    remote_records = json.loads(storage.read_text(f"{out}/results.json"))
    local_records = json.loads((local / "results.json").read_text())
    assert [r["accuracy"] for r in remote_records] == [r["accuracy"] for r in local_records]
    assert remote_records[0]["dataset"] == "store" and remote_records[1]["run"] == f"{s3}/runs/run"
    assert {storage.name(p) for p in storage.list_files(out)} >= {
        "results.json", "results.md", "results.png", "per_episode.parquet", "episodes-test-5way1shot1q-n30-seed0.json"}
    import yaml

    assert yaml.safe_load(storage.read_text(f"{out}/eval_config-1shot.yaml"))["out"] == out  # not the local stand-in
    assert main(["eval", "--store", f"{s3}/store", "--out", out, "--method", "otam", "--episodes", "30", "--shot", "5",
                 "mlflow=false"]) == 0
    assert json.loads(storage.read_text(f"{out}/results.json"))[0]["accuracy"] == remote_records[2]["accuracy"]
