"""The Ray Tune side of a sweep: the trainables (one in-process training run per trial, or a trial that drives an
N-worker Ray Train run), ASHA with rungs that survive a resume, and the driver-side tracker of every trial's
folder and MLflow child run.

Imported by ``pipelines.tune.run`` when a sweep starts (it imports Ray Tune; the sweep's configuration and
command line do not).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler

from fsar import storage
from fsar.config import to_dict
from fsar.run_folder import RunFolder
from fsar.search_space import SearchSpace
from fsar.storage import Location
from fsar.sweep import TrialRecord, record_from_metrics
from fsar.tracking import RunLogger

# What train_worker reports at each validation; the rest of a Tune result is Tune's own bookkeeping.
REPORTED = ("step", "train_loss", "train_accuracy", "lr", "episodes_per_s", "val_accuracy", "val_ci95",
            "best_val_accuracy", "is_best")


def trial_dirname(trial: Any) -> str:
    """Trial folders named by id alone (Tune's default repeats the whole config in the name)."""
    return trial.trial_id


def trial_config(space: SearchSpace, values: dict[str, Any], *, source: Location, out: Location, trial_id: str,
                 settings: dict[str, Any]) -> Any:
    return space.train_config(values, source=source, out=storage.join(out, "trials", trial_id), **settings)


def make_trainable(space: SearchSpace, *, source: Location, out: Location, settings: dict[str, Any],
                   shared_job: str | None = None) -> Callable[[dict], None]:
    """The Tune function trainable: one in-process training run per trial, every validation reported to
    Tune with a checkpoint (latest weights and optimiser state) so a stopped sweep resumes mid-trial.
    ``shared_job``: the sweep's per-node feature actors (``pipelines.node_features``): every trial on a node
    reads the same copy of each split."""

    def fsar_trial(values: dict[str, Any]) -> None:
        import torch
        from ray import tune

        from fsar.training.loop import train_worker
        from pipelines.ray_checkpoints import report_with_checkpoint, resume_state

        trial_id = tune.get_context().get_trial_id()
        config = trial_config(space, values, source=source, out=out, trial_id=trial_id, settings=settings)
        state, start_step = resume_state(tune.get_checkpoint())
        if state is not None and start_step >= config.steps:
            # Finished after the sweep state was last saved (a hard kill): report, do not retrain.
            tune.report(dict(state["metrics"]))
            return

        def report(metrics: dict[str, float], payload: dict[str, Any] | None) -> None:
            if payload is None:  # only rank 0 validates; a trial is always rank 0
                tune.report(metrics)
                return
            report_with_checkpoint(tune.report, tune.Checkpoint, metrics, payload | {"metrics": metrics})

        # Ray makes only the trial's own GPUs visible to it; without gpus_per_trial the trial stays on the CPU
        # even where the node has a GPU (another trial may hold it).
        device = torch.device("cuda") if config.use_gpu else torch.device("cpu")
        from pipelines.node_features import node_split_loader

        train_worker(config, report=report, device=device, start_step=start_step, state=state,
                     split_loader=node_split_loader(shared_job))

    return fsar_trial


def make_distributed_trainable(space: SearchSpace, *, source: Location, out: Location, settings: dict[str, Any],
                               cpus_per_worker: float, shared_job: str | None = None) -> Callable[[dict], None]:
    """The Tune function trainable of N-worker trials: the trial drives a ``TorchTrainer`` (``settings['workers']``
    workers, placed by Ray Train) whose rank-0 reports reach Tune through ``TuneReportCallback``, so ASHA stops it
    like any trial. Its Ray Train state lives in the trial folder: a retried or resumed trial continues from
    its latest checkpoint. The workers leave the trial's metrics and MLflow run to the ``SweepTracker``."""

    def fsar_distributed_trial(values: dict[str, Any]) -> None:
        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from pipelines.train import ray_trainer

        trial_id = tune.get_context().get_trial_id()
        config = trial_config(space, values, source=source, out=out, trial_id=trial_id, settings=settings)
        ray_trainer(config, RunFolder(config.out), shared_job=shared_job, sweep_trial=True,
                    callbacks=[TuneReportCallback()], cpus_per_worker=cpus_per_worker).fit()

    return fsar_distributed_trial


def tune_domains(space: SearchSpace) -> dict[str, Any]:
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


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA whose rung records survive a resumed sweep. Tune saves its searcher's state but not its
    scheduler's, so a restored sweep would judge the remaining trials only against each other; here the
    rungs (milestone → trial id → reward) go to ``state_file`` at every decision and are read back on
    first use after a restore."""

    def __init__(self, *, state_file: Location, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_file = storage.absolute(state_file)
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if storage.is_file(self.state_file):
            saved = json.loads(storage.read_text(self.state_file))
            for bracket, rungs in zip(self._brackets, saved, strict=False):
                for (milestone, recorded), (saved_milestone, values) in zip(bracket._rungs, rungs, strict=False):
                    if milestone == saved_milestone:
                        recorded.update(values)

    def _save(self) -> None:
        storage.write_text(self.state_file,
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

    def __init__(self, *, space: SearchSpace, source: Location, out: Location, settings: dict[str, Any], uri: str,
                 experiment: str, parent_run_id: str) -> None:
        self.space, self.source, self.out, self.settings = space, source, out, settings
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self._loggers: dict[str, RunLogger] = {}
        self._last_step: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_loggers": {}, "_last_step": {}}

    def folder(self, trial_id: str) -> RunFolder:
        return RunFolder(storage.join(self.out, "trials", trial_id))

    def config(self, trial_id: str, values: dict[str, Any]) -> Any:
        return trial_config(self.space, values, source=self.source, out=self.out, trial_id=trial_id,
                            settings=self.settings)

    def logger(self, trial_id: str, values: dict[str, Any]) -> RunLogger:
        """The trial's child run: created at its first start, reattached when it resumes."""
        if trial_id in self._loggers:
            return self._loggers[trial_id]
        folder = self.folder(trial_id)
        run_id = folder.mlflow_run_id()
        if run_id is not None:
            logger = RunLogger(uri=self.uri, experiment=self.experiment, run_id=run_id)
        else:
            config = self.config(trial_id, values)
            folder.write_config(config)
            logger = RunLogger(uri=self.uri, experiment=self.experiment, run_name=f"{self.space.method}-{trial_id}",
                               params=to_dict(config), parent_run_id=self.parent_run_id,
                               tags={"fsar.kind": "trial", "fsar.method": self.space.method, "fsar.trial_id": trial_id})
            folder.write_mlflow_run_id(logger.run_id)
        self._loggers[trial_id] = logger
        return logger

    # ---------------------------------------------------------------- Ray Tune callback hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.logger(trial.trial_id, trial.config)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        metrics = {k: result[k] for k in REPORTED if k in result}
        logger = self.logger(trial.trial_id, trial.config)
        folder = self.folder(trial.trial_id)
        if trial.trial_id not in self._last_step:
            logged = folder.metrics()
            self._last_step[trial.trial_id] = int(logged[-1]["step"]) if logged else 0
        if int(metrics["step"]) <= self._last_step[trial.trial_id]:
            # A replay: after a hard kill a trial resumes from the last checkpoint the sweep state
            # recorded, which may precede results already logged here (training is seeded: same values).
            return
        self._last_step[trial.trial_id] = int(metrics["step"])
        folder.append_metrics(metrics)
        logger.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        steps = self.config(trial.trial_id, trial.config).steps
        last = int((trial.last_result or {}).get("step", 0))
        self._finish(trial, "finished" if last >= steps else "stopped", "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.folder(trial.trial_id).status() in ("finished", "stopped"):
            # A trial that ended before its driver was killed, which the restored experiment state still holds
            # running: its results are complete, and a failed restore must not turn them into an error.
            return
        self._finish(trial, "error", "FAILED", error=str(trial.error_file or ""))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """An interrupted sweep leaves running trials unfinished: their child runs say so until resumed."""
        for trial_id, logger in self._loggers.items():
            if self.folder(trial_id).status() is None:
                logger.end("KILLED")

    def _finish(self, trial: Any, status: str, mlflow_status: str, error: str = "") -> None:
        folder = self.folder(trial.trial_id)
        logger = self.logger(trial.trial_id, trial.config)
        logger.client.set_tag(logger.run_id, "fsar.status", status)
        if storage.is_file(folder.config_file):
            logger.log_artifact(folder.config_file)
        folder.write_status(status, error)
        logger.end(mlflow_status)

    def record(self, trial_id: str, values: dict[str, Any]) -> TrialRecord:
        folder = self.folder(trial_id)
        return record_from_metrics(trial_id, values, folder.metrics(), status=folder.status() or "incomplete",
                                   mlflow_run_id=folder.mlflow_run_id())
