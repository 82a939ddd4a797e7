"""Hyperparameter sweeps with Ray Tune over the episodic training function.

``python -m pipelines.tune --store STORE --space FILE.yaml --out DIR [key=value ...]`` or ``fsar tune``;
``--manifest MANIFEST`` instead of ``--store`` sweeps end-to-end runs (the backbone stage trained with the
method on decoded videos; the space may name ``stage.tune``, ``stage.lr_scale``, ...).
Each trial is one training run drawn from the search space (``fsar.search_space``), validated on the **val**
split; ASHA stops trials whose validation accuracy falls behind at its rungs. With ``workers_per_trial`` 0
(the default) a trial trains in its own process (``fsar.training.loop.train_worker``; ``pipelines.tune_trials``)
and as many trials run at once as the cluster's CPUs/GPUs hold at ``cpus_per_trial``/``gpus_per_trial`` each.
With ``workers_per_trial`` N, a trial is the driver of an N-worker Ray Train run (Ray's current pattern: the
trial starts a ``TorchTrainer`` whose reports reach Tune through ``TuneReportCallback``), each worker taking
``cpus_per_trial``/``gpus_per_trial``; the trial itself reserves only a sliver of a CPU, since Train places its
workers itself, so the sweep caps the trials at once to what the cluster holds of N workers each.
``max_concurrent`` caps it further.

Outputs in ``out``: ``trials/<trial_id>/`` (resolved ``train_config.yaml``, ``metrics.jsonl``,
``status.json``), ``trials.csv``, ``results.md``, ``results.png``, ``best_config.yaml`` (the best trial's
TrainConfig, ready for ``fsar train --config``), ``tune/`` (Ray Tune's state and checkpoints) and, by
default, the MLflow store ``mlflow.db``: one parent run per sweep, one child run per trial.

Rerunning the same command on the same ``out`` resumes an interrupted sweep: finished and early-stopped
trials are kept as they are, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fsar import storage
from fsar.config import ConfigError, dump_yaml, resolve, to_dict
from fsar.search_space import SearchSpace, load_search_space
from fsar.storage import Location, as_location
from fsar.sweep import TrialRecord, best_trial, ranked, write_results_md, write_trials_csv
from fsar.tracking import RunLogger, tracking_uri
from pipelines.command import Command, flags, run_alone

__all__ = ["SweepConfig", "SweepResult", "run", "main"]

@dataclass
class SweepConfig:
    """``fsar tune``: a search space swept with Ray Tune, over a feature store or end to end over a manifest."""

    space: Path  # search space file: method, metric, trials, fixed settings, distributions (fsar.search_space)
    out: Location  # sweep folder or URI (Tune's storage_path too): trials/, trials.csv, results.md/.png, best_config.yaml, tune/, mlflow.db
    store: Location | None = None  # feature store folder or URI (from `fsar embed`): cached-feature trials
    manifest: Location | None = None  # or a manifest: end-to-end trials on the backbone stage (data.stage)
    trials: int | None = None  # trials to sample (default: the space file's `trials`)
    fixed: dict[str, Any] = field(default_factory=dict)  # added to / replacing the space file's fixed settings (e.g. steps for a smoke test)
    cpus_per_trial: float = 1.0  # CPUs reserved per trial; with the cluster's CPUs this bounds concurrency
    gpus_per_trial: float = 0.0  # GPUs reserved per trial (fractions share one); > 0 trains on the GPU
    workers_per_trial: int = 0  # 0: a trial trains in its own process; N: each trial is an N-worker Ray Train run (cpus/gpus_per_trial per worker)
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

    out: Location  # the sweep folder
    records: list[TrialRecord]  # one per trial, best first
    best: TrialRecord | None  # the best trial (None before any trial validated)
    best_config: Location | None  # best_config.yaml, once every trial is done
    complete: bool  # False when the sweep was interrupted: rerun the same command to resume
    mlflow_run_id: str  # the sweep's parent MLflow run


def _source(config: SweepConfig) -> tuple[str, Location]:
    """What the trials read: ("store", the store) or ("manifest", the manifest); exactly one must be given."""
    if (config.store is None) == (config.manifest is None):
        raise ConfigError("give a sweep exactly one of --store (cached-feature trials) and --manifest "
                          "(end-to-end trials on the backbone stage)")
    if config.workers_per_trial < 0:
        raise ConfigError(f"workers_per_trial must be >= 0 (0: in the trial's process), got {config.workers_per_trial}")
    if config.workers_per_trial and config.gpus_per_trial not in (0, 1):
        raise ConfigError(f"gpus_per_trial={config.gpus_per_trial:g} with workers_per_trial: each Ray Train worker "
                          "takes a whole GPU (1) or none (0)")
    return ("store", config.store) if config.store is not None else ("manifest", config.manifest)  # type: ignore[return-value]


def _trial_settings(config: SweepConfig, space: SearchSpace) -> dict[str, Any]:
    """The TrainConfig fields a sweep sets for every trial (not drawn, not in the space file)."""
    settings: dict[str, Any] = {"workers": config.workers_per_trial, "use_gpu": config.gpus_per_trial > 0}
    if "threads_per_worker" not in space.fixed and "threads_per_worker" not in space.space:
        settings["threads_per_worker"] = max(1, int(config.cpus_per_trial))  # torch uses the CPUs reserved
    if space.data == "manifest" and config.workers_per_trial and "decode" not in {*space.fixed, *space.space}:
        # Ray Data decode tasks would need CPUs beyond the trials' reservations: workers decode their own episodes.
        settings["decode"] = "threads"
    return settings


def _check_up_front(config: SweepConfig, space: SearchSpace, source: Location, out: Location,
                    settings: dict[str, Any]) -> tuple[int, int]:
    """Everything a sweep can get wrong without a cluster: sweep settings, and every probe of the space
    trained against the store (store, method and knobs, view, possible episodes). Returns (max_t, grace)."""
    from fsar.training.loop import check_training_inputs
    from pipelines.tune_trials import trial_config

    if config.cpus_per_trial < 0 or config.gpus_per_trial < 0 or config.cpus_per_trial + config.gpus_per_trial <= 0:
        raise ConfigError(f"cpus_per_trial={config.cpus_per_trial}, gpus_per_trial={config.gpus_per_trial}: "
                          "a trial needs some CPU or GPU (both >= 0, not both 0)")
    if config.reduction_factor <= 1:
        raise ConfigError(f"reduction_factor must be > 1 (ASHA keeps the top 1/reduction_factor), got {config.reduction_factor}")
    if config.max_concurrent < 0 or config.max_failures < 0:
        raise ConfigError("max_concurrent and max_failures must be >= 0")
    configs = [trial_config(space, values, source=source, out=out, trial_id="check", settings=settings)
               for values in [{}, *space.probe_values()]]
    for trial in configs:
        check_training_inputs(trial)
    max_t = max(c.steps for c in configs)
    grace = config.grace_period if config.grace_period is not None else min(c.val_every for c in configs)
    if not 0 < grace <= max_t:
        raise ConfigError(f"grace_period={grace} must be in [1, steps={max_t}]")
    return max_t, grace


def _check_same_sweep(out: Location, described: dict[str, Any]) -> None:
    """A rerun on a folder where a sweep started must be the same sweep: Tune cannot resume a changed space."""
    saved = storage.join(out, "sweep.yaml")
    if storage.is_file(saved) and storage.is_dir(storage.join(out, "tune")):
        before = yaml.safe_load(storage.read_text(saved))
        if before != described:
            changed = sorted(k for k in set(before) | set(described) if before.get(k) != described.get(k))
            raise ConfigError(f"{out} holds a sweep started with another {' and '.join(changed)}; rerun with the "
                              "original space file, --trials and store to resume it, or pass a new --out")
    else:
        storage.write_text(saved, yaml.safe_dump(described, sort_keys=False))


# What the driver of an N-worker trial reserves: it only waits on its Ray Train run, whose workers Train places.
DRIVER_CPU = 0.1


def _check_resources(config: SweepConfig, address: str | None) -> int:
    """Refuse (locally) or warn (on a cluster) when one trial cannot fit; returns how many N-worker trials the
    cluster holds at once, Tune's concurrency cap for them (0 for in-process trials: Tune counts those itself)."""
    import ray

    total = ray.cluster_resources()
    workers = config.workers_per_trial
    held: list[int] = []
    for kind, per in (("CPU", config.cpus_per_trial), ("GPU", config.gpus_per_trial)):
        have = float(total.get(kind, 0.0))
        need = max(1, workers) * per + (DRIVER_CPU if kind == "CPU" and workers else 0.0)
        if need > have:
            what = f"{workers} workers x {per:g} {kind}" if workers else f"{need:g} {kind}"
            message = (f"a trial needs {what} ({kind.lower()}s_per_trial) but the Ray cluster has {have:g}; "
                       f"lower {kind.lower()}s_per_trial")
            if address is None and not os.environ.get("RAY_ADDRESS"):
                raise ConfigError(message)
            print(f"warning: {message} (or let the autoscaler add nodes)", file=sys.stderr)
        if need > 0:
            held.append(int(have // need))
    return max(1, min(held)) if workers and held else 0


def _parent_run(config: SweepConfig, space: SearchSpace, out: Location, uri: str) -> RunLogger:
    run_id_file = storage.join(out, "mlflow_run_id")
    if storage.is_file(run_id_file):  # a resumed sweep continues its parent run
        return RunLogger(uri=uri, experiment=config.experiment, run_id=storage.read_text(run_id_file).strip())
    params = {"space": {**space.to_dict(), "space": {k: d.describe() for k, d in space.space.items()}},
              "sweep": to_dict(config)}
    logger = RunLogger(uri=uri, experiment=config.experiment, run_name=f"sweep-{space.method}-{storage.name(out)}",
                       params=params, tags={"fsar.kind": "sweep", "fsar.method": space.method})
    storage.write_text(run_id_file, logger.run_id)
    return logger


def run(config: SweepConfig, *, address: str | None = None, callbacks: Sequence[Any] = ()) -> SweepResult:
    """Check the space and store up front, then run (or resume) the sweep and write its results.

    ``callbacks`` are extra ``ray.tune.Callback`` objects for a new sweep (tests use one to interrupt
    it); a resumed sweep runs with the callbacks, scheduler and searcher Tune saved when it started.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipelines.ray_runtime import init_ray
    from pipelines.tune_trials import (
        ResumableASHA,
        SweepTracker,
        make_distributed_trainable,
        make_trainable,
        trial_dirname,
        tune_domains,
    )

    kind, where = _source(config)
    space = load_search_space(config.space, trials=config.trials, fixed=config.fixed, data=kind)
    out = storage.absolute(config.out)
    source = storage.absolute(where)
    settings = _trial_settings(config, space)
    max_t, grace = _check_up_front(config, space, source, out, settings)
    uri = tracking_uri(out, config.mlflow_uri)  # a sweep folder on object storage needs one: say so now
    storage.make_dirs(out)
    _check_same_sweep(out, {kind: str(source), "space": space.to_dict()})
    dump_yaml(config, storage.join(out, "sweep_config.yaml"))

    init_ray(address=address)
    held = _check_resources(config, address)
    max_concurrent = min(c for c in (config.max_concurrent, held) if c) if config.max_concurrent or held else 0
    # Every trial checkpoint forces a state snapshot (num_to_keep): what makes a resume exact. Tune warns when
    # that happens often, which short validation intervals always do.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    parent = _parent_run(config, space, out, uri)
    # What each trial's train_config.yaml records: how it ran and where it is logged.
    trial_settings = settings | {"mlflow_uri": uri, "experiment": config.experiment,
                                 "mlflow_parent_run_id": parent.run_id}
    tracker = SweepTracker(space=space, source=source, out=out, settings=trial_settings, uri=uri,
                           experiment=config.experiment, parent_run_id=parent.run_id)
    shared_job = uuid.uuid4().hex[:12]  # this sweep's per-node feature actors (pipelines.node_features)
    if config.workers_per_trial:
        trainable = tune.with_resources(
            make_distributed_trainable(space, source=source, out=out, settings=trial_settings,
                                       cpus_per_worker=config.cpus_per_trial,
                                       shared_job=shared_job if kind == "store" else None),
            {"cpu": DRIVER_CPU})
    else:
        trainable = tune.with_resources(make_trainable(space, source=source, out=out, settings=trial_settings,
                                                       shared_job=shared_job),
                                        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    experiment = storage.join(out, "tune")
    status = "FAILED"
    try:
        if tune.Tuner.can_restore(str(experiment)):
            print(f"resuming the sweep in {experiment}: finished trials are kept, unfinished ones continue")
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=tune_domains(space),
                tune_config=tune.TuneConfig(
                    metric=space.metric, mode="max", num_samples=space.trials,
                    scheduler=ResumableASHA(state_file=storage.join(out, "asha.json"), time_attr="step", max_t=max_t,
                                            grace_period=grace, reduction_factor=config.reduction_factor),
                    search_alg=BasicVariantGenerator(random_state=space.search_seed,
                                                     max_concurrent=max_concurrent),
                    trial_dirname_creator=trial_dirname,
                    reuse_actors=True,  # a trial's process outlives it: the next skips torch/Ray start-up
                ),
                run_config=tune.RunConfig(
                    name=storage.name(experiment), storage_path=str(out), verbose=config.verbose,
                    callbacks=[tracker, *callbacks],
                    # Two, not one: the experiment state a killed driver left may be one snapshot behind its
                    # trials (measured on object storage), and must still find the checkpoint it names.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    failure_config=tune.FailureConfig(max_failures=config.max_failures),
                ),
            )
        from pipelines.node_features import NodeFeatureActors

        with NodeFeatureActors(shared_job) as actors:  # one copy of each split per node, for every trial
            grid = tuner.fit()
            actors.write_stats(storage.join(out, "feature_loads.json"))
        trials = sorted((storage.name(r.path), dict(r.config or {})) for r in grid)
        records = [tracker.record(trial_id, values) for trial_id, values in trials]
        complete = len(records) >= space.trials and all(r.status != "incomplete" for r in records)
        best_config = _write_results(records, space, out, source=source, settings=settings, complete=complete,
                                     parent=parent)
        status = "FINISHED" if complete else "KILLED"
    finally:
        parent.end(status)
    return SweepResult(out, ranked(records), best_trial(records), best_config, complete, parent.run_id)


def _write_results(records: list[TrialRecord], space: SearchSpace, out: Location, *, source: Location,
                   settings: dict[str, Any], complete: bool, parent: RunLogger) -> Location | None:
    """trials.csv, results.md, results.png; once every trial is done, best_config.yaml (the best trial's
    TrainConfig, on the trials' hardware, logged to its own default store); all logged to the parent run."""
    from fsar.sweep import plot_sweep

    files = [write_trials_csv(records, space, storage.join(out, "trials.csv")),
             write_results_md(records, space, storage.join(out, "results.md"))]
    way = space.train_config({}, source=source, out=out).way
    files.append(plot_sweep(records, space, storage.join(out, "results.png"), chance=100.0 / way))
    best = best_trial(records)
    best_config = None
    if complete and best is not None:
        config = space.train_config(best.values, source=source, out=storage.join(out, "best"), **settings)
        best_config = storage.join(out, "best_config.yaml")
        dump_yaml(config, best_config)
        files.append(best_config)
        parent.log_metrics({"best_val_accuracy": best.best_val_accuracy}, step=best.best_step)
        parent.client.set_tag(parent.run_id, "fsar.best_trial", best.trial_id)
    files.append(storage.join(out, "sweep.yaml"))
    for path in files:
        parent.log_artifact(path)
    return best_config


def _arguments(p: Any) -> None:
    p.add_argument("--store", type=as_location, help="feature store: cached-feature trials")
    p.add_argument("--manifest", type=as_location, help="or a manifest: end-to-end trials on the backbone stage")
    p.add_argument("--workers-per-trial", dest="workers_per_trial", type=int,
                   help="0: each trial in its own process; N: each trial an N-worker Ray Train run")
    p.add_argument("--space", type=Path, help="search space YAML: method, metric, trials, fixed, space")
    p.add_argument("--out", type=as_location, help="sweep folder; rerunning on it resumes an interrupted sweep")
    p.add_argument("--trials", type=int, help="trials to sample (default: the space file's)")
    p.add_argument("--cpus-per-trial", dest="cpus_per_trial", type=float)
    p.add_argument("--gpus-per-trial", dest="gpus_per_trial", type=float)
    p.add_argument("--mlflow-uri", dest="mlflow_uri")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")


def _run(args: Any) -> int:
    config = resolve(SweepConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "store", "manifest", "space", "out", "trials", "cpus_per_trial",
                                 "gpus_per_trial", "workers_per_trial", "mlflow_uri"))
    result = run(config, address=args.address)
    print(storage.read_text(storage.join(result.out, "results.md")))
    if not result.complete:
        print(f"sweep {result.out}: interrupted; rerun the same command to resume (finished trials are kept)")
        return 1
    print(f"sweep {result.out}: best config {result.best_config} (`fsar train --config {result.best_config}`); "
          f"table {storage.join(result.out, 'trials.csv')}, plot {storage.join(result.out, 'results.png')}; "
          f"MLflow parent run {result.mlflow_run_id}")
    return 0


COMMAND = Command("tune", "hyperparameter sweep (Ray Tune): trials of `fsar train`, ASHA on validation accuracy",
                  _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
