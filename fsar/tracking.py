"""MLflow logging for runs: one place that picks the tracking URI and flattens configs into params.

The default store is a sqlite file in the run folder (MLflow 3 refuses a bare ``./mlruns`` file store);
any URI the user passes (a server, another sqlite file) is used as given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsar import storage
from fsar.config import ConfigError


def tracking_uri(run_dir: str | Path, uri: str | None = None) -> str:
    """``uri`` if given, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<run_dir>/mlflow.db`` (absolute).

    A folder on object storage cannot hold a SQLite file: there the tracking URI must be given."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_uri(run_dir):
        try:  # a scheme no client can open is the real problem: say that, not MLflow's
            storage.filesystem(run_dir)
        except storage.StorageError as exc:
            raise ConfigError(f"{run_dir}: {exc}") from None
        raise ConfigError(f"{run_dir} is on object storage, where MLflow's default SQLite file cannot live: set "
                          "MLFLOW_TRACKING_URI (or mlflow_uri=) to a tracking server or a local sqlite:/// file "
                          "(fsar embed and fsar eval can also run with mlflow=false)")
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the database file (MLflow would use ``./mlruns`` of
    whatever folder the job runs in); a server's URI keeps the server's own artifact store."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"knobs.proj_dim": "256", ...}`` (MLflow params are flat strings, ≤ 6000 chars)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten_params(value, prefix=f"{name}.")
        else:
            out[name] = str(value)[:6000]
    return out


class RunLogger:
    """One MLflow run driven through an explicit client (no process-global "active run"), so several
    runs, stores and threads in one process never cross. ``run_id`` reattaches to an existing run."""

    def __init__(self, *, uri: str, experiment: str, run_name: str | None = None, params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
                 run_id: str | None = None) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=artifact_location(uri))
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        if params:
            from mlflow.entities import Param

            flat = flatten_params(params)
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat.items()])

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, *, folder: str | None = None) -> None:
        """Log a local file, or a copy of one on object storage (under ``folder`` of the run's artifacts)."""
        if not storage.is_uri(path):
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)
            return
        import tempfile

        with tempfile.TemporaryDirectory() as staging:
            local = Path(staging) / storage.name(path)
            local.write_bytes(storage.read_bytes(path))
            self.client.log_artifact(self.run_id, str(local), artifact_path=folder)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
