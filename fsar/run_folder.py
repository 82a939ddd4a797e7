"""A training run's folder: its layout, and reading and writing its files on a local path or a URI.

Every job that touches a run (``fsar train``, a sweep's trials, ``fsar eval``, comparisons) goes through
``RunFolder``; no job spells a file name of it. The layout::

    <run>/train_config.yaml   the resolved config (a rerun with the same config resumes or is a no-op)
    <run>/best.pt             the best validation checkpoint (weights and config; no optimiser state)
    <run>/metrics.jsonl       one line per validation (rank 0), in step order
    <run>/mlflow_run_id       the run's MLflow run, so a restarted worker group logs to the same one
    <run>/finished.json       written last: best validation accuracy, its step, the steps
    <run>/status.json         a sweep trial's final status (finished, stopped, error)
    <run>/feature_loads.json  how often each node loaded each split (Ray jobs on a store)
    <run>/ray_train/          Ray Train's own state (its latest checkpoints)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fsar import storage
from fsar.config import dump_yaml, to_dict
from fsar.storage import Location

CONFIG_FILE = "train_config.yaml"
BEST_CHECKPOINT = "best.pt"
LATEST_CHECKPOINT = "latest.pt"  # the last validation's full state: what a rerun resumes from when Ray has none
METRICS_FILE = "metrics.jsonl"
MLFLOW_RUN_ID_FILE = "mlflow_run_id"
FINISHED_FILE = "finished.json"
STATUS_FILE = "status.json"
FEATURE_LOADS_FILE = "feature_loads.json"
RAY_TRAIN_DIR = "ray_train"

# What a new run in a used folder clears (the same config, unfinished, keeps them all and resumes).
RUN_STATE = (METRICS_FILE, BEST_CHECKPOINT, LATEST_CHECKPOINT, MLFLOW_RUN_ID_FILE, FINISHED_FILE, RAY_TRAIN_DIR)


@dataclass(frozen=True)
class RunFolder:
    """One run's folder (a local path or a URI; ``storage`` reads and writes both)."""

    root: Location

    @classmethod
    def at(cls, path: str | Location) -> RunFolder:
        return cls(storage.as_location(path))

    @classmethod
    def of_checkpoint(cls, path: str | Location) -> RunFolder:
        """The run a checkpoint belongs to: a ``.pt`` file's folder, or the folder itself."""
        return cls(storage.parent(path) if str(path).endswith(".pt") else storage.as_location(path))

    @property
    def name(self) -> str:
        return storage.name(self.root)

    def file(self, name: str) -> Location:
        return storage.join(self.root, name)

    # ------------------------------------------------------------------ layout
    @property
    def config_file(self) -> Location:
        return self.file(CONFIG_FILE)

    @property
    def best_checkpoint(self) -> Location:
        return self.file(BEST_CHECKPOINT)

    @property
    def latest_checkpoint(self) -> Location:
        return self.file(LATEST_CHECKPOINT)

    @property
    def metrics_file(self) -> Location:
        return self.file(METRICS_FILE)

    @property
    def ray_train_name(self) -> str:
        """The name Ray Train keeps its state under, inside this folder (its storage_path)."""
        return RAY_TRAIN_DIR

    @property
    def feature_loads_file(self) -> Location:
        return self.file(FEATURE_LOADS_FILE)

    # ------------------------------------------------------------------ config
    def holds_config(self, config: Any) -> bool:
        """Whether the folder's ``train_config.yaml`` is exactly ``config``."""
        import yaml

        return storage.is_file(self.config_file) and (
            storage.read_text(self.config_file) == yaml.safe_dump(to_dict(config), sort_keys=False))

    def write_config(self, config: Any) -> None:
        dump_yaml(config, self.config_file)

    def start_afresh(self) -> None:
        """Clear a previous run's state (Ray Train's too: with the same storage path it would resume the old
        run's latest checkpoint)."""
        for name in RUN_STATE:
            storage.delete(self.file(name))

    # ------------------------------------------------------------------ MLflow
    def mlflow_run_id(self) -> str | None:
        path = self.file(MLFLOW_RUN_ID_FILE)
        return storage.read_text(path).strip() if storage.is_file(path) else None

    def write_mlflow_run_id(self, run_id: str) -> None:
        storage.write_text(self.file(MLFLOW_RUN_ID_FILE), run_id)

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, metrics: dict[str, Any]) -> None:
        storage.append_text(self.metrics_file, json.dumps(metrics) + "\n")

    def metrics_lines(self) -> list[str]:
        """The raw lines of ``metrics.jsonl`` as written (empty when there is none yet)."""
        return storage.read_text(self.metrics_file).splitlines() if storage.is_file(self.metrics_file) else []

    def metrics(self) -> list[dict[str, Any]]:
        """The metrics in step order, one per step (a step logged twice, after a resume, keeps its last line)."""
        by_step: dict[int, dict[str, Any]] = {}
        for line in self.metrics_lines():
            if line.strip():
                m = json.loads(line)
                by_step[int(m["step"])] = m
        return [by_step[s] for s in sorted(by_step)]

    # ------------------------------------------------------------------ checkpoints and completion
    def has_best(self) -> bool:
        return storage.is_file(self.best_checkpoint)

    def is_finished(self) -> bool:
        """Finished and complete: ``finished.json`` is written after ``best.pt``."""
        return storage.is_file(self.file(FINISHED_FILE)) and self.has_best()

    def mark_finished(self, summary: dict[str, Any]) -> None:
        storage.write_text(self.file(FINISHED_FILE), json.dumps(summary))

    def status(self) -> str | None:
        """A sweep trial's final status, None while it has none."""
        path = self.file(STATUS_FILE)
        return json.loads(storage.read_text(path))["status"] if storage.is_file(path) else None

    def write_status(self, status: str, error: str = "") -> None:
        storage.write_text(self.file(STATUS_FILE), json.dumps({"status": status, "error": error}))
