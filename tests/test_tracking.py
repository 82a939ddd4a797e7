"""fsar.tracking: where a job's MLflow runs go, and the errors that say how to fix a location."""

from __future__ import annotations

import pytest

from fsar.config import ConfigError
from fsar.tracking import artifact_location, tracking_uri


def test_default_is_a_sqlite_file_in_the_run_folder_and_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path / "run") == f"sqlite:///{(tmp_path / 'run').resolve() / 'mlflow.db'}"
    assert tracking_uri(tmp_path, "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert tracking_uri("s3://bucket/run") == "http://127.0.0.1:5001"
    assert artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "mlartifacts").resolve().as_uri()


def test_object_storage_needs_a_tracking_uri_and_an_unknown_scheme_is_named_first(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI \\(or mlflow_uri=\\)"):
        tracking_uri("s3://bucket/run")
    with pytest.raises(ConfigError, match="nosuchscheme") as unknown:
        tracking_uri("nosuchscheme://bucket/run")
    assert "MLflow" not in str(unknown.value)  # the scheme is the problem, not tracking
