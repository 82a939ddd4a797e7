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
no-op for a finished one; a different config starts the folder afresh.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsar import storage
from fsar.config import ConfigError, dump_yaml, from_dict, resolve, to_dict
from fsar.storage import Location, as_location
from fsar.tracking import RunLogger, tracking_uri
from fsar.training.checkpoint import save_checkpoint
from fsar.training.config import ManifestData, StoreData, TrainConfig
from fsar.training.loop import check_training_inputs, train_worker
from pipelines.command import Command, data_flags, flags, run_alone

__all__ = ["TrainConfig", "TrainResult", "run", "main"]

# Beside the config in the workers' loop config: the job whose per-node feature actors the workers read from.
SHARED_FEATURES_KEY = "_shared_features_job"


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
    import torch
    from ray.train import Checkpoint

    config_dict = dict(config_dict)
    shared_job = config_dict.pop(SHARED_FEATURES_KEY, None)
    config = from_dict(TrainConfig, config_dict)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    out = storage.as_location(config.out)

    import ray.train.torch

    device = ray.train.torch.get_device()  # this worker's GPU with use_gpu, else the CPU
    wrap = ddp_wrap(world)

    state, start_step = None, 0
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as folder:
            state = torch.load(Path(folder) / "checkpoint.pt", map_location="cpu", weights_only=True)
        start_step = int(state["step"])

    logger = _mlflow_run(config) if rank == 0 else None

    def report(metrics: dict[str, float], payload: dict[str, Any] | None) -> None:
        if start_step:  # a restarted worker group (lost worker or resubmitted job): say where it resumed
            metrics = {**metrics, "resumed_from_step": start_step}
        if logger is not None:
            logger.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))
            storage.append_text(storage.join(out, "metrics.jsonl"), json.dumps(metrics) + "\n")
        if payload is None:
            ray.train.report(metrics)
            return
        if metrics.get("is_best"):
            save_checkpoint({k: v for k, v in payload.items() if k not in ("optimizer", "scheduler")},
                            storage.join(out, "best.pt"))
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(payload, Path(folder) / "checkpoint.pt")
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    status = "FAILED"
    try:
        from pipelines.node_features import node_split_loader

        train_worker(config, rank=rank, world_size=world, report=report, wrap=wrap, device=device,
                     start_step=start_step, state=state, split_loader=node_split_loader(shared_job))
        status = "FINISHED"
    finally:
        if logger is not None:
            logger.log_artifact(storage.join(out, "train_config.yaml"))
            best = storage.join(out, "best.pt")
            if status == "FINISHED" and storage.is_file(best):  # the run names its checkpoint
                logger.client.set_tag(logger.run_id, "fsar.best_checkpoint", str(storage.absolute(best)))
                if config.log_checkpoint:
                    logger.log_artifact(best)
            logger.end(status)


def _mlflow_run(config: TrainConfig) -> RunLogger:
    out = storage.as_location(config.out)
    run_id_file = storage.join(out, "mlflow_run_id")
    uri = tracking_uri(out, config.mlflow_uri)
    if storage.is_file(run_id_file):  # a restarted worker group continues the same MLflow run
        return RunLogger(uri=uri, experiment=config.experiment, run_id=storage.read_text(run_id_file).strip())
    logger = RunLogger(uri=uri, experiment=config.experiment, run_name=f"{config.method}-{storage.name(out)}",
                       params=to_dict(config), tags={"fsar.method": config.method, "fsar.kind": "train"},
                       parent_run_id=config.mlflow_parent_run_id)
    storage.write_text(run_id_file, logger.run_id)
    return logger


def _follow_metrics(path: Location, config: TrainConfig, stop: threading.Event) -> None:
    """Driver-side progress bar: follows the metrics rank 0 appends at each validation (workers may run
    on other machines; the run folder is the one thing driver and rank 0 share)."""
    from tqdm.auto import tqdm

    seen = 0
    with tqdm(total=config.steps, desc=f"train {config.method}", unit="step") as bar:
        while True:
            finished = stop.wait(1.0 if isinstance(path, Path) else 5.0)  # an object store is asked less often
            lines = storage.read_text(path).splitlines() if storage.is_file(path) else []
            for line in lines[seen:]:
                m = json.loads(line)
                bar.update(int(m["step"]) - bar.n)
                bar.set_postfix(loss=f"{m['train_loss']:.3f}", val=f"{m['val_accuracy']:.1f}%",
                                best=f"{m['best_val_accuracy']:.1f}%")
            seen = len(lines)
            if finished:
                return


def run(config: TrainConfig, *, address: str | None = None) -> TrainResult:
    """Check inputs up front, then train with Ray Train (or in-process when ``workers == 0``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_runtime import init_ray

    check_training_inputs(config)

    out = storage.absolute(config.out)
    tracking_uri(out, config.mlflow_uri)  # a run folder on object storage needs a tracking URI: say so now
    data = (dataclasses.replace(config.data, store=storage.absolute(config.data.store)) if isinstance(config.data, StoreData)
            else dataclasses.replace(config.data, manifest=storage.absolute(config.data.manifest)))
    config = dataclasses.replace(config, out=out, data=data)
    storage.make_dirs(out)
    same_run = _same_config(config, storage.join(out, "train_config.yaml"))
    if same_run and storage.is_file(storage.join(out, "finished.json")) and storage.is_file(storage.join(out, "best.pt")):
        return _result(out, config)  # this exact run already finished: a rerun is a no-op
    if not same_run:
        # A new run in this folder. Ray Train's state goes too: with the same storage path and name it would
        # resume the old run's latest checkpoint. The same config, unfinished, keeps everything and resumes.
        for stale in ("metrics.jsonl", "best.pt", "mlflow_run_id", "finished.json", "ray_train"):
            storage.delete(storage.join(out, stale))
    dump_yaml(config, storage.join(out, "train_config.yaml"))
    if config.workers > 0:
        ray = init_ray(address=address)
        check_decode_room(config, ray.cluster_resources())
    loop_config = to_dict(config)
    shared = config.workers > 0 and isinstance(config.data, StoreData)
    if shared:  # one copy of each split per node, shared by its workers (pipelines.node_features)
        loop_config[SHARED_FEATURES_KEY] = uuid.uuid4().hex[:12]
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.threads_per_worker}),
        run_config=RunConfig(
            name="ray_train", storage_path=str(out),
            checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_accuracy",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=3),
        ),
    )
    stop = threading.Event()
    follower = threading.Thread(target=_follow_metrics, args=(storage.join(out, "metrics.jsonl"), config, stop),
                                daemon=True)
    follower.start()
    try:
        if shared:
            from pipelines.node_features import NodeFeatureActors

            with NodeFeatureActors(loop_config[SHARED_FEATURES_KEY]) as actors:
                trainer.fit()
                actors.write_stats(storage.join(out, "feature_loads.json"))
        else:
            trainer.fit()
    finally:
        stop.set()
        follower.join()
    result = _result(out, config)
    storage.write_text(storage.join(out, "finished.json"), json.dumps({
        "best_val_accuracy": result.best_val_accuracy, "best_step": result.best_step, "steps": result.steps}))
    return result


def _same_config(config: TrainConfig, path: Location) -> bool:
    """Whether ``path`` (a run folder's train_config.yaml) holds exactly this config."""
    import yaml

    return storage.is_file(path) and storage.read_text(path) == yaml.safe_dump(to_dict(config), sort_keys=False)


def _result(out: Location, config: TrainConfig) -> TrainResult:
    """The finished run's summary, read back from its folder."""
    from fsar.training.checkpoint import read_checkpoint

    best_path, run_id_file = storage.join(out, "best.pt"), storage.join(out, "mlflow_run_id")
    best = read_checkpoint(best_path)
    run_id = storage.read_text(run_id_file).strip() if storage.is_file(run_id_file) else None
    return TrainResult(out, best_path, float(best["val_accuracy"]), int(best["step"]), config.steps, run_id)


def _arguments(p: Any) -> None:
    p.add_argument("--store", type=as_location, help="feature store: cached-feature methods (data.store)")
    p.add_argument("--manifest", type=as_location, help="end-to-end (pixels) methods: train on these videos (data.manifest)")
    p.add_argument("--method")
    p.add_argument("--out", type=as_location)
    p.add_argument("--way", type=int)
    p.add_argument("--shot", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--mlflow-uri", dest="mlflow_uri")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")


def _run(args: Any) -> int:
    config = resolve(TrainConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "method", "out", "way", "shot", "steps", "workers", "lr", "mlflow_uri")
                     | data_flags(args, "store", "manifest"))
    result = run(config, address=args.address)
    print(f"run {result.run_dir}: best validation accuracy {result.best_val_accuracy:.2f}% at step "
          f"{result.best_step}/{result.steps}; checkpoint {result.best_checkpoint}; MLflow run {result.mlflow_run_id}")
    return 0


COMMAND = Command("train", "episodic training on a feature store, or end to end on a manifest (Ray Train; "
                  "workers=0 in-process)", _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
