"""Ray Train job: in-process mode and a real 2-worker TorchTrainer on CPU, MLflow and best.pt outputs."""

from __future__ import annotations

import json

import pytest
from test_training import config, make_signal_store

from fsar.training import load_checkpoint
from pipelines.train import run


@pytest.fixture(scope="module")
def signal_store(tmp_path_factory):
    return make_signal_store(tmp_path_factory.mktemp("store") / "store")


def check_outputs(result, steps, val_every):
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(val_every, steps + 1, val_every))
    assert lines[-1]["best_val_accuracy"] > lines[0]["val_accuracy"]  # improves over its first check
    assert result.best_val_accuracy == max(m["val_accuracy"] for m in lines)
    method, payload = load_checkpoint(result.best_checkpoint)
    assert payload["step"] == result.best_step and payload["val_accuracy"] == result.best_val_accuracy
    assert (result.run_dir / "train_config.yaml").is_file()
    return lines


def test_in_process(signal_store, tmp_path):
    result = run(config(signal_store, tmp_path / "run", workers=0))
    check_outputs(result, 60, 20)
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}").get_run(result.mlflow_run_id)
    assert logged.data.params["method"] == "protonet" and logged.data.params["knobs.proj_dim"] == "16"
    assert logged.data.metrics["best_val_accuracy"] == pytest.approx(result.best_val_accuracy)


def test_two_workers(signal_store, tmp_path, ray_local):
    result = run(config(signal_store, tmp_path / "run", workers=2, steps=60))
    lines = check_outputs(result, 60, 20)
    assert lines[-1]["episodes_per_s"] > 0


def test_mlflow_artifacts_stay_in_the_run_folder(signal_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(config(signal_store, tmp_path / "run", workers=0, steps=20))
    assert not (tmp_path / "mlruns").exists()
    assert list((result.run_dir / "mlartifacts").rglob("train_config.yaml"))
