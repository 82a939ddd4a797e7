"""Embed videos: decode the sampled frames (CPU) and encode them with a backbone, shard by shard.

The two halves are separate functions so the Ray Data job can run them on different workers (decode in
CPU tasks, encode in an actor pool); ``embed_manifest`` runs both in this process for a laptop or a test.
Between them travel uint8 centre squares at the video's native size; resize and normalisation run on
the encoder's device, batched (``encode_clips``).
A video that cannot be decoded is recorded with its reason and the job goes on.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from fsar import __version__, storage
from fsar.backbones import ClipBackbone, build_backbone
from fsar.backbones.encode import encode_clips
from fsar.data.feature_store import (
    CLASS_TEXT_FILE,
    ROW_SCHEMA,
    FeatureStoreError,
    StoreMeta,
    finished_shards,
    read_meta,
    read_table,
    shard_table,
    write_class_text,
    write_meta,
    write_table,
)
from fsar.data.manifest import manifest_classes, manifest_rows, read_manifest_rows
from fsar.data.store_check import damaged_shards, forget_shards, write_shard
from fsar.data.transforms import centre_square
from fsar.data.video import VideoDecodeError, load_clip
from fsar.storage import Location

FAILURE_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("path", pa.string()), ("split", pa.string()), ("reason", pa.string())]
)


@dataclass
class EmbedConfig:
    """``fsar embed``: which videos, which encoder, what to store."""

    manifest: Location  # manifest.parquet of the videos to embed (a local path or a URI: s3://, gs://, ...)
    out: Location  # feature store folder or URI (created; a rerun resumes it)
    backbone: str = "ViT-B-16"  # open_clip model name, or fsar-tiny (shipped, offline)
    pretrained: str = "default"  # open_clip tag, checkpoint path, "none" (random), or "default" (openai if the model has it)
    frames: int = 8  # frames sampled per video (segment centres)
    patch_grid: int = 0  # also store the patch grid average-pooled to g×g (0 = pooled embedding only)
    text_template: str = "a video of {}"  # class-name prompt for the text tower ("" = store no class text)
    batch_size: int = 32  # videos per encoder forward
    chunk_size: int = 64  # videos per task and per part file: the unit of work, of retry and of resumption
    shard_size: int = 256  # manifest rows per shard (the unit of resumption)
    decode_backend: Literal["auto", "decord", "pyav"] = "auto"  # decord with PyAV fallback, or one of them
    short_video: Literal["repeat", "error"] = "repeat"  # videos shorter than `frames`: repeat frames or fail them
    repair: bool = False  # re-embed exactly the shards `fsar store check` finds damaged
    init_seed: int = 0  # seed of a random-init backbone (pretrained none / fsar-tiny)
    device: str = "auto"  # cpu, cuda, or auto (cuda when available)
    engine: Literal["ray", "local"] = "ray"  # Ray Data (laptop or cluster) or this process alone
    encoder_actors: int = 0  # Ray with GPUs: encoder actors (0 = one per GPU); without GPUs tasks encode
    decode_cpus: float = 0.5  # Ray with GPUs: CPUs reserved per decode task (decoding 8 frames is light)
    decode_threads: int = 0  # local engine: parallel decodes (0 = number of CPUs)
    mlflow: bool = True  # record the store's metadata and the failure count as an MLflow run
    mlflow_uri: str | None = None  # MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite file in the store)
    experiment: str = "fsar-embed"  # MLflow experiment name

    def __post_init__(self) -> None:
        from fsar.config import ConfigError

        small = {k: getattr(self, k) for k in ("frames", "batch_size", "chunk_size", "shard_size") if getattr(self, k) < 1}
        if small:
            raise ConfigError(f"embed: {', '.join(f'{k}={v}' for k, v in small.items())} must be at least 1")


def decode_record(row: Mapping[str, Any], config: EmbedConfig) -> dict[str, Any]:
    """Decode one manifest row's segment centres into the clip the encoder takes: uint8 centre squares.

    Returns the row's identity plus ``clip`` ``(T, s, s, 3)`` uint8 at the video's native resolution
    (s = its shorter side; cropped by slicing), ``frame_indices`` ``(T,)``, ``num_frames`` and ``error``
    (None, or the reason the video could not be decoded — never raised).

    Resize and normalisation are left to the encoder (``encode_clips``): a uint8 value is half the bytes
    of the fp16 pixel it would become at equal size, and resampling is arithmetic the encoder's device
    does for a whole batch at once while a CPU worker would do it frame by frame. (Above a side of about
    1.4·S the native square outweighs the fp16 pixels it replaces; action datasets are mostly stored
    at a 240–360 px shorter side.)
    """
    out = {k: row[k] for k in ("video_id", "path", "label", "class_name", "split")}
    try:
        clip = load_clip(row["path"], num_segments=config.frames, mode="eval", backend=config.decode_backend,
                         short_video=config.short_video)
    except VideoDecodeError as exc:
        return {**out, "clip": None, "frame_indices": None, "num_frames": None, "error": str(exc)}
    return {**out, "clip": centre_square(clip.frames), "frame_indices": clip.indices, "num_frames": clip.num_frames,
            "error": None}


@dataclass(frozen=True)
class EmbedSummary:
    """What an embed run did: shards written now / skipped as already done, good videos, failures."""

    store: Location
    shards_written: int
    shards_skipped: int
    videos: int
    failures: int


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_backbone(config: EmbedConfig, *, device: str | None = None) -> ClipBackbone:
    """The encoder ``config`` names, built identically on the driver and on every worker (``pretrained`` read by
    ``fsar.backbones.weights``: ``default`` is the model's ``openai`` tag when it has one). ``resnet50`` is
    torchvision's, from a local state-dict file or a seeded random init (``none``)."""
    from fsar.backbones.trunks import RESNET50, ResNetEncoder
    from fsar.config import ConfigError

    if config.backbone == RESNET50:
        if config.pretrained == "default":
            raise ConfigError(f"{RESNET50} has no default weights to download: set pretrained to a local torchvision "
                              "state-dict file, or none for a seeded random init")
        encoder = ResNetEncoder(weights=config.pretrained, init_seed=config.init_seed)
        return encoder.to(_device(device or config.device)).eval()  # type: ignore[return-value]
    return build_backbone(
        config.backbone, pretrained=config.pretrained,
        device=_device(device or config.device), init_seed=config.init_seed,
    )


def store_meta_for(config: EmbedConfig, backbone: ClipBackbone) -> StoreMeta:
    d = backbone.describe()
    return StoreMeta(
        backbone=d["backbone"], pretrained=d["pretrained"], frames=config.frames, embed_dim=d["embed_dim"],
        patch_grid=config.patch_grid, image_size=d["image_size"], init_seed=d["init_seed"], manifest=str(config.manifest),
        shard_size=config.shard_size, code_version=__version__,
    )


def check_resume(root: Location, meta: StoreMeta) -> None:
    """A rerun into an existing store must use the same encoder and sampling, or the shards would mix."""
    if not storage.is_file(storage.join(root, "store.json")):
        return
    old = read_meta(root)
    for key in ("backbone", "pretrained", "init_seed", "frames", "embed_dim", "patch_grid", "shard_size"):
        if getattr(old, key) != getattr(meta, key):
            raise FeatureStoreError(
                f"{root} already holds features with {key}={getattr(old, key)!r}, this run has "
                f"{getattr(meta, key)!r}: choose another --out, or delete {root} to rebuild it"
            )


@dataclass(frozen=True)
class EmbedChunk:
    """One unit of embed work: manifest rows ``[start, stop)``, a part of shard ``shard``.

    Its part files are named by the row range, so a retried task or a rerun rewrites the same names (the
    exactly-once key), and a rerun with another ``chunk_size`` cannot mistake an old part for one of its own."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class ChunkResult:
    """What a worker reports for a chunk it wrote: counts, never features."""

    shard: int
    start: int
    videos: int
    failures: int


@dataclass
class EmbedPlan:
    """The shards of a manifest still to be written and the chunks of them still to be embedded. Holds
    row ranges only: the rows themselves are read by whoever embeds a chunk."""

    root: Location
    manifest: Location
    todo: list[int]  # shards to complete in this run
    chunks: list[EmbedChunk]  # chunks of those shards without a finished part file
    parts: dict[int, list[tuple[int, int]]]  # shard -> the row ranges of its parts
    skipped: int  # shards already complete before this run

    def complete_shards(self) -> list[int]:
        """Shards of ``todo`` none of whose chunks is left (an earlier run wrote every part, not the shard)."""
        pending = {c.shard for c in self.chunks}
        return [s for s in self.todo if s not in pending]


PARTS_DIR = "parts"


def part_path(root: str | Path, shard: int, rows: tuple[int, int], kind: str = "features") -> Location:
    """``parts/shard-NNNNN/rows-START-STOP.<kind>.parquet``: the features (the part's completion marker) or the
    failures of manifest rows ``[START, STOP)``."""
    return storage.join(root, PARTS_DIR, f"shard-{shard:05d}", f"rows-{rows[0]:010d}-{rows[1]:010d}.{kind}.parquet")


def _finished_parts(root: Location) -> set[tuple[int, int]]:
    """Row ranges of the part files already written."""
    done = set()
    for path in storage.list_files(storage.join(root, PARTS_DIR), "rows-*.features.parquet", recursive=True):
        _, start, stop = storage.name(path).split(".")[0].split("-")
        done.add((int(start), int(stop)))
    return done


def plan_embedding(config: EmbedConfig, backbone: ClipBackbone, *, max_shards: int | None = None) -> EmbedPlan:
    """Check the store can be (re)written with this encoder, record store.json and the class text, and list
    the unfinished shards and chunks. Reads the manifest's footer and its label/class columns only."""
    root = storage.as_location(config.out)
    manifest = storage.as_location(config.manifest)
    total = manifest_rows(manifest)
    meta = store_meta_for(config, backbone)
    check_resume(root, meta)
    if config.repair:  # damaged shards are forgotten, so this run embeds exactly their rows again
        forget_shards(root, damaged_shards(root))
    storage.make_dirs(root)
    write_meta(root, meta)
    write_store_class_text(root, manifest_classes(manifest), backbone, template=config.text_template)
    n_shards = (total + config.shard_size - 1) // config.shard_size
    done = finished_shards(root)
    todo = [s for s in range(n_shards) if s not in done]
    if max_shards is not None:
        todo = todo[:max_shards]
    written = _finished_parts(root) if todo else set()
    chunks, parts = [], {}
    for shard in todo:
        first, last = shard * config.shard_size, min(total, (shard + 1) * config.shard_size)
        parts[shard] = [(a, min(last, a + config.chunk_size)) for a in range(first, last, config.chunk_size)]
        chunks += [EmbedChunk(shard, a, b) for a, b in parts[shard] if (a, b) not in written]
    return EmbedPlan(root, manifest, todo, chunks, parts, len(done))


def write_store_class_text(root: Location, classes: Sequence[tuple[int, str]], backbone: ClipBackbone, *,
                           template: str) -> None:
    """Embed every ``(label, class_name)`` with the backbone's text tower (when it has one), once per store."""
    if not backbone.has_text or not template or storage.is_file(storage.join(root, CLASS_TEXT_FILE)):
        return
    with torch.no_grad():
        vectors = backbone.encode_text([name for _, name in classes], template=template).float().cpu().numpy()
    write_class_text(root, [label for label, _ in classes], [name for _, name in classes], vectors, template=template)


def decode_chunk(chunk: EmbedChunk, config: EmbedConfig, *, map_fn: Callable[..., Any] = map) -> list[dict[str, Any]]:
    """Read the chunk's manifest rows and decode each (``decode_record``; ``map_fn`` may be a thread pool's map)."""
    rows = read_manifest_rows(config.manifest, chunk.start, chunk.stop).to_pylist()
    return list(map_fn(lambda r: decode_record(r, config), rows))


def write_chunk(chunk: EmbedChunk, records: Sequence[dict[str, Any]], backbone: ClipBackbone, config: EmbedConfig
                ) -> ChunkResult:
    """Encode a decoded chunk and write its part: failures first, then the features file, whose appearance
    marks the part done (a retry rewrites the same two names, so nothing is ever stored twice)."""
    records = list(records)
    for start in range(0, len(records), config.batch_size):
        encode_records(backbone, records[start : start + config.batch_size], patch_grid=config.patch_grid)
    failed = [{k: r[k] for k in ("video_id", "path", "split")} | {"reason": r["error"]} for r in records if r["error"]]
    good = [{k: r.get(k) for k in ROW_SCHEMA.names} for r in records if not r["error"]]
    rows = (chunk.start, chunk.stop)
    write_table(part_path(config.out, chunk.shard, rows, "failures"), pa.Table.from_pylist(failed, schema=FAILURE_SCHEMA))
    write_table(part_path(config.out, chunk.shard, rows), shard_table(good))
    return ChunkResult(chunk.shard, chunk.start, len(good), len(failed))


def merge_shard(root: str | Path, shard: int, parts: Sequence[tuple[int, int]]) -> int:
    """Join a shard's parts into its shard file (and its failure list), then drop the parts. Returns its videos.

    The shard file is written last, atomically: it is the marker a rerun trusts. Killed before it, a rerun
    finds every part and merges again; killed after it, the rerun skips the shard and clears the parts."""
    features = [read_table(part_path(root, shard, rows)) for rows in parts]
    failures = [read_table(part_path(root, shard, rows, "failures")) for rows in parts]
    write_table(storage.join(root, "failures", f"shard-{shard:05d}.parquet"),
                pa.concat_tables(failures) if failures else FAILURE_SCHEMA.empty_table())
    table = pa.concat_tables(features) if features else ROW_SCHEMA.empty_table()
    write_shard(root, shard, table)  # its record (rows, digest) first, then the shard file
    storage.delete(storage.join(root, PARTS_DIR, f"shard-{shard:05d}"))
    return table.num_rows


class ShardTracker:
    """Driver side: counts the parts reported per shard (a repeated report, from a retried task, counts once)
    and says when a shard has all of them."""

    def __init__(self, plan: EmbedPlan) -> None:
        self.missing: dict[int, set[int]] = {s: set() for s in plan.todo}
        for chunk in plan.chunks:  # one pass: a million-video plan has thousands of shards and chunks
            self.missing[chunk.shard].add(chunk.start)
        self.videos = self.failures = 0

    def add(self, result: ChunkResult) -> bool:
        """Record one part; True when this completed its shard."""
        missing = self.missing.get(result.shard)
        if missing is None or result.start not in missing:
            return False
        missing.discard(result.start)
        self.videos, self.failures = self.videos + result.videos, self.failures + result.failures
        return not missing

    def incomplete(self) -> list[int]:
        return sorted(s for s, m in self.missing.items() if m)


def finish_embedding(plan: EmbedPlan, tracker: ShardTracker) -> EmbedSummary:
    """After every shard is merged: one failures table for the store, and the summary."""
    if tracker.incomplete():
        raise RuntimeError(f"embedding ended with shards {tracker.incomplete()} incomplete; rerun to finish them")
    # Parts left by a run killed between writing a shard and clearing its parts; parts of shards still
    # unfinished (beyond ``max_shards``) are kept for the next run.
    done = finished_shards(plan.root)
    for folder in {storage.parent(p) for p in storage.list_files(storage.join(plan.root, PARTS_DIR), recursive=True)}:
        if int(storage.name(folder)[len("shard-"):]) in done:
            storage.delete(folder)
    n_fail = merge_failures(plan.root)
    n_good = sum(pq.read_metadata(p, filesystem=fs).num_rows
                 for fs, p in (storage.filesystem(s) for s in storage.list_files(plan.root, "shard-*.parquet")))
    return EmbedSummary(plan.root, len(plan.todo), plan.skipped, n_good, n_fail)


def merge_failures(root: Location) -> int:
    """Collect per-shard failure files into ``failures.parquet``; returns the number of failed videos."""
    parts = storage.list_files(storage.join(root, "failures"), "shard-*.parquet")
    table = pa.concat_tables([read_table(p) for p in parts]) if parts else FAILURE_SCHEMA.empty_table()
    write_table(storage.join(root, "failures.parquet"), table)
    return table.num_rows


def encode_records(backbone: ClipBackbone, records: list[dict[str, Any]], *, patch_grid: int) -> None:
    """Add ``frames`` (and ``patches``) features to the decoded records in place; failures are left alone."""
    ok = [r for r in records if not r.get("error")]
    if not ok:
        return
    frames, patches = encode_clips(backbone, [r["clip"] for r in ok], patch_grid=patch_grid)
    for i, r in enumerate(ok):
        r["frames"] = frames[i]
        r["patches"] = None if patches is None else patches[i]


def embed_manifest(config: EmbedConfig, *, progress: bool = True, max_shards: int | None = None) -> EmbedSummary:
    """Embed every video of the manifest into ``config.out`` in this process (threads decode, one encoder).

    The same chunks, parts and merges as the Ray job, one chunk at a time. Finished shards and parts are
    skipped, so an interrupted run resumes; ``max_shards`` stops after that many new shards (used to test
    resumption).
    """
    from tqdm.auto import tqdm

    backbone = load_backbone(config)
    plan = plan_embedding(config, backbone, max_shards=max_shards)
    tracker = ShardTracker(plan)
    for shard in plan.complete_shards():
        merge_shard(plan.root, shard, plan.parts[shard])
    threads = config.decode_threads or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(threads) as pool, \
            tqdm(total=sum(c.stop - c.start for c in plan.chunks), desc="embed", unit="video", disable=not progress) as bar:
        for chunk in plan.chunks:
            if tracker.add(write_chunk(chunk, decode_chunk(chunk, config, map_fn=pool.map), backbone, config)):
                merge_shard(plan.root, chunk.shard, plan.parts[chunk.shard])
            bar.update(chunk.stop - chunk.start)
    return finish_embedding(plan, tracker)
