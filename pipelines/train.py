"""Episodic training with Ray Train, on a feature store or end to end on a manifest's videos.

``python -m pipelines.train --config train.yaml [key=value ...]`` or ``fsar train``. ``workers`` Ray Train
workers each run ``fsar.training.loop.train_worker`` on their share of every step's episodes (disjoint
slices of one seeded sequence), gradients are all-reduced by DDP, and rank 0 validates every
``val_every`` steps on fixed validation-split episodes, keeps ``<out>/best.pt`` (best validation accuracy;
the checkpoint carries its config) and logs to MLflow. ``workers=0`` runs the same loop in this process.
End-to-end runs decode their episodes in Ray Data tasks each worker starts for its own episodes.

Failures: when a worker process (or its node) dies, Ray Train replaces the worker group (up to 3 times)
and every worker resumes from the latest reported checkpoint; metrics logged after that carry
``resumed_from_step``. Rerunning the same config on the same ``out`` resumes an interrupted run and is a
no-op for a finished one; a different config starts the folder afresh (a finished run is replaced only with
``--overwrite``).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsar import storage
from fsar.config import ConfigError, from_dict, resolve, to_dict
from fsar.data.sections import ManifestData, StoreData
from fsar.lease import Lease
from fsar.run_folder import RunFolder
from fsar.storage import Location, as_location
from fsar.tracking import RunLogger, tracking_uri
from fsar.training.checkpoint import best_payload, save_checkpoint
from fsar.training.config import TrainConfig
from fsar.training.loop import check_training_inputs, train_worker
from pipelines.command import Command, data_flags, flags, run_alone

__all__ = ["TrainConfig", "TrainResult", "run", "main"]

# Beside the config in the workers' loop config: the job whose per-node feature actors the workers read from.
SHARED_FEATURES_KEY = "_shared_features_job"
# ... and whether the run is a sweep's trial, which the sweep's driver-side tracker logs (pipelines.tune_trials).
SWEEP_TRIAL_KEY = "_sweep_trial"


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run left its outputs and how it did on validation."""

    run_dir: Location
    best_checkpoint: Location
    best_val_accuracy: float
    best_step: int
    steps: int
    mlflow_run_id: str | None


def check_decode_room(config: TrainConfig, resources: dict[str, float]) -> None:
    """A manifest run decodes its episodes in Ray Data tasks beside the training workers: when the workers
    take every CPU, no decode task can start and training waits forever, so refuse it up front."""
    if not isinstance(config.data, ManifestData) or config.data.decode == "threads":
        return
    cpus, taken = resources.get("CPU", 0.0), config.workers * config.threads_per_worker
    if cpus - taken < 1:
        raise ConfigError(
            f"{config.workers} training workers x {config.threads_per_worker} CPU take all {cpus:g} CPUs of the "
            "cluster, leaving none to decode videos: use fewer workers (workers=0 decodes in-process) or a "
            "larger cluster"
        )


def ddp_wrap(world: int) -> Callable[[Any], Any]:
    """The ``wrap`` of a Ray Train worker: DDP over a module already on its device (``train_worker`` moves
    it first), nothing for a single worker.

    Every method builds only parameters that get a gradient each step (checked for every registered method
    by the tests), so DDP runs without its unused-parameter search. Across GPUs, BatchNorm (DMGAL's, as
    released) becomes SyncBatchNorm, so its statistics are those of the global batch and the worker count
    does not change the experiment; gloo (CPU) has no SyncBatchNorm, so there it stays per worker.
    """

    def wrap(module: Any) -> Any:
        import ray.train.torch
        import torch

        if world <= 1:
            return module
        if next(module.parameters()).device.type == "cuda":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return ray.train.torch.prepare_model(module, move_to_device=False)

    return wrap


def _worker_entry(config_dict: dict[str, Any]) -> None:
    """Ray Train worker body: DDP set-up, resume, and the rank-0 side effects of each report."""
    import ray.train
    import ray.train.torch

    from pipelines.node_features import node_split_loader
    from pipelines.ray_checkpoints import report_with_checkpoint, resume_state

    config_dict = dict(config_dict)
    shared_job = config_dict.pop(SHARED_FEATURES_KEY, None)
    sweep_trial = bool(config_dict.pop(SWEEP_TRIAL_KEY, False))
    config = from_dict(TrainConfig, config_dict)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    run = RunFolder.at(config.out)
    device = ray.train.torch.get_device()  # this worker's GPU with use_gpu, else the CPU
    state, start_step = resume_state(ray.train.get_checkpoint())
    if state is None and storage.is_file(run.latest_checkpoint):
        # Ray keeps no checkpoint across a killed driver (nor in-process): the run folder's latest state does.
        from fsar.training.checkpoint import read_checkpoint

        state = read_checkpoint(run.latest_checkpoint)
        start_step = int(state["step"])
    logger = _mlflow_run(config, run) if rank == 0 and not sweep_trial else None

    def report(metrics: dict[str, float], payload: dict[str, Any] | None) -> None:
        if start_step:  # a restarted worker group (lost worker or resubmitted job): say where it resumed
            metrics = {**metrics, "resumed_from_step": start_step}
        if payload is not None:  # the state first: a kill after the metrics line can resume from that step
            save_checkpoint(payload, run.latest_checkpoint)
            if metrics.get("is_best"):
                save_checkpoint(best_payload(payload), run.best_checkpoint)
        if logger is not None:
            logger.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))
            run.append_metrics(metrics)
        if payload is None:
            ray.train.report(metrics)
            return
        report_with_checkpoint(ray.train.report, ray.train.Checkpoint, metrics, payload)

    status = "FAILED"
    try:
        train_worker(config, rank=rank, world_size=world, report=report, wrap=ddp_wrap(world), device=device,
                     start_step=start_step, state=state, split_loader=node_split_loader(shared_job))
        status = "FINISHED"
    finally:
        if logger is not None:
            logger.log_artifact(run.config_file)
            if status == "FINISHED" and run.has_best():  # the run names its checkpoint
                logger.client.set_tag(logger.run_id, "fsar.best_checkpoint", str(storage.absolute(run.best_checkpoint)))
                if config.log_checkpoint:
                    logger.log_artifact(run.best_checkpoint)
            logger.end(status)


def _mlflow_run(config: TrainConfig, run: RunFolder) -> RunLogger:
    uri = tracking_uri(run.root, config.mlflow_uri)
    run_id = run.mlflow_run_id()
    if run_id is not None:  # a restarted worker group continues the same MLflow run
        return RunLogger(uri=uri, experiment=config.experiment, run_id=run_id)
    logger = RunLogger(uri=uri, experiment=config.experiment, run_name=f"{config.method}-{run.name}",
                       params=to_dict(config), tags={"fsar.method": config.method, "fsar.kind": "train"}
                       | ({"fsar.recipe": config.recipe} if config.recipe else {}),
                       parent_run_id=config.mlflow_parent_run_id)
    run.write_mlflow_run_id(logger.run_id)
    return logger


def _follow_metrics(run: RunFolder, config: TrainConfig, stop: threading.Event) -> None:
    """Driver-side progress bar: follows the metrics rank 0 appends at each validation (workers may run
    on other machines; the run folder is the one thing driver and rank 0 share)."""
    from tqdm.auto import tqdm

    seen = 0
    with tqdm(total=config.steps, desc=f"train {config.method}", unit="step") as bar:
        while True:
            finished = stop.wait(1.0 if isinstance(run.root, Path) else 5.0)  # an object store is asked less often
            lines = run.metrics_lines()
            for line in lines[seen:]:
                m = json.loads(line)
                bar.update(int(m["step"]) - bar.n)
                bar.set_postfix(loss=f"{m['train_loss']:.3f}", val=f"{m['val_accuracy']:.1f}%",
                                best=f"{m['best_val_accuracy']:.1f}%")
            seen = len(lines)
            if finished:
                return


def ray_trainer(config: TrainConfig, run_folder: RunFolder, *, shared_job: str | None = None,
                sweep_trial: bool = False, callbacks: Sequence[Any] = (),
                cpus_per_worker: float | None = None) -> Any:
    """The ``TorchTrainer`` of a run: ``config.workers`` workers of ``cpus_per_worker`` CPUs (default
    ``threads_per_worker``; a GPU each with ``use_gpu``) running ``_worker_entry`` on ``config``, its state in the
    run folder (so the same run resumes from its latest checkpoint). ``shared_job``: the job whose per-node
    feature actors the workers read from; ``sweep_trial``: the run is a sweep's trial (its tracker logs it);
    ``callbacks``: Ray Train callbacks (a sweep's ``TuneReportCallback``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    loop_config = to_dict(config) | {SWEEP_TRIAL_KEY: sweep_trial}
    if shared_job is not None:
        loop_config[SHARED_FEATURES_KEY] = shared_job
    return TorchTrainer(
        _worker_entry,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker if cpus_per_worker is not None
                                                           else config.threads_per_worker}),
        run_config=RunConfig(
            name=run_folder.ray_train_name, storage_path=str(run_folder.root),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_accuracy",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=3),
            callbacks=list(callbacks) or None,
        ),
    )


def run(config: TrainConfig, *, address: str | None = None, overwrite: bool = False) -> TrainResult:
    """Check inputs up front, then train with Ray Train (or in-process when ``workers == 0``). A folder holding a
    finished run of another config is replaced only with ``overwrite``."""

    check_training_inputs(config)

    out = storage.absolute(config.out)
    tracking_uri(out, config.mlflow_uri)  # a run folder on object storage needs a tracking URI: say so now
    data = (dataclasses.replace(config.data, store=storage.absolute(config.data.store)) if isinstance(config.data, StoreData)
            else dataclasses.replace(config.data, manifest=storage.absolute(config.data.manifest)))
    config = dataclasses.replace(config, out=out, data=data)
    with Lease(out, job=f"fsar train {config.method}"):  # one writer at a time: a second job is refused
        return _train_held(config, address=address, overwrite=overwrite)


def _train_held(config: TrainConfig, *, address: str | None, overwrite: bool) -> TrainResult:
    """``run``'s work once it holds the run folder's lease."""
    from pipelines.ray_runtime import init_ray

    out = config.out
    run_folder = RunFolder(out)
    same_run = run_folder.holds_config(config)
    if same_run and run_folder.is_finished():
        return _result(run_folder, config)  # this exact run already finished: a rerun is a no-op
    if not same_run:
        if run_folder.is_finished() and not overwrite:
            raise ConfigError(f"{out} holds a finished run of another config: give another --out, or --overwrite to "
                              "replace it (a rerun of the same config is a no-op)")
        run_folder.start_afresh()  # a new run in this folder; the same config, unfinished, resumes
    run_folder.write_config(config)
    if config.workers > 0:
        ray = init_ray(address=address)
        check_decode_room(config, ray.cluster_resources())
    # One copy of each split per node, shared by its workers (pipelines.node_features).
    shared_job = uuid.uuid4().hex[:12] if config.workers > 0 and isinstance(config.data, StoreData) else None
    trainer = ray_trainer(config, run_folder, shared_job=shared_job)
    stop = threading.Event()
    follower = threading.Thread(target=_follow_metrics, args=(run_folder, config, stop), daemon=True)
    follower.start()
    try:
        if shared_job is not None:
            from pipelines.node_features import NodeFeatureActors

            with NodeFeatureActors(shared_job) as actors:
                trainer.fit()
                actors.write_stats(run_folder.feature_loads_file)
        else:
            trainer.fit()
    finally:
        stop.set()
        follower.join()
    result = _result(run_folder, config)
    run_folder.mark_finished({"best_val_accuracy": result.best_val_accuracy, "best_step": result.best_step,
                              "steps": result.steps})
    return result


def _result(run: RunFolder, config: TrainConfig) -> TrainResult:
    """The finished run's summary, read back from its folder."""
    from fsar.training.checkpoint import read_checkpoint

    best = read_checkpoint(run.best_checkpoint)
    return TrainResult(run.root, run.best_checkpoint, float(best["val_accuracy"]), int(best["step"]), config.steps,
                       run.mlflow_run_id())


def _arguments(p: Any) -> None:
    p.add_argument("--store", type=as_location, help="feature store: cached-feature methods (data.store)")
    p.add_argument("--manifest", type=as_location, help="end-to-end (pixels) methods: train on these videos (data.manifest)")
    p.add_argument("--recipe", help="start from a shipped recipe, FAMILY[-fast]/BENCHMARK/Kshot (`fsar recipes`)")
    p.add_argument("--method")
    p.add_argument("--out", type=as_location)
    p.add_argument("--way", type=int)
    p.add_argument("--shot", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--mlflow-uri", dest="mlflow_uri")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run of another config in --out")


def _run(args: Any) -> int:
    recipe = base = None
    if args.recipe:
        from fsar.recipes import get_recipe

        recipe = get_recipe(args.recipe)
        base = recipe.train_mapping()
    config = resolve(TrainConfig, file=args.config, overrides=args.overrides, base=base,
                     flags=flags(args, "method", "out", "way", "shot", "steps", "workers", "lr", "mlflow_uri")
                     | data_flags(args, "store", "manifest"))
    if recipe is not None:
        recipe.check_weights(to_dict(config))
    result = run(config, address=args.address, overwrite=args.overwrite)
    print(f"run {result.run_dir}: best validation accuracy {result.best_val_accuracy:.2f}% at step "
          f"{result.best_step}/{result.steps}; checkpoint {result.best_checkpoint}; MLflow run {result.mlflow_run_id}")
    return 0


COMMAND = Command("train", "episodic training on a feature store, or end to end on a manifest (Ray Train; "
                  "workers=0 in-process)", _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
