"""Embed a manifest's videos into a feature store with Ray Data.

``python -m pipelines.embed --config embed.yaml [key=value ...]`` or ``fsar embed``. Rows of unfinished
shards stream through Ray Data: on a cluster with GPUs, CPU tasks decode the sampled frames and an
actor per GPU encodes them (uint8 centre squares travel between the two; resize and normalisation run
on the GPU); without GPUs, tasks on every core decode and encode (the model cached once
per worker process). The driver assembles shards as their last video arrives and writes each
atomically, so an interrupted job resumes from its finished shards. ``engine=local`` runs the same
steps in this process without Ray.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fsar.config import resolve
from fsar.embedding import (
    EmbedConfig,
    EmbedSummary,
    ShardAssembler,
    decode_record,
    embed_manifest,
    encode_records,
    load_backbone,
    plan_embedding,
)
from pipelines.command import Command, flags, run_alone

__all__ = ["EmbedConfig", "run", "main"]

_PASS_THROUGH = ("video_id", "path", "label", "class_name", "split", "shard")


def _decode_batch(batch: dict[str, np.ndarray], *, config: EmbedConfig) -> dict[str, Any]:
    """Ray Data map_batches task (CPU): manifest rows → uint8 clips, or an error per bad video (never raised).

    ``clip`` is an object column of ``(T, s, s, 3)`` uint8 arrays, s the video's own shorter side (a
    failed video: ``(T, 0, 0, 3)``, so every row has the same rank). Ray Data stores such a column as
    its variable-shaped tensor type — one contiguous buffer plus a shape per row — and hands the encoder
    zero-copy views (a dense array when a batch's sizes agree). Padding to the batch's largest side
    would ship bytes for nothing, and the padded size would still differ from batch to batch; grouping
    rows by size across batches is a groupby, an all-to-all shuffle that stops the stream. The encoder
    groups by size itself, within its batch (``encode_clips``).
    """
    n = len(batch["video_id"])
    clips = np.empty(n, dtype=object)  # filled per row: np.array(list) would try to stack equal shapes
    indices = np.zeros((n, config.frames), dtype=np.int64)
    num_frames = np.zeros(n, dtype=np.int64)
    errors = []
    for i in range(n):
        record = decode_record({k: batch[k][i] for k in _PASS_THROUGH}, config)
        errors.append(record["error"] or "")
        if record["error"]:
            clips[i] = np.zeros((config.frames, 0, 0, 3), dtype=np.uint8)
        else:
            clips[i], indices[i], num_frames[i] = record["clip"], record["frame_indices"], record["num_frames"]
    return {**{k: batch[k] for k in _PASS_THROUGH}, "clip": clips, "frame_indices": indices,
            "num_frames": num_frames, "error": np.asarray(errors, dtype=object)}


def _encode_batch(batch: dict[str, Any], backbone: Any, config: EmbedConfig) -> dict[str, Any]:
    """Decoded batch (``_decode_batch``) → the same rows with ``frames`` (and ``patches``) features instead of
    ``clip``; failed rows get zeros."""
    n = len(batch["video_id"])
    records = [{"clip": batch["clip"][i], "error": batch["error"][i]} for i in range(n)]
    encode_records(backbone, records, patch_grid=config.patch_grid)
    t, g, dim = config.frames, config.patch_grid, backbone.embed_dim
    frames = np.zeros((n, t, dim), dtype=np.float16)
    patches = np.zeros((n, t, g, g, dim), dtype=np.float16) if g else None
    for i, r in enumerate(records):
        if "frames" in r:
            frames[i] = r["frames"]
            if patches is not None:
                patches[i] = r["patches"]
    out = {k: batch[k] for k in (*_PASS_THROUGH, "frame_indices", "num_frames", "error")}
    out["frames"] = frames
    if patches is not None:
        out["patches"] = patches
    return out


class _Encode:
    """Ray Data actor (GPU): holds one backbone on this actor's GPU and encodes batches."""

    def __init__(self, config: EmbedConfig) -> None:
        self.config = config
        self.backbone = load_backbone(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return _encode_batch(batch, self.backbone, self.config)


_WORKER_BACKBONES: dict[tuple[Any, ...], Any] = {}


def _decode_and_encode_batch(batch: dict[str, np.ndarray], *, config: EmbedConfig) -> dict[str, Any]:
    """Ray Data task (CPU-only clusters): decode and encode in one task. Ray reuses worker processes, so
    the backbone is built once per process (cached here), not once per task or per job."""
    key = (config.backbone, config.pretrained, config.init_seed)
    if key not in _WORKER_BACKBONES:
        _WORKER_BACKBONES[key] = load_backbone(config, device="cpu")
    return _encode_batch(_decode_batch(batch, config=config), _WORKER_BACKBONES[key], config)


def _decode_then_encode(ds: Any, config: EmbedConfig, *, actors: int, gpus_per_actor: float) -> Any:
    """Decode in CPU tasks, encode in ``actors`` actors (one per GPU): the two stages of a GPU cluster.

    uint8 clips cross between them (``_decode_batch``). Decode asks for a different CPU share than the
    actor: with equal remote args Ray Data would fuse decoding into the encoder actor.
    """
    from ray.data import ActorPoolStrategy

    ds = ds.map_batches(_decode_batch, fn_kwargs={"config": config}, batch_size=config.decode_batch,
                        num_cpus=config.decode_cpus)
    return ds.map_batches(_Encode, fn_constructor_args=(config,), compute=ActorPoolStrategy(size=actors),
                          batch_size=config.batch_size, num_gpus=gpus_per_actor, num_cpus=0)


def run_ray(config: EmbedConfig, *, address: str | None = None, progress: bool = True,
            max_shards: int | None = None) -> EmbedSummary:
    """The Ray Data engine (see module docstring)."""
    from pipelines.ray_runtime import init_ray

    # Manifest, weights and an incompatible existing store are checked before Ray starts.
    driver_backbone = load_backbone(config, device="cpu")
    plan = plan_embedding(config, driver_backbone, max_shards=max_shards)
    ray = init_ray(address=address)
    assembler = ShardAssembler(plan)
    items = [dict(row, shard=s) for s in plan.todo for row in plan.shard_rows(s)]
    if items:
        from tqdm.auto import tqdm

        # One bar on the driver, counting finished videos; Ray's own per-operator output is off (outside a
        # terminal it would log a status block every few seconds).
        ray.data.DataContext.get_current().enable_progress_bars = False
        gpus = ray.cluster_resources().get("GPU", 0)
        use_gpu = gpus > 0 and config.device in ("auto", "cuda")
        ds = ray.data.from_items([{k: r[k] for k in _PASS_THROUGH} for r in items])
        if use_gpu:
            ds = _decode_then_encode(ds, config, actors=config.encoder_actors or int(gpus), gpus_per_actor=1)
        else:
            # Without GPUs an encoder actor would be one more process competing for the same cores, and
            # costs seconds to start per job; tasks decode+encode on every core, model cached per process.
            ds = ds.map_batches(_decode_and_encode_batch, fn_kwargs={"config": config}, batch_size=config.batch_size,
                                num_cpus=1)
        bar = tqdm(total=len(items), desc="embed", unit="video", disable=not progress)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            bar.update(len(batch["video_id"]))
            for i in range(len(batch["video_id"])):
                record = {k: batch[k][i] for k in (*_PASS_THROUGH, "frame_indices", "num_frames", "error", "frames")}
                record["patches"] = batch["patches"][i] if "patches" in batch else None
                record["error"] = record["error"] or None
                record["label"], record["num_frames"] = int(record["label"]), int(record["num_frames"])
                assembler.add(int(record.pop("shard")), record)
        bar.close()
    return assembler.finish()


def run(config: EmbedConfig, *, address: str | None = None, progress: bool = True,
        max_shards: int | None = None) -> EmbedSummary:
    """Embed with the engine ``config.engine`` names, then record the store in MLflow."""
    start = time.perf_counter()
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
    import dataclasses

    from fsar.data.feature_store import FeatureStore
    from fsar.tracking import RunLogger, tracking_uri

    store = Path(config.out)
    meta = dataclasses.asdict(FeatureStore(store).meta)
    logger = RunLogger(uri=tracking_uri(store, config.mlflow_uri), experiment=config.experiment,
                       run_name=f"embed-{store.resolve().name}", params={"store": str(store.resolve()), **meta},
                       tags={"fsar.kind": "embed", "fsar.store": str(store.resolve())})
    logger.log_metrics({"videos": summary.videos, "failures": summary.failures,
                        "shards_written": summary.shards_written, "shards_skipped": summary.shards_skipped,
                        "seconds": seconds}, step=0)
    if (store / "failures.parquet").is_file():
        logger.log_artifact(store / "failures.parquet")
    logger.end()
    (store / "mlflow_run_id").write_text(logger.run_id)
    return logger.run_id


def _arguments(p: Any) -> None:
    p.add_argument("--manifest", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--backbone")
    p.add_argument("--pretrained", help="open_clip tag, checkpoint path, 'none' or 'default'")
    p.add_argument("--frames", type=int)
    p.add_argument("--patch-grid", dest="patch_grid", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")


def _run(args: Any) -> int:
    config = resolve(EmbedConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "manifest", "out", "backbone", "pretrained", "frames", "patch_grid", "batch_size"))
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
