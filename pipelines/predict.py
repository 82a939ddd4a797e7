"""``fsar predict``: label new videos with a trained run and a few example clips per class.

    fsar predict --run RUN --support SUPPORT --query QUERY --out DIR [--window S --stride S] [--explain]

1. The run's method is loaded with the encoder its store was embedded with (``EncoderSettings``).
2. The threshold for "none of these": ``threshold=`` if given, else the run's calibration for this many classes
   and shots (``<run>/open_set-*.json``), made now on the run's validation classes when it has none.
3. Every support clip is decoded and encoded once, in this process (a few per class), and kept under
   ``<out>/supports/`` (a rerun reads them back).
4. Queries are cut into shards (row groups of ``<out>/queries.parquet``, or the query store's shard files). A Ray
   Data task per shard (``engine=ray``; ``local``: this process) decodes, encodes with the run's encoder, scores
   against the supports and writes ``<out>/predictions/part-NNNNN.parquet`` itself: the driver holds shard numbers,
   never a feature. A part is written whole or not at all, and a rerun skips written parts: every query is
   predicted exactly once however often the job is interrupted.
5. ``summary.json`` (counts, and accuracy when the queries' classes are known), ``--explain`` pictures, and an
   MLflow run linked to the training run, with the predictions and the threshold as artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fsar import storage
from fsar.config import ConfigError, dump_yaml, resolve, to_dict
from fsar.devices import resolve_device
from fsar.prediction.inputs import encode_support_clips
from fsar.prediction.output import (
    CONFIG_FILE,
    EXPLAIN_DIR,
    MLFLOW_RUN_ID_FILE,
    PREDICTION_SCHEMA,
    PREDICTIONS_DIR,
    QUERIES_FILE,
    SUMMARY_FILE,
    SUPPORTS_DIR,
    part_file,
    summarise,
)
from fsar.prediction.predictor import Predictor
from fsar.storage import Location, as_location
from pipelines.command import Command, flags, run_alone


@dataclass
class PredictConfig:
    """``fsar predict``: which run, which example clips, which videos to label."""

    run: Location  # a training run folder (or its best.pt), trained on a feature store
    support: Location  # example clips: a folder of class folders (<support>/<class>/<clip>) or a manifest
    query: Location  # videos to label: a folder of videos, a manifest, or a feature store
    out: Location  # output folder or URI (a rerun with the same settings resumes)
    top_k: int = 3  # classes kept per prediction
    window: float = 0.0  # seconds per window of a long video (0: one prediction per video)
    stride: float = 0.0  # seconds between window starts (0: half the window)
    threshold: float | None = None  # open-set score below which a query is "unknown" (None: the run's calibration)
    open_set_score: Literal["max_logit", "max_softmax"] = "max_logit"  # what the threshold applies to (see docs)
    target_far: float = 0.05  # calibration: wanted fraction of unknown-class queries accepted as a known class
    calibration_episodes: int = 500  # open-set episodes on the run's validation classes
    explain: bool = False  # a PNG per prediction: query and matched support frames, the method's alignment
    explain_limit: int = 100  # at most this many pictures
    shard_size: int = 64  # queries per task and per part file: the unit of work and of resumption
    batch_size: int = 16  # clips per encoder forward
    engine: Literal["ray", "local"] = "ray"  # Ray Data tasks (laptop or cluster), or this process alone
    device: str = "auto"  # cpu, cuda, or auto
    mlflow: bool = True  # record the prediction job as an MLflow run linked to the training run
    mlflow_uri: str | None = None  # tracking URI (default: the training run's, else MLFLOW_TRACKING_URI, else out/)
    experiment: str = "fsar-predict"

    def __post_init__(self) -> None:
        small = {k: getattr(self, k) for k in ("top_k", "shard_size", "batch_size", "calibration_episodes")
                 if getattr(self, k) < 1}
        if small:
            raise ConfigError(f"predict: {', '.join(f'{k}={v}' for k, v in small.items())} must be at least 1")
        if self.window < 0 or self.stride < 0 or (self.stride and not self.window):
            raise ConfigError(f"predict: window={self.window}, stride={self.stride}: give a positive --window (seconds) "
                              "and optionally a positive --stride")
        if not 0 <= self.target_far < 1:
            raise ConfigError(f"predict: target_far={self.target_far} must be in [0, 1)")


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to predict one shard (small: sent to every task)."""

    run: str
    out: str
    query: str
    query_kind: str
    threshold: float
    score: str
    top_k: int
    batch_size: int
    window: float
    stride: float
    device: str


DECODE_AHEAD = 8  # videos decoded ahead of the encoder: memory follows this, not the shard


def _clip_rows(table: pa.Table, job: ShardJob, predictor: Predictor) -> Iterator[dict[str, Any]]:
    """One prediction per video: decoded in threads a few videos ahead, encoded ``batch_size`` at a time."""
    from fsar.data.video import VideoDecodeError

    def decode(row: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        try:
            return row, predictor.decode(row["path"])
        except VideoDecodeError as exc:
            return row, str(exc)

    def predict(batch: list[tuple[dict[str, Any], np.ndarray]]) -> Iterator[dict[str, Any]]:
        logits = predictor.logits(predictor.encode([clip for _, clip in batch]))
        for p, (row, _) in zip(predictor.predictions([r["video_id"] for r, _ in batch], logits), batch, strict=True):
            yield p.row() | {"true_class": row.get("true_class")}

    batch: list[tuple[dict[str, Any], np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for row, result in _bounded_map(pool, decode, table.to_pylist(), ahead=DECODE_AHEAD):
            if isinstance(result, str):
                yield {"video_id": row["video_id"], "error": result, "true_class": row.get("true_class")}
                continue
            batch.append((row, result))
            if len(batch) == job.batch_size:
                yield from predict(batch)
                batch = []
    if batch:
        yield from predict(batch)


def _window_rows(table: pa.Table, job: ShardJob, predictor: Predictor) -> Iterator[dict[str, Any]]:
    """One prediction per window of each video, video after video, a group of windows at a time."""
    from fsar.data.transforms import centre_square
    from fsar.data.video import VideoDecodeError, iter_windows

    for row in table.to_pylist():
        try:
            for group in iter_windows(row["path"], num_segments=predictor.settings.frames, window_s=job.window,
                                      stride_s=job.stride or job.window / 2, windows_per_read=job.batch_size):
                logits = predictor.logits(predictor.encode([centre_square(w.frames) for w in group]))
                for p in predictor.predictions([row["video_id"]] * len(group), logits,
                                               spans=[(w.start_s, w.end_s) for w in group]):
                    yield p.row() | {"true_class": row.get("true_class")}
        except VideoDecodeError as exc:
            yield {"video_id": row["video_id"], "error": str(exc), "true_class": row.get("true_class")}


def _bounded_map(pool: ThreadPoolExecutor, fn: Any, items: list[Any], *, ahead: int) -> Iterator[Any]:
    """``pool.map(fn, items)`` in order, with at most ``ahead`` results waiting to be taken."""
    pending: deque[Any] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def predict_shard(shard: int, job: ShardJob, predictor: Predictor) -> int:
    """Predict one shard and write its part file; returns how many rows it wrote. ``predictor`` holds supports."""
    from fsar.data.feature_store import FeatureStore, write_table

    if job.query_kind == "store":
        store = FeatureStore(job.query)
        ids, features = store.read_shard(store.shard_files()[shard], view=predictor.settings.view,  # type: ignore[arg-type]
                                         as_grid=predictor.settings.as_grid)
        rows = [p.row() for p in predictor.predictions(ids, predictor.logits(features))]
    else:
        fs, path = storage.filesystem(storage.join(job.out, QUERIES_FILE))
        with pq.ParquetFile(fs.open_input_file(path)) as queries:
            table = queries.read_row_group(shard)
        rows = list((_window_rows if job.window else _clip_rows)(table, job, predictor))
    table = pa.Table.from_pylist([{k: r.get(k) for k in PREDICTION_SCHEMA.names} for r in rows],
                                 schema=PREDICTION_SCHEMA)
    write_table(part_file(job.out, shard), table)  # atomic: the part appears whole, and marks the shard done
    return table.num_rows


class _ShardWorker:
    """A Ray Data actor-or-task callable: the predictor (method, encoder, supports) built once per process."""

    def __init__(self, job: ShardJob) -> None:
        from fsar.prediction.support_set import load_classes

        self.job = job
        self.predictor, _ = Predictor.from_run(job.run, job.threshold, job.top_k, resolve_device(job.device), score=job.score)
        self.predictor.set_supports(load_classes(storage.join(job.out, SUPPORTS_DIR)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [int(s) for s in batch["shard"]]
        return {"shard": np.array(shards), "rows": np.array([predict_shard(s, self.job, self.predictor) for s in shards])}


def resolve_threshold(config: PredictConfig, predictor: Predictor, payload: dict[str, Any], *, way: int,
                      shot: int) -> tuple[float, dict[str, Any]]:
    """``config.threshold``, or the run's calibration for ``way`` classes of ``shot`` clips (made now and stored
    with the run when it has none)."""
    from fsar.prediction.open_set import calibration_for

    if config.threshold is not None:
        return config.threshold, {"threshold": config.threshold, "source": "given"}
    calibration = calibration_for(config.run, predictor.method, payload, way=way, shot=shot,
                                  target_far=config.target_far, score=config.open_set_score,
                                  episodes=config.calibration_episodes, device=predictor.device)
    return calibration.threshold, dataclasses.asdict(calibration) | {"source": "calibrated"}


def _plan_queries(config: PredictConfig, kind: str, predictor: Any) -> int:
    """Number of shards; writes ``queries.parquet`` (one row group per shard) for videos, checks a store."""
    from fsar.data.feature_store import FeatureStore
    from fsar.prediction.inputs import query_table

    if kind == "store":
        store = FeatureStore(config.query)
        differences = predictor.settings.differences(store.meta)
        if differences:
            raise ConfigError(f"query store {config.query} was embedded differently from run {config.run}'s store: "
                              f"{'; '.join(differences)}. Give the videos instead (--query FOLDER or a manifest), or "
                              f"a store embedded like the run's ({predictor.settings.describe()})")
        return len(store.shard_files())
    queries = storage.join(config.out, QUERIES_FILE)
    if not storage.is_file(queries):
        table = query_table(config.query, kind)  # type: ignore[arg-type]
        with storage.open_output(queries) as f:
            pq.write_table(table, f, row_group_size=config.shard_size)
    fs, path = storage.filesystem(queries)
    with pq.ParquetFile(fs.open_input_file(path)) as file:
        return file.metadata.num_row_groups


def run(config: PredictConfig, *, address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Predict every query (see the module docstring); returns the summary."""
    from fsar.lease import Lease
    from fsar.prediction.inputs import query_kind, support_clips

    start = time.perf_counter()
    config = dataclasses.replace(config, run=storage.absolute(config.run), out=storage.absolute(config.out),
                                 query=storage.absolute(config.query), support=storage.absolute(config.support))
    device = resolve_device(config.device)
    predictor, payload = Predictor.from_run(config.run, 0.0, config.top_k, device,  # a wrong run fails first
                                        score=config.open_set_score)
    kind = query_kind(config.query)
    if kind == "store" and (config.window or config.explain):
        raise ConfigError(f"query {config.query} is a feature store, which holds one clip's features per video: "
                          f"{'windows (--window)' if config.window else 'pictures (--explain)'} need the videos "
                          "themselves (a folder or a manifest)")
    clips = support_clips(config.support)
    _check_rerun(config)
    with Lease(config.out, job="fsar predict"):
        dump_yaml(config, storage.join(config.out, CONFIG_FILE))
        classes = encode_support_clips(predictor, clips, storage.join(config.out, SUPPORTS_DIR),
                                     batch_size=config.batch_size, progress=progress)
        predictor.set_supports(classes)
        threshold, open_set = resolve_threshold(config, predictor, payload, way=len(classes),
                                                shot=len(classes[0].video_ids))
        shards = _plan_queries(config, kind, predictor)
        job = ShardJob(run=str(config.run), out=str(config.out), query=str(config.query), query_kind=kind,
                       threshold=threshold, score=config.open_set_score, top_k=config.top_k, batch_size=config.batch_size, window=config.window,
                       stride=config.stride, device=config.device)
        todo = [s for s in range(shards) if not storage.is_file(part_file(config.out, s))]
        predictor.threshold = threshold
        _predict_shards(config, job, todo, predictor, address=address, progress=progress)
        summary = summarise(config.out) | {"shards": shards, "shards_written": len(todo), "query_kind": kind,
                                           "classes": predictor.class_names, "open_set": open_set,
                                           "seconds": round(time.perf_counter() - start, 2)}
        storage.write_text(storage.join(config.out, SUMMARY_FILE), json.dumps(summary, indent=1) + "\n")
        if config.explain:
            from pipelines.explain import explain_predictions

            summary["explained"] = explain_predictions(config, predictor, classes, kind, limit=config.explain_limit)
            storage.write_text(storage.join(config.out, SUMMARY_FILE), json.dumps(summary, indent=1) + "\n")
        if config.mlflow:
            summary["mlflow_run_id"] = log_prediction(config, summary)
            storage.write_text(storage.join(config.out, MLFLOW_RUN_ID_FILE), summary["mlflow_run_id"])
    return summary


def _check_rerun(config: PredictConfig) -> None:
    """A rerun must be the same job (it resumes); another job into the same folder would mix predictions."""
    path = storage.join(config.out, CONFIG_FILE)
    if not storage.is_file(path):
        return
    import yaml

    before = yaml.safe_load(storage.read_text(path))
    now = json.loads(json.dumps(to_dict(config), default=str))
    keys = ("run", "support", "query", "top_k", "window", "stride", "threshold", "target_far", "open_set_score",
            "shard_size")
    changed = [k for k in keys if str(before.get(k)) != str(now.get(k))]
    if changed:
        raise ConfigError(f"{config.out} holds predictions made with other settings ({', '.join(changed)} differ): "
                          "give another --out, or delete that folder")


def _predict_shards(config: PredictConfig, job: ShardJob, todo: list[int], predictor: Any, *, address: str | None,
                    progress: bool) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc="predict", unit="shard", disable=not progress) as bar:
        if config.engine == "local" or not todo:
            for shard in todo:
                predict_shard(shard, job, predictor)
                bar.update(1)
            return
        from pipelines.ray_runtime import init_ray

        ray = init_ray(address=address)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.DataContext.get_current().op_resource_reservation_enabled = False
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = gpus > 0 and config.device in ("auto", "cuda")
        workers = int(gpus) if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo))
        from ray.data import ActorPoolStrategy

        # Actors: each builds the method, the encoder and the supports once, then takes shard after shard.
        ds = ds.map_batches(_ShardWorker, fn_constructor_args=(job,), batch_size=1,
                            compute=ActorPoolStrategy(size=min(workers, len(todo))), num_gpus=1 if use_gpu else 0,
                            num_cpus=0 if use_gpu else 1)
        for _ in ds.iter_rows():
            bar.update(1)


def log_prediction(config: PredictConfig, summary: dict[str, Any]) -> str:
    """One MLflow run per prediction job, linked to the training run (its id as a tag, and as the parent where
    both live on the same tracking server): settings as params, the counts as metrics, the summary, the
    threshold's calibration and the prediction parts as artifacts."""
    from fsar.run_folder import RunFolder
    from fsar.tracking import RunLogger, tracking_uri

    run = RunFolder.of_checkpoint(config.run)
    trained_id = run.mlflow_run_id()
    uri = tracking_uri(config.out, config.mlflow_uri)
    logger = RunLogger(uri=uri, experiment=config.experiment, run_name=f"predict-{storage.name(config.out)}",
                       params={k: v for k, v in to_dict(config).items() if k not in ("mlflow", "mlflow_uri")},
                       tags={"fsar.kind": "predict", "fsar.training_run": str(run.root),
                             **({"fsar.training_mlflow_run_id": trained_id} if trained_id else {})})
    logger.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, int | float) and v is not None},
                       step=0)
    logger.log_artifact(storage.join(config.out, SUMMARY_FILE))
    for part in storage.list_files(storage.join(config.out, PREDICTIONS_DIR), "part-*.parquet"):
        logger.log_artifact(part, folder=PREDICTIONS_DIR)
    from fsar.prediction.open_set import calibration_files

    for calibration in calibration_files(config.run):
        logger.log_artifact(calibration)
    for picture in storage.list_files(storage.join(config.out, EXPLAIN_DIR), "*.png"):
        logger.log_artifact(picture, folder=EXPLAIN_DIR)
    logger.end()
    return logger.run_id


def _arguments(p: Any) -> None:
    p.add_argument("--run", dest="run_folder", type=as_location, help="training run folder (or its best.pt)")
    p.add_argument("--support", type=as_location, help="folder of class folders, or a manifest")
    p.add_argument("--query", type=as_location, help="folder of videos, manifest, or feature store")
    p.add_argument("--out", type=as_location)
    p.add_argument("--window", type=float, help="seconds per window of a long video")
    p.add_argument("--stride", type=float, help="seconds between window starts (default: half the window)")
    p.add_argument("--top-k", dest="top_k", type=int)
    p.add_argument("--explain", action="store_true", default=None, help="a PNG per prediction, with the alignment")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")


def _run(args: Any) -> int:
    config = resolve(PredictConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "support", "query", "out", "window", "stride", "top_k", "explain")
                     | ({"run": args.run_folder} if args.run_folder is not None else {}))
    summary = run(config, address=args.address)
    accuracy = summary.get("known_accuracy")
    print(f"predictions {storage.join(config.out, PREDICTIONS_DIR)}: {summary['predictions']} for "
          f"{summary['videos']} videos, {summary['unknown']} unknown, {summary['failed']} failed to decode; "
          f"{summary['shards_written']} of {summary['shards']} shard(s) written now"
          + (f"; known-class accuracy {100 * accuracy:.1f}%" if accuracy is not None else "")
          + f"; {summary['seconds']:.1f} s")
    return 0


COMMAND = Command("predict", "label new videos with a trained run and a few example clips per class",
                  _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
