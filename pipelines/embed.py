"""Embed a manifest's videos into a feature store with Ray Data.

``python -m pipelines.embed --config embed.yaml [key=value ...]`` or ``fsar embed``. The driver cuts the
unfinished shards into chunks of ``chunk_size`` manifest rows (row ranges: it never reads the rows) and
streams them through Ray Data. On a cluster with GPUs, CPU tasks read and decode a chunk's videos and an
actor per GPU encodes it (uint8 centre squares travel between the two; resize and normalisation run on
the GPU); without GPUs, tasks on every core do both (the model cached once per worker process). Whoever
encodes a chunk writes it as a part file named by its row range, and reports four integers. When every
part of a shard is in, the driver starts a small task that joins them into the shard file, written
atomically: an interrupted job resumes from its finished shards and parts, and a retried task rewrites
the same names, so no video is stored twice. ``engine=local`` runs the same steps in this process.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from typing import Any

import numpy as np

from fsar import storage
from fsar.config import resolve
from fsar.embedding import (
    ChunkResult,
    EmbedChunk,
    EmbedConfig,
    EmbedSummary,
    ShardTracker,
    decode_chunk,
    embed_manifest,
    finish_embedding,
    load_backbone,
    merge_shard,
    plan_embedding,
    write_chunk,
)
from fsar.lease import Lease
from fsar.storage import as_location
from pipelines.command import Command, flags, run_alone

__all__ = ["EmbedConfig", "run", "main"]

_CHUNK_FIELDS = ("shard", "start", "stop")


def _chunks(batch: dict[str, np.ndarray]) -> list[EmbedChunk]:
    return [EmbedChunk(*(int(batch[k][i]) for k in _CHUNK_FIELDS)) for i in range(len(batch["shard"]))]


def _reports(results: list[ChunkResult]) -> dict[str, np.ndarray]:
    """What a worker hands back to the driver: four integers per chunk."""
    return {f.name: np.asarray([getattr(r, f.name) for r in results], dtype=np.int64)
            for f in dataclasses.fields(ChunkResult)}


def _decode_chunks(batch: dict[str, np.ndarray], *, config: EmbedConfig) -> dict[str, Any]:
    """Ray Data task (CPU): chunk descriptors → the chunk's decoded videos, one row per chunk.

    ``records`` holds the pickled list of ``decode_record`` results: uint8 centre squares at each video's own
    size (failures carry their reason instead). A chunk travels whole so that the encoder actor can write
    its part; one pickle per chunk keeps Ray Data from guessing a tensor type for clips of mixed sizes.
    """
    chunks = _chunks(batch)
    payload = np.empty(len(chunks), dtype=object)
    for i, chunk in enumerate(chunks):
        payload[i] = pickle.dumps(decode_chunk(chunk, config), protocol=pickle.HIGHEST_PROTOCOL)
    return {**{k: batch[k] for k in _CHUNK_FIELDS}, "records": payload}


class _Encode:
    """Ray Data actor (GPU): holds one backbone on this actor's GPU, encodes decoded chunks, writes their parts."""

    def __init__(self, config: EmbedConfig) -> None:
        self.config = config
        self.backbone = load_backbone(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _reports([write_chunk(chunk, pickle.loads(batch["records"][i]), self.backbone, self.config)
                         for i, chunk in enumerate(_chunks(batch))])


_WORKER_BACKBONES: dict[tuple[Any, ...], Any] = {}


def _embed_chunks(batch: dict[str, np.ndarray], *, config: EmbedConfig) -> dict[str, np.ndarray]:
    """Ray Data task (CPU-only clusters): decode, encode and write whole chunks in one task. Ray reuses worker
    processes, so the backbone is built once per process (cached here), not once per task or per job."""
    key = (config.backbone, config.pretrained, config.init_seed)
    if key not in _WORKER_BACKBONES:
        _WORKER_BACKBONES[key] = load_backbone(config, device="cpu")
    return _reports([write_chunk(chunk, decode_chunk(chunk, config), _WORKER_BACKBONES[key], config)
                     for chunk in _chunks(batch)])


def _decode_then_encode(ds: Any, config: EmbedConfig, *, actors: int, gpus_per_actor: float) -> Any:
    """Decode in CPU tasks, encode and write in ``actors`` actors (one per GPU): the two stages of a GPU cluster.

    Decode asks for a different CPU share than the actor: with equal remote args Ray Data would fuse
    decoding into the encoder actor.
    """
    from ray.data import ActorPoolStrategy

    ds = ds.map_batches(_decode_chunks, fn_kwargs={"config": config}, batch_size=1, num_cpus=config.decode_cpus)
    return ds.map_batches(_Encode, fn_constructor_args=(config,), compute=ActorPoolStrategy(size=actors),
                          batch_size=1, num_gpus=gpus_per_actor, num_cpus=0)


def run_ray(config: EmbedConfig, *, address: str | None = None, progress: bool = True,
            max_shards: int | None = None) -> EmbedSummary:
    """The Ray Data engine (see module docstring). The driver plans row ranges, counts what the workers
    report, and starts a merge task for each shard whose parts are all written; no feature passes through it."""
    from pipelines.ray_runtime import init_ray

    # Manifest, weights and an incompatible existing store are checked before Ray starts.
    driver_backbone = load_backbone(config, device="cpu")
    plan = plan_embedding(config, driver_backbone, max_shards=max_shards)
    del driver_backbone
    ray = init_ray(address=address)
    # A merge asks for a whole CPU like an embed task, so it runs in one of the job's warm worker processes
    # between chunks; asking for none would make Ray start a fresh process (torch imports: seconds of CPU
    # taken from the embed tasks) whenever every warm one is busy.
    merge = ray.remote(num_cpus=1)(merge_shard)
    tracker = ShardTracker(plan)
    merges = [merge.remote(plan.root, s, plan.parts[s]) for s in plan.complete_shards()]
    if plan.chunks:
        from tqdm.auto import tqdm

        # One bar on the driver, counting finished videos; Ray's own per-operator output is off (outside a
        # terminal it would log a status block every few seconds).
        ray.data.DataContext.get_current().enable_progress_bars = False
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = gpus > 0 and config.device in ("auto", "cuda")
        # One block per chunk: a task per chunk spreads them over every core from the first one.
        ds = ray.data.from_items([dataclasses.asdict(c) for c in plan.chunks], override_num_blocks=len(plan.chunks))
        if use_gpu:
            ds = _decode_then_encode(ds, config, actors=config.encoder_actors or int(gpus), gpus_per_actor=1)
        else:
            # Without GPUs an encoder actor would be one more process competing for the same cores, and
            # costs seconds to start per job; tasks decode+encode on every core, model cached per process.
            # One operator does all the work, so Ray Data's per-operator reservation (half the CPUs held
            # for operators that have none left to run) only idles cores: measured on 2 CPUs, the same 1,200
            # videos took 9.9 s with it and 6.4 s without.
            ray.data.DataContext.get_current().op_resource_reservation_enabled = False
            ds = ds.map_batches(_embed_chunks, fn_kwargs={"config": config}, batch_size=1, num_cpus=1)
        rows = {c.start: c.stop - c.start for c in plan.chunks}
        with tqdm(total=sum(rows.values()), desc="embed", unit="video", disable=not progress) as bar:
            for report in ds.iter_rows():
                result = ChunkResult(**{k: int(v) for k, v in report.items()})
                if tracker.add(result):
                    merges.append(merge.remote(plan.root, result.shard, plan.parts[result.shard]))
                bar.update(rows[result.start])
    ray.get(merges)
    return finish_embedding(plan, tracker)


def run(config: EmbedConfig, *, address: str | None = None, progress: bool = True,
        max_shards: int | None = None) -> EmbedSummary:
    """Embed with the engine ``config.engine`` names, then record the store in MLflow."""
    start = time.perf_counter()
    if config.mlflow:
        from fsar.tracking import tracking_uri

        tracking_uri(config.out, config.mlflow_uri)  # a store on object storage needs a tracking URI: say so now
    with Lease(config.out, job="fsar embed"):  # one writer at a time: a second embed into this store is refused
        if config.engine == "local":
            summary = embed_manifest(config, progress=progress, max_shards=max_shards)
        else:
            summary = run_ray(config, address=address, progress=progress, max_shards=max_shards)
    if config.mlflow:
        log_store(config, summary, seconds=time.perf_counter() - start)
    return summary


def log_store(config: EmbedConfig, summary: EmbedSummary, *, seconds: float) -> str:
    """One MLflow run per embed job: the store's metadata as params, what the job did as metrics, the
    failures table as an artifact. Returns the run id (also written to ``<store>/mlflow_run_id``)."""
    from fsar.data.feature_store import FeatureStore
    from fsar.tracking import RunLogger, tracking_uri

    store = storage.absolute(config.out)
    meta = dataclasses.asdict(FeatureStore(store).meta)
    logger = RunLogger(uri=tracking_uri(store, config.mlflow_uri), experiment=config.experiment,
                       run_name=f"embed-{storage.name(store)}", params={"store": str(store), **meta},
                       tags={"fsar.kind": "embed", "fsar.store": str(store)})
    logger.log_metrics({"videos": summary.videos, "failures": summary.failures,
                        "shards_written": summary.shards_written, "shards_skipped": summary.shards_skipped,
                        "seconds": seconds}, step=0)
    if storage.is_file(storage.join(store, "failures.parquet")):
        logger.log_artifact(storage.join(store, "failures.parquet"))
    logger.end()
    storage.write_text(storage.join(store, "mlflow_run_id"), logger.run_id)
    return logger.run_id


def _arguments(p: Any) -> None:
    p.add_argument("--manifest", type=as_location)
    p.add_argument("--out", type=as_location)
    p.add_argument("--backbone")
    p.add_argument("--pretrained", help="open_clip tag, checkpoint path, 'none' or 'default'")
    p.add_argument("--frames", type=int)
    p.add_argument("--patch-grid", dest="patch_grid", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--repair", action="store_true", default=None,
                   help="re-embed exactly the shards `fsar store check` finds damaged")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")


def _run(args: Any) -> int:
    config = resolve(EmbedConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "manifest", "out", "backbone", "pretrained", "frames", "patch_grid", "batch_size",
                                 "repair"))
    start = time.perf_counter()
    summary = run(config, address=args.address)
    seconds = time.perf_counter() - start
    print(f"store {summary.store}: {summary.videos} videos embedded, {summary.failures} failed "
          f"(see failures.parquet); {summary.shards_written} shard(s) written, {summary.shards_skipped} already done; "
          f"{seconds:.1f} s")
    return 0


COMMAND = Command("embed", "decode + encode every video of a manifest into a feature store", _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
