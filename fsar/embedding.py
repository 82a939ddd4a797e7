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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from fsar import __version__
from fsar.atomic import atomic_path
from fsar.backbones import ClipBackbone, build_backbone
from fsar.data.feature_store import (
    CLASS_TEXT_FILE,
    ROW_SCHEMA,
    StoreMeta,
    finished_shards,
    read_meta,
    write_class_text,
    write_meta,
    write_shard,
)
from fsar.data.manifest import read_manifest
from fsar.data.transforms import centre_square, pixels_from_squares
from fsar.data.video import VideoDecodeError, load_clip

FAILURE_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("path", pa.string()), ("split", pa.string()), ("reason", pa.string())]
)


@dataclass
class EmbedConfig:
    """``fsar embed``: which videos, which encoder, what to store."""

    manifest: Path  # manifest.parquet of the videos to embed
    out: Path  # feature store folder (created; a rerun resumes it)
    backbone: str = "ViT-B-16"  # open_clip model name, or fsar-tiny (shipped, offline)
    pretrained: str = "default"  # open_clip tag, checkpoint path, "none" (random), or "default" (openai if the model has it)
    frames: int = 8  # frames sampled per video (segment centres)
    patch_grid: int = 0  # also store the patch grid average-pooled to g×g (0 = pooled embedding only)
    text_template: str = "a video of {}"  # class-name prompt for the text tower ("" = store no class text)
    batch_size: int = 32  # videos per encoder forward
    shard_size: int = 256  # manifest rows per shard (the unit of resumption)
    decode_backend: Literal["auto", "decord", "pyav"] = "auto"  # decord with PyAV fallback, or one of them
    short_video: Literal["repeat", "error"] = "repeat"  # videos shorter than `frames`: repeat frames or fail them
    init_seed: int = 0  # seed of a random-init backbone (pretrained none / fsar-tiny)
    device: str = "auto"  # cpu, cuda, or auto (cuda when available)
    engine: Literal["ray", "local"] = "ray"  # Ray Data (laptop or cluster) or this process alone
    encoder_actors: int = 0  # Ray with GPUs: encoder actors (0 = one per GPU); without GPUs tasks encode
    decode_cpus: float = 0.5  # Ray with GPUs: CPUs reserved per decode task (decoding 8 frames is light)
    decode_batch: int = 16  # Ray with GPUs: videos per decode task (fewer, larger tasks amortise Ray's cost)
    decode_threads: int = 0  # local engine: parallel decodes (0 = number of CPUs)
    mlflow: bool = True  # record the store's metadata and the failure count as an MLflow run
    mlflow_uri: str | None = None  # MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite file in the store)
    experiment: str = "fsar-embed"  # MLflow experiment name


def resolve_pretrained(backbone: str, pretrained: str) -> str | None:
    """``default`` → ``openai`` when the model has that tag, else random init; ``none`` → random init."""
    if pretrained.lower() in ("none", ""):
        return None
    if pretrained != "default":
        return pretrained
    import open_clip

    tags = [tag for model, tag in open_clip.list_pretrained() if model == backbone]
    return "openai" if "openai" in tags else (tags[0] if tags else None)


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


def clips_to_device(clips: Sequence[np.ndarray], device: torch.device) -> tuple[list[torch.Tensor], list[int]]:
    """Move uint8 clips ``(T, s_i, s_i, 3)`` of mixed sides to ``device``, one stacked tensor per side.

    Returns the tensors ``(n_side · T, s, s, 3)`` and ``order``: the clip index of each stacked clip, so
    row ``j`` of the concatenated frames belongs to clip ``order[j // T]``. For CUDA the clips are
    stacked straight into pinned host memory, so the copy is a true asynchronous DMA that overlaps with
    the work already queued on the device (from pageable memory ``non_blocking`` silently waits).
    """
    by_side: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_side.setdefault(int(clip.shape[1]), []).append(i)
    pin = device.type == "cuda"
    tensors, order = [], []
    for side, members in by_side.items():
        t = clips[members[0]].shape[0]
        host = torch.empty((len(members), t, side, side, 3), dtype=torch.uint8, pin_memory=pin)
        np.stack([clips[i] for i in members], out=host.numpy())
        tensors.append(host.to(device, non_blocking=True).reshape(len(members) * t, side, side, 3))
        order.extend(members)
    return tensors, order


@torch.no_grad()
def encode_clips(
    backbone: ClipBackbone, clips: Sequence[np.ndarray], *, patch_grid: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode uint8 clips → frame features ``(B, T, D)`` and optional patches ``(B, T, g, g, D)``, fp16.

    ``clips`` are B videos' centre squares ``(T, s_i, s_i, 3)`` (``decode_record``); sides may differ. On
    the backbone's device, in one batched step under its autocast: resize per side, normalise, encode
    (``pixels_from_squares``, then ``backbone.encode``). Features come back in the order of ``clips``.
    """
    if not clips:
        raise ValueError("no clips to encode")
    b, t = len(clips), clips[0].shape[0]
    if any(c.shape[0] != t for c in clips):
        raise ValueError(f"clips must all have {t} frames, got {sorted({c.shape[0] for c in clips})}")
    device = next(backbone.parameters()).device
    squares, order = clips_to_device(clips, device)
    # bf16 autocast on CUDA only: on a CPU bf16 matmuls are slower than fp32.
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pixels = pixels_from_squares(squares, backbone.preprocess)  # (B·T, 3, S, S), clips in `order`
        pooled, grid = backbone.encode(pixels, patches=patch_grid > 0)
    back = np.argsort(order)  # stacked position of each clip
    frames = pooled.float().reshape(b, t, -1).cpu().numpy().astype(np.float16)[back]
    if grid is None:
        return frames, None
    grid = grid.float().permute(0, 3, 1, 2)  # (BT, D, g0, g0)
    grid = F.adaptive_avg_pool2d(grid, patch_grid).permute(0, 2, 3, 1)
    patches = grid.reshape(b, t, patch_grid, patch_grid, -1).cpu().numpy().astype(np.float16)[back]
    return frames, patches


@dataclass(frozen=True)
class EmbedSummary:
    """What an embed run did: shards written now / skipped as already done, good videos, failures."""

    store: Path
    shards_written: int
    shards_skipped: int
    videos: int
    failures: int


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_backbone(config: EmbedConfig, *, device: str | None = None) -> ClipBackbone:
    """The encoder ``config`` names, built identically on the driver and on every worker."""
    return build_backbone(
        config.backbone, pretrained=resolve_pretrained(config.backbone, config.pretrained),
        device=_device(device or config.device), init_seed=config.init_seed,
    )


def store_meta_for(config: EmbedConfig, backbone: ClipBackbone) -> StoreMeta:
    d = backbone.describe()
    return StoreMeta(
        backbone=d["backbone"], pretrained=d["pretrained"], frames=config.frames, embed_dim=d["embed_dim"],
        patch_grid=config.patch_grid, image_size=d["image_size"], init_seed=d["init_seed"], manifest=str(config.manifest),
        shard_size=config.shard_size, code_version=__version__,
    )


def check_resume(root: Path, meta: StoreMeta) -> None:
    """A rerun into an existing store must use the same encoder and sampling, or the shards would mix."""
    if not (root / "store.json").is_file():
        return
    old = read_meta(root)
    for key in ("backbone", "pretrained", "init_seed", "frames", "embed_dim", "patch_grid", "shard_size"):
        if getattr(old, key) != getattr(meta, key):
            raise ValueError(
                f"{root} already holds features with {key}={getattr(old, key)!r}, this run has "
                f"{getattr(meta, key)!r}: choose another --out, or delete {root} to rebuild it"
            )


@dataclass
class EmbedPlan:
    """The shards of a manifest and which of them are still to be written."""

    root: Path
    rows: list[dict[str, Any]]  # manifest rows, paths resolved
    shard_size: int
    todo: list[int]  # shard numbers to write in this run
    skipped: int  # shards already complete before this run

    def shard_rows(self, shard: int) -> list[dict[str, Any]]:
        return self.rows[shard * self.shard_size : (shard + 1) * self.shard_size]


def plan_embedding(config: EmbedConfig, backbone: ClipBackbone, *, max_shards: int | None = None) -> EmbedPlan:
    """Check the store can be (re)written with this encoder, record store.json, list unfinished shards."""
    root = Path(config.out)
    rows = read_manifest(config.manifest).to_pylist()
    meta = store_meta_for(config, backbone)
    check_resume(root, meta)
    root.mkdir(parents=True, exist_ok=True)
    write_meta(root, meta)
    write_store_class_text(root, rows, backbone, template=config.text_template)
    n_shards = (len(rows) + config.shard_size - 1) // config.shard_size
    done = finished_shards(root)
    todo = [s for s in range(n_shards) if s not in done]
    if max_shards is not None:
        todo = todo[:max_shards]
    return EmbedPlan(root, rows, config.shard_size, todo, len(done))


def write_store_class_text(root: Path, rows: Sequence[Mapping[str, Any]], backbone: ClipBackbone, *,
                           template: str) -> None:
    """Embed every class name of the manifest with the backbone's text tower (when it has one), once."""
    if not backbone.has_text or not template or (root / CLASS_TEXT_FILE).is_file():
        return
    classes = sorted({(int(r["label"]), str(r["class_name"])) for r in rows})
    with torch.no_grad():
        vectors = backbone.encode_text([name for _, name in classes], template=template).float().cpu().numpy()
    write_class_text(root, [label for label, _ in classes], [name for _, name in classes], vectors, template=template)


class ShardAssembler:
    """Collects encoded rows and failures per shard, in any arrival order, and writes each shard (and its
    failure list) as soon as all of its videos are accounted for."""

    def __init__(self, plan: EmbedPlan) -> None:
        self.plan = plan
        self.expected = {s: len(plan.shard_rows(s)) for s in plan.todo}
        self.good: dict[int, list[dict[str, Any]]] = {s: [] for s in plan.todo}
        self.failed: dict[int, list[dict[str, Any]]] = {s: [] for s in plan.todo}
        self.seen: dict[int, set[str]] = {s: set() for s in plan.todo}
        self.written = 0
        for s in [s for s, n in self.expected.items() if n == 0]:
            self._write(s)

    def add(self, shard: int, record: Mapping[str, Any]) -> None:
        """``record`` has an ``error`` (a failure) or ``frames`` (+ optional ``patches``) features. A video
        already added is ignored: Ray retries the task of a dead worker, and a retried task can deliver
        rows that had already arrived, so each video is kept exactly once."""
        seen = self.seen.get(shard)
        if seen is None or str(record["video_id"]) in seen:
            return
        seen.add(str(record["video_id"]))
        if record.get("error"):
            self.failed[shard].append({k: record[k] for k in ("video_id", "path", "split")} | {"reason": record["error"]})
        else:
            self.good[shard].append({k: record.get(k) for k in ROW_SCHEMA.names})
        if len(self.good[shard]) + len(self.failed[shard]) == self.expected[shard]:
            self._write(shard)

    def _write(self, shard: int) -> None:
        # Failures first: the shard file is the completion marker a rerun trusts.
        write_failures(self.plan.root, shard, self.failed.pop(shard, []))
        write_shard(self.plan.root, shard, self.good.pop(shard, []))
        self.seen.pop(shard, None)
        self.written += 1

    def finish(self) -> EmbedSummary:
        if self.good:
            raise RuntimeError(f"embedding ended with shards {sorted(self.good)} incomplete; rerun to finish them")
        n_fail = merge_failures(self.plan.root)
        n_good = sum(pq.read_metadata(p).num_rows for p in self.plan.root.glob("shard-*.parquet"))
        return EmbedSummary(self.plan.root, self.written, self.plan.skipped, n_good, n_fail)


def write_failures(root: Path, shard: int, failures: Sequence[dict[str, Any]]) -> None:
    path = root / "failures" / f"shard-{shard:05d}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(list(failures), schema=FAILURE_SCHEMA), tmp)


def merge_failures(root: Path) -> int:
    """Collect per-shard failure files into ``failures.parquet``; returns the number of failed videos."""
    parts = sorted((root / "failures").glob("shard-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else FAILURE_SCHEMA.empty_table()
    with atomic_path(root / "failures.parquet") as tmp:
        pq.write_table(table, tmp)
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

    Finished shards are skipped, so an interrupted run resumes; ``max_shards`` stops after that many new
    shards (used to test resumption).
    """
    from tqdm.auto import tqdm

    backbone = load_backbone(config)
    plan = plan_embedding(config, backbone, max_shards=max_shards)
    assembler = ShardAssembler(plan)
    threads = config.decode_threads or os.cpu_count() or 1
    total = sum(len(plan.shard_rows(s)) for s in plan.todo)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool, \
            tqdm(total=total, desc="embed", unit="video", disable=not progress) as bar:
        for shard in plan.todo:
            rows = plan.shard_rows(shard)
            for start in range(0, len(rows), config.batch_size):
                batch = list(pool.map(lambda r: decode_record(r, config), rows[start : start + config.batch_size]))
                encode_records(backbone, batch, patch_grid=config.patch_grid)
                for record in batch:
                    assembler.add(shard, record)
                bar.update(len(batch))
    return assembler.finish()
