"""Hyperparameter sweeps with Ray Tune over the episodic training function.

``python -m pipelines.tune --store STORE --space FILE.yaml --out DIR [key=value ...]`` or ``fsar tune``.
Each trial is one training run (``fsar.training.train_worker``, in the trial's process) drawn from the
search space (``fsar.search_space``), validated on the **val** split; ASHA stops trials whose validation
accuracy falls behind at its rungs; as many trials run at once as the cluster's CPUs/GPUs hold at
``cpus_per_trial``/``gpus_per_trial`` each (``max_concurrent`` caps it further).

Outputs in ``out``: ``trials/<trial_id>/`` (resolved ``train_config.yaml``, ``metrics.jsonl``,
``status.json``), ``trials.csv``, ``results.md``, ``results.png``, ``best_config.yaml`` (the best trial's
TrainConfig, ready for ``fsar train --config``), ``tune/`` (Ray Tune's state and checkpoints) and, by
default, the MLflow store ``mlflow.db``: one parent run per sweep, one child run per trial.

Rerunning the same command on the same ``out`` resumes an interrupted sweep: finished and early-stopped
trials are kept as they are, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler

from fsar.atomic import atomic_write_text
from fsar.config import ConfigError, dump_yaml, to_dict
from fsar.search_space import SearchSpace, load_search_space
from fsar.sweep import (
    TrialRecord,
    best_trial,
    ranked,
    record_from_metrics,
    write_results_md,
    write_trials_csv,
)
from fsar.tracking import RunLogger, tracking_uri

__all__ = ["SweepConfig", "SweepResult", "run", "main"]

# What train_worker reports at each validation; the rest of a Tune result is Tune's own bookkeeping.
REPORTED = ("step", "train_loss", "train_accuracy", "lr", "episodes_per_s", "val_accuracy", "val_ci95",
            "best_val_accuracy", "is_best")


@dataclass
class SweepConfig:
    """``fsar tune``: a search space swept over a feature store with Ray Tune."""

    store: Path  # feature store folder (from `fsar embed`)
    space: Path  # search space file: method, metric, trials, fixed settings, distributions (fsar.search_space)
    out: Path  # sweep folder: trials/, trials.csv, results.md/.png, best_config.yaml, tune/, mlflow.db
    trials: int | None = None  # trials to sample (default: the space file's `trials`)
    fixed: dict[str, Any] = field(default_factory=dict)  # added to / replacing the space file's fixed settings (e.g. steps for a smoke test)
    cpus_per_trial: float = 1.0  # CPUs reserved per trial; with the cluster's CPUs this bounds concurrency
    gpus_per_trial: float = 0.0  # GPUs reserved per trial (fractions share one); > 0 trains on the GPU
    max_concurrent: int = 0  # at most this many trials at once (0: as many as the cluster's resources hold)
    grace_period: int | None = None  # ASHA: steps before a trial can be stopped (default: its first validation)
    reduction_factor: float = 2.0  # ASHA: at each rung, trials below the top 1/reduction_factor stop
    max_failures: int = 1  # retries of a failed trial from its last checkpoint
    mlflow_uri: str | None = None  # MLflow tracking URI (default: sqlite file in the sweep folder)
    experiment: str = "fsar-tune"  # MLflow experiment name
    verbose: int = 1  # Ray Tune console output: 0 silent, 1 status table, 2 every result


@dataclass(frozen=True)
class SweepResult:
    """What a sweep left behind."""

    out: Path  # the sweep folder
    records: list[TrialRecord]  # one per trial, best first
    best: TrialRecord | None  # the best trial (None before any trial validated)
    best_config: Path | None  # best_config.yaml, once every trial is done
    complete: bool  # False when the sweep was interrupted: rerun the same command to resume
    mlflow_run_id: str  # the sweep's parent MLflow run


def _trial_dirname(trial: Any) -> str:
    """Trial folders named by id alone (Tune's default repeats the whole config in the name)."""
    return trial.trial_id


def _trial_settings(config: SweepConfig, space: SearchSpace) -> dict[str, Any]:
    """The TrainConfig fields a sweep sets for every trial (not drawn, not in the space file)."""
    settings: dict[str, Any] = {"workers": 0, "use_gpu": config.gpus_per_trial > 0}
    if "threads_per_worker" not in space.fixed and "threads_per_worker" not in space.space:
        settings["threads_per_worker"] = max(1, int(config.cpus_per_trial))  # torch uses the CPUs reserved
    return settings


def _trial_config(space: SearchSpace, values: dict[str, Any], *, store: Path, out: Path, trial_id: str,
                  settings: dict[str, Any]) -> Any:
    return space.train_config(values, store=store, out=out / "trials" / trial_id, **settings)


def make_trainable(space: SearchSpace, *, store: Path, out: Path, settings: dict[str, Any]) -> Callable[[dict], None]:
    """The Tune function trainable: one in-process training run per trial, every validation reported to
    Tune with a checkpoint (latest weights and optimiser state) so a stopped sweep resumes mid-trial."""

    def fsar_trial(values: dict[str, Any]) -> None:
        import torch
        from ray import tune

        from fsar.training import save_checkpoint, train_worker

        trial_id = tune.get_context().get_trial_id()
        config = _trial_config(space, values, store=store, out=out, trial_id=trial_id, settings=settings)
        state, start_step = None, 0
        resume = tune.get_checkpoint()
        if resume is not None:
            with resume.as_directory() as folder:
                state = torch.load(Path(folder) / "checkpoint.pt", map_location="cpu", weights_only=True)
            start_step = int(state["step"])
            if start_step >= config.steps:
                # Finished after the sweep state was last saved (a hard kill): report, do not retrain.
                tune.report(dict(state["metrics"]))
                return

        def report(metrics: dict[str, float], payload: dict[str, Any] | None) -> None:
            if payload is None:  # only rank 0 validates; a trial is always rank 0
                tune.report(metrics)
                return
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(payload | {"metrics": metrics}, Path(folder) / "checkpoint.pt")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

        # Ray makes only the trial's own GPUs visible to it; without gpus_per_trial the trial stays on the CPU
        # even where the node has a GPU (another trial may hold it).
        device = torch.device("cuda") if config.use_gpu else torch.device("cpu")
        train_worker(config, report=report, device=device, start_step=start_step, state=state)

    return fsar_trial


def _tune_domains(space: SearchSpace) -> dict[str, Any]:
    from ray import tune

    domains: dict[str, Any] = {}
    for name, dist in space.space.items():
        if dist.kind == "choice":
            domains[name] = tune.choice(list(dist.values))
        elif dist.kind == "loguniform":
            domains[name] = tune.loguniform(*dist.values)
        else:
            domains[name] = tune.uniform(*dist.values)
    return domains


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Metrics lines in step order, one per step (the last written wins)."""
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            by_step[int(m["step"])] = m
    return [by_step[s] for s in sorted(by_step)]


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA whose rung records survive a resumed sweep. Tune saves its searcher's state but not its
    scheduler's, so a restored sweep would judge the remaining trials only against each other; here the
    rungs (milestone → trial id → reward) go to ``state_file`` at every decision and are read back on
    first use after a restore."""

    def __init__(self, *, state_file: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_file = str(state_file)
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = Path(self.state_file)
        if path.is_file():
            saved = json.loads(path.read_text())
            for bracket, rungs in zip(self._brackets, saved, strict=False):
                for (milestone, recorded), (saved_milestone, values) in zip(bracket._rungs, rungs, strict=False):
                    if milestone == saved_milestone:
                        recorded.update(values)

    def _save(self) -> None:
        atomic_write_text(Path(self.state_file),
                          json.dumps([[[m, r] for m, r in bracket._rungs] for bracket in self._brackets]))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()


class SweepTracker(Callback):
    """Driver-side record of every trial: its folder (resolved config, metrics, final status) and its
    MLflow child run. Logging from the driver keeps one writer on the tracking store and works where
    trials run on nodes that cannot reach it. Tune pickles its callbacks into the sweep state for
    resume, so this keeps plain data only (clients are reopened on demand).
    """

    def __init__(self, *, space: SearchSpace, store: Path, out: Path, settings: dict[str, Any], uri: str,
                 experiment: str, parent_run_id: str) -> None:
        self.space, self.store, self.out, self.settings = space, store, out, settings
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self._loggers: dict[str, RunLogger] = {}
        self._last_step: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_loggers": {}, "_last_step": {}}

    def folder(self, trial_id: str) -> Path:
        return self.out / "trials" / trial_id

    def config(self, trial_id: str, values: dict[str, Any]) -> Any:
        return _trial_config(self.space, values, store=self.store, out=self.out, trial_id=trial_id,
                             settings=self.settings)

    def logger(self, trial_id: str, values: dict[str, Any]) -> RunLogger:
        """The trial's child run: created at its first start, reattached when it resumes."""
        if trial_id in self._loggers:
            return self._loggers[trial_id]
        folder = self.folder(trial_id)
        run_id_file = folder / "mlflow_run_id"
        if run_id_file.is_file():
            logger = RunLogger(uri=self.uri, experiment=self.experiment, run_id=run_id_file.read_text().strip())
        else:
            config = self.config(trial_id, values)
            dump_yaml(config, folder / "train_config.yaml")
            logger = RunLogger(uri=self.uri, experiment=self.experiment, run_name=f"{self.space.method}-{trial_id}",
                               params=to_dict(config), parent_run_id=self.parent_run_id,
                               tags={"fsar.kind": "trial", "fsar.method": self.space.method, "fsar.trial_id": trial_id})
            atomic_write_text(run_id_file, logger.run_id)
        self._loggers[trial_id] = logger
        return logger

    # ---------------------------------------------------------------- Ray Tune callback hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.logger(trial.trial_id, trial.config)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        metrics = {k: result[k] for k in REPORTED if k in result}
        logger = self.logger(trial.trial_id, trial.config)
        path = self.folder(trial.trial_id) / "metrics.jsonl"
        if trial.trial_id not in self._last_step:
            logged = _read_jsonl(path)
            self._last_step[trial.trial_id] = int(logged[-1]["step"]) if logged else 0
        if int(metrics["step"]) <= self._last_step[trial.trial_id]:
            # A replay: after a hard kill a trial resumes from the last checkpoint the sweep state
            # recorded, which may precede results already logged here (training is seeded: same values).
            return
        self._last_step[trial.trial_id] = int(metrics["step"])
        with path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        logger.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        steps = self.config(trial.trial_id, trial.config).steps
        last = int((trial.last_result or {}).get("step", 0))
        self._finish(trial, "finished" if last >= steps else "stopped", "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "error", "FAILED", error=str(trial.error_file or ""))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """An interrupted sweep leaves running trials unfinished: their child runs say so until resumed."""
        for trial_id, logger in self._loggers.items():
            if not (self.folder(trial_id) / "status.json").is_file():
                logger.end("KILLED")

    def _finish(self, trial: Any, status: str, mlflow_status: str, error: str = "") -> None:
        folder = self.folder(trial.trial_id)
        logger = self.logger(trial.trial_id, trial.config)
        logger.client.set_tag(logger.run_id, "fsar.status", status)
        if (folder / "train_config.yaml").is_file():
            logger.log_artifact(folder / "train_config.yaml")
        atomic_write_text(folder / "status.json", json.dumps({"status": status, "error": error}))
        logger.end(mlflow_status)

    def record(self, trial_id: str, values: dict[str, Any]) -> TrialRecord:
        folder = self.folder(trial_id)
        status = json.loads((folder / "status.json").read_text())["status"] if (folder / "status.json").is_file() \
            else "incomplete"
        run_id = (folder / "mlflow_run_id").read_text().strip() if (folder / "mlflow_run_id").is_file() else None
        return record_from_metrics(trial_id, values, _read_jsonl(folder / "metrics.jsonl"), status=status,
                                   mlflow_run_id=run_id)


def _check_up_front(config: SweepConfig, space: SearchSpace, store: Path, out: Path,
                    settings: dict[str, Any]) -> tuple[int, int]:
    """Everything a sweep can get wrong without a cluster: sweep settings, and every probe of the space
    trained against the store (store, method and knobs, view, possible episodes). Returns (max_t, grace)."""
    from fsar.training import check_training_inputs

    if config.cpus_per_trial < 0 or config.gpus_per_trial < 0 or config.cpus_per_trial + config.gpus_per_trial <= 0:
        raise ConfigError(f"cpus_per_trial={config.cpus_per_trial}, gpus_per_trial={config.gpus_per_trial}: "
                          "a trial needs some CPU or GPU (both >= 0, not both 0)")
    if config.reduction_factor <= 1:
        raise ConfigError(f"reduction_factor must be > 1 (ASHA keeps the top 1/reduction_factor), got {config.reduction_factor}")
    if config.max_concurrent < 0 or config.max_failures < 0:
        raise ConfigError("max_concurrent and max_failures must be >= 0")
    configs = [_trial_config(space, values, store=store, out=out, trial_id="check", settings=settings)
               for values in [{}, *space.probe_values()]]
    for trial in configs:
        check_training_inputs(trial)
    max_t = max(c.steps for c in configs)
    grace = config.grace_period if config.grace_period is not None else min(c.val_every for c in configs)
    if not 0 < grace <= max_t:
        raise ConfigError(f"grace_period={grace} must be in [1, steps={max_t}]")
    return max_t, grace


def _check_same_sweep(out: Path, described: dict[str, Any]) -> None:
    """A rerun on a folder where a sweep started must be the same sweep: Tune cannot resume a changed space."""
    saved = out / "sweep.yaml"
    if saved.is_file() and (out / "tune").exists():
        before = yaml.safe_load(saved.read_text())
        if before != described:
            changed = sorted(k for k in set(before) | set(described) if before.get(k) != described.get(k))
            raise ConfigError(f"{out} holds a sweep started with another {' and '.join(changed)}; rerun with the "
                              "original space file, --trials and store to resume it, or pass a new --out")
    else:
        atomic_write_text(saved, yaml.safe_dump(described, sort_keys=False))


def _check_resources(config: SweepConfig, address: str | None) -> None:
    import ray

    total = ray.cluster_resources()
    for kind, need in (("CPU", config.cpus_per_trial), ("GPU", config.gpus_per_trial)):
        have = float(total.get(kind, 0.0))
        if need > have:
            message = (f"a trial needs {need:g} {kind} ({kind.lower()}s_per_trial) but the Ray cluster has "
                       f"{have:g}; lower {kind.lower()}s_per_trial")
            if address is None and not os.environ.get("RAY_ADDRESS"):
                raise ConfigError(message)
            print(f"warning: {message} (or let the autoscaler add nodes)", file=sys.stderr)


def _parent_run(config: SweepConfig, space: SearchSpace, out: Path, uri: str) -> RunLogger:
    run_id_file = out / "mlflow_run_id"
    if run_id_file.is_file():  # a resumed sweep continues its parent run
        return RunLogger(uri=uri, experiment=config.experiment, run_id=run_id_file.read_text().strip())
    params = {"space": {**space.to_dict(), "space": {k: d.describe() for k, d in space.space.items()}},
              "sweep": to_dict(config)}
    logger = RunLogger(uri=uri, experiment=config.experiment, run_name=f"sweep-{space.method}-{out.name}",
                       params=params, tags={"fsar.kind": "sweep", "fsar.method": space.method})
    atomic_write_text(run_id_file, logger.run_id)
    return logger


def run(config: SweepConfig, *, address: str | None = None, callbacks: Sequence[Any] = ()) -> SweepResult:
    """Check the space and store up front, then run (or resume) the sweep and write its results.

    ``callbacks`` are extra ``ray.tune.Callback`` objects for a new sweep (tests use one to interrupt
    it); a resumed sweep runs with the callbacks, scheduler and searcher Tune saved when it started.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipelines.ray_runtime import init_ray

    space = load_search_space(config.space, trials=config.trials, fixed=config.fixed)
    out = Path(config.out).resolve()
    store = Path(config.store).resolve()
    settings = _trial_settings(config, space)
    max_t, grace = _check_up_front(config, space, store, out, settings)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_sweep(out, {"store": str(store), "space": space.to_dict()})
    dump_yaml(config, out / "sweep_config.yaml")

    init_ray(address=address)
    _check_resources(config, address)
    # Every trial checkpoint forces a state snapshot (num_to_keep=1): what makes a resume exact. Tune
    # warns when that happens often, which short validation intervals always do.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    uri = tracking_uri(out, config.mlflow_uri)
    parent = _parent_run(config, space, out, uri)
    # What each trial's train_config.yaml records: how it ran and where it is logged.
    trial_settings = settings | {"mlflow_uri": uri, "experiment": config.experiment,
                                 "mlflow_parent_run_id": parent.run_id}
    tracker = SweepTracker(space=space, store=store, out=out, settings=trial_settings, uri=uri,
                           experiment=config.experiment, parent_run_id=parent.run_id)
    trainable = tune.with_resources(make_trainable(space, store=store, out=out, settings=trial_settings),
                                    {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    experiment = out / "tune"
    status = "FAILED"
    try:
        if tune.Tuner.can_restore(str(experiment)):
            print(f"resuming the sweep in {experiment}: finished trials are kept, unfinished ones continue")
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_tune_domains(space),
                tune_config=tune.TuneConfig(
                    metric=space.metric, mode="max", num_samples=space.trials,
                    scheduler=ResumableASHA(state_file=out / "asha.json", time_attr="step", max_t=max_t,
                                            grace_period=grace, reduction_factor=config.reduction_factor),
                    search_alg=BasicVariantGenerator(random_state=space.search_seed,
                                                     max_concurrent=config.max_concurrent),
                    trial_dirname_creator=_trial_dirname,
                    reuse_actors=True,  # a trial's process outlives it: the next skips torch/Ray start-up
                ),
                run_config=tune.RunConfig(
                    name=experiment.name, storage_path=str(out), verbose=config.verbose,
                    callbacks=[tracker, *callbacks],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=config.max_failures),
                ),
            )
        grid = tuner.fit()
        trials = sorted((Path(r.path).name, dict(r.config or {})) for r in grid)
        records = [tracker.record(trial_id, values) for trial_id, values in trials]
        complete = len(records) >= space.trials and all(r.status != "incomplete" for r in records)
        best_config = _write_results(records, space, out, store=store, settings=settings, complete=complete,
                                     parent=parent)
        status = "FINISHED" if complete else "KILLED"
    finally:
        parent.end(status)
    return SweepResult(out, ranked(records), best_trial(records), best_config, complete, parent.run_id)


def _write_results(records: list[TrialRecord], space: SearchSpace, out: Path, *, store: Path,
                   settings: dict[str, Any], complete: bool, parent: RunLogger) -> Path | None:
    """trials.csv, results.md, results.png; once every trial is done, best_config.yaml (the best trial's
    TrainConfig, on the trials' hardware, logged to its own default store); all logged to the parent run."""
    from fsar.sweep import plot_sweep

    files = [write_trials_csv(records, space, out / "trials.csv"), write_results_md(records, space, out / "results.md")]
    way = space.train_config({}, store=store, out=out).way
    files.append(plot_sweep(records, space, out / "results.png", chance=100.0 / way))
    best = best_trial(records)
    best_config = None
    if complete and best is not None:
        config = space.train_config(best.values, store=store, out=out / "best", **settings)
        best_config = out / "best_config.yaml"
        dump_yaml(config, best_config)
        files.append(best_config)
        parent.log_metrics({"best_val_accuracy": best.best_val_accuracy}, step=best.best_step)
        parent.client.set_tag(parent.run_id, "fsar.best_trial", best.trial_id)
    files.append(out / "sweep.yaml")
    for path in files:
        parent.log_artifact(path)
    return best_config


def main(argv: list[str] | None = None) -> int:
    from fsar.cli import main as cli_main

    return cli_main(["tune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
