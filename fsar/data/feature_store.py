"""Feature store: per-video frame features in Parquet shards plus ``store.json``, on a local disk or object
storage (``s3://``, ``gs://``: every path here goes through ``fsar.storage``).

Layout: ``<root>/store.json`` (what produced the features: backbone, weights, frames, dims, sampling)
and ``<root>/shard-NNNNN.parquet``, one per fixed chunk of the manifest. Embed workers write parts
(``parts/shard-NNNNN/rows-A-B.*.parquet``) and a merge joins a shard's parts into its shard file, which
appears whole or not at all — so a rerun skips exactly the finished shards and a reader never sees half
a shard. Per row: ``video_id, label, class_name, split, num_frames, frame_indices`` and the
features as raw little-endian fp16 bytes: ``frames`` (T×D) and optionally ``patches`` (T×g×g×D).
When the backbone has a text tower, ``<root>/class_text.parquet`` holds each class name's text
embedding (``label, class_name, template, embedding`` fp32 bytes, E = D), for methods that read text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fsar import storage
from fsar.data.feature_columns import FeatureStoreError, fixed_width_values, frame_indices
from fsar.storage import Location

STORE_VERSION = 1
View = Literal["pooled", "grid", "patches"]
CLASS_TEXT_FILE = "class_text.parquet"

ROW_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("num_frames", pa.int64()),
        pa.field("frame_indices", pa.list_(pa.int32())),
        pa.field("frames", pa.binary(), nullable=False),
        pa.field("patches", pa.binary()),
    ]
)


@dataclass(frozen=True)
class StoreMeta:
    """What produced a store; a job that expects other features refuses it up front."""

    backbone: str  # open_clip model name
    pretrained: str | None  # weights tag or checkpoint path; None = random init
    frames: int  # T: frames sampled per video
    embed_dim: int  # D: pooled embedding size (patches share it)
    patch_grid: int  # g: stored patch grid side after pooling; 0 = no patches stored
    image_size: int  # pixels the backbone saw
    init_seed: int | None = None  # seed of a random-init backbone (None when weights were loaded)
    sampling: str = "segment-centre"  # frame sampling at embedding time
    manifest: str = ""  # manifest the store was built from
    shard_size: int = 256  # manifest rows per shard
    version: int = STORE_VERSION  # store layout version
    code_version: str = ""  # fsar version that wrote it
    created: float = field(default_factory=time.time)  # unix time

    @property
    def default_view(self) -> View:
        """Which per-frame vector frame methods get by default: the pooled frame embedding, as in the literature,
        whatever else the store holds (the flattened patch grid is opt-in: ``view=grid``)."""
        return "pooled"

    def view_dim(self, view: View) -> int:
        """Size of the last feature axis of ``view`` (patches keep the grid as axes, so it is D)."""
        return self.embed_dim * (self.patch_grid**2 if view == "grid" else 1)

    def view_for(self, input_kind: str, requested: str = "auto") -> View:
        """The view a method of ``input_kind`` reads: frames get ``requested`` (auto = default_view);
        patch methods get the patch grid, or, when asked for (``pooled``), the pooled embedding as a 1×1 grid. A
        store without a patch grid is refused for a patch method that did not ask for that: its spatial modelling
        would run on one position without a word. ``grid`` means the patch grid for both: flattened per frame for
        frame methods, as a grid for patch methods, so one ``data.view=grid`` serves a job (the demo, a
        comparison) that trains both kinds."""
        if input_kind == "patches":
            if requested not in ("auto", "patches", "pooled", "grid"):
                raise FeatureStoreError(f"a patches method reads view 'patches' or 'pooled', not {requested!r}")
            if requested != "pooled" and self.patch_grid == 0:
                raise FeatureStoreError(
                    "this store holds no patch grid (it was embedded without --patch-grid), and this method models "
                    "space on one: embed again with --patch-grid 4 (or another G), or set data.view=pooled to read "
                    "the pooled embedding as a 1x1 grid on purpose")
            return "patches" if requested in ("auto", "grid") else requested  # type: ignore[return-value]
        if input_kind != "frames":
            raise FeatureStoreError(f"a feature store holds frame and patch features, not {input_kind!r} inputs; "
                                    "train this method end to end from a manifest")
        if requested == "patches":
            raise FeatureStoreError("view 'patches' is for patch-grid methods; frame methods read 'pooled' or 'grid'")
        return self.default_view if requested == "auto" else requested  # type: ignore[return-value]


def shard_path(root: str | Path, shard: int) -> Location:
    return storage.join(root, f"shard-{shard:05d}.parquet")


def finished_shards(root: str | Path) -> set[int]:
    """Shard numbers whose files are complete (a shard file appears whole or not at all)."""
    return {int(storage.name(p)[len("shard-"):-len(".parquet")]) for p in storage.list_files(root, "shard-*.parquet")}


def write_table(location: str | Path, table: pa.Table) -> None:
    """Write a Parquet file atomically, locally or on object storage."""
    with storage.open_output(location) as f:
        pq.write_table(table, f)


def read_table(location: str | Path, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(location)
    return pq.read_table(path, columns=columns, filesystem=fs)


def shard_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows with the ROW_SCHEMA keys (feature arrays of any float dtype) → a table of the store's schema."""
    out = []
    for r in rows:
        r = dict(r)
        r["frames"] = np.ascontiguousarray(r["frames"], dtype="<f2").tobytes()
        if r.get("patches") is not None:
            r["patches"] = np.ascontiguousarray(r["patches"], dtype="<f2").tobytes()
        else:
            r["patches"] = None
        r["frame_indices"] = [int(i) for i in r.get("frame_indices", [])]
        out.append(r)
    return pa.Table.from_pylist(out, schema=ROW_SCHEMA)


def write_shard(root: str | Path, shard: int, rows: Iterable[Mapping[str, Any]]) -> Location:
    """Write one shard atomically. Each row has the ROW_SCHEMA keys; arrays are converted to fp16 bytes."""
    path = shard_path(root, shard)
    write_table(path, shard_table(rows))
    return path


def write_meta(root: str | Path, meta: StoreMeta) -> None:
    storage.write_text(storage.join(root, "store.json"), json.dumps(dataclasses.asdict(meta), indent=2))


def damaged(root: str | Path, exc: Exception) -> FeatureStoreError:
    """The error for a shard that does not read: what pyarrow said (it names the file) and the fix."""
    return FeatureStoreError(f"a shard of {root} does not read ({str(exc)[:160]}): `fsar store check {root}` names "
                             "the damaged shards, and rerunning the `fsar embed` that built the store with --repair "
                             "re-embeds exactly those")


def read_meta(root: str | Path) -> StoreMeta:
    path = storage.join(root, "store.json")
    if not storage.is_file(path):
        raise FeatureStoreError(f"{root} is not a feature store (no store.json); build one with `fsar embed`")
    try:
        data = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeatureStoreError(f"{path} does not read ({exc}): the store's metadata is damaged; delete it and "
                                "rerun the `fsar embed` that built the store with the same settings (finished shards "
                                "are kept), or embed into a new folder") from None
    if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
        data = data if isinstance(data, dict) else {}
        raise FeatureStoreError(f"{root}: store version {data.get('version')} but this fsar reads {STORE_VERSION}; re-embed")
    known = {f.name for f in dataclasses.fields(StoreMeta)}
    return StoreMeta(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SplitFeatures:
    """The videos of one split: ids, class labels and names, and features ``(N, T, F)`` fp16."""

    video_ids: list[str]
    labels: np.ndarray
    class_names: dict[int, str]
    features: np.ndarray
    frame_indices: np.ndarray | None = None  # (N, T) decoded frame number of each sampled frame; -1 = not recorded


class FeatureStore:
    """Read side of a store: metadata checks and per-split feature arrays."""

    def __init__(self, root: str | Path) -> None:
        self.root = storage.as_location(root)
        self.meta = read_meta(self.root)
        self._table: pa.Table | None = None

    def check(self, *, backbone: str | None = None, pretrained: str | None = None, frames: int | None = None,
              view: View | None = None) -> None:
        """Refuse a store that does not hold what a job was configured for, saying how to fix it."""
        m = self.meta
        if backbone is not None and backbone != m.backbone:
            raise FeatureStoreError(
                f"feature store {self.root} was built with backbone {m.backbone!r} but the job expects "
                f"{backbone!r}: re-embed with --backbone {backbone}, or set backbone={m.backbone} in the job"
            )
        if pretrained is not None and pretrained != m.pretrained:
            raise FeatureStoreError(
                f"feature store {self.root} holds {m.backbone} features from weights {m.pretrained!r}, "
                f"the job expects {pretrained!r}: re-embed or change the job's pretrained setting"
            )
        if frames is not None and frames != m.frames:
            raise FeatureStoreError(f"feature store {self.root} has {m.frames} frames per video, the job expects {frames}")
        if view in ("grid", "patches") and m.patch_grid == 0:
            raise FeatureStoreError(f"feature store {self.root} holds no patch grid; re-embed with --patch-grid 4")

    def _shards(self) -> list[str]:
        """The shard files as paths on ``self._fs``."""
        paths = storage.list_files(self.root, "shard-*.parquet")
        if not paths:
            raise FeatureStoreError(f"feature store {self.root} has no shards; the embed job did not finish")
        return [storage.filesystem(p)[1] for p in paths]

    @property
    def _fs(self) -> Any:
        return storage.filesystem(self.root)[0]

    @contextlib.contextmanager
    def _open(self, path: str) -> Iterator[pq.ParquetFile]:
        """One shard (a path on ``self._fs``), read inside the block and closed after it; a shard that does not read
        (truncated, damaged) is named, with the fix."""
        try:
            with pq.ParquetFile(self._fs.open_input_file(path)) as parquet:
                yield parquet
        except (pa.ArrowInvalid, OSError) as exc:
            raise damaged(self.root, RuntimeError(f"{path}: {exc}")) from None

    def _dataset(self) -> Any:
        import pyarrow.dataset as pads

        return pads.dataset(self._shards(), format="parquet", filesystem=self._fs)

    def _read(self, columns: list[str] | None = None) -> pa.Table:
        try:
            return self._dataset().to_table(columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise damaged(self.root, exc) from None

    @property
    def table(self) -> pa.Table:
        """Every row and column of every shard, for inspection (read once, then cached). Jobs never read it:
        ``load_split`` reads one split's rows and one feature column."""
        if self._table is None:
            self._table = self._read()
        return self._table

    def split_labels(self, split: str) -> tuple[np.ndarray, dict[int, str]]:
        """Class labels ``(N,)`` and label → name of one split, reading no feature bytes (up-front checks)."""
        return self._labels(self._split_rows(self._read(["label", "class_name", "split"]), split))

    def _split_rows(self, table: pa.Table, split: str) -> pa.Table:
        rows = table.filter(pa.compute.equal(table["split"], split))
        if rows.num_rows == 0:
            present = sorted(set(table["split"].to_pylist()))
            raise FeatureStoreError(f"feature store {self.root} has no videos in split {split!r} (has {present})")
        return rows

    @staticmethod
    def _labels(rows: pa.Table) -> tuple[np.ndarray, dict[int, str]]:
        labels = np.asarray(rows["label"].to_pylist(), dtype=np.int64)
        return labels, dict(zip(labels.tolist(), rows["class_name"].to_pylist(), strict=True))

    def splits(self) -> list[str]:
        return sorted(set(self._read(["split"])["split"].to_pylist()))

    def load_split(self, split: str, *, view: View | None = None, as_grid: bool = False,
                   allocate: Callable[[tuple[int, ...]], np.ndarray] | None = None) -> SplitFeatures:
        """Features of one split, fp16: ``(N, T, D)`` pooled, ``(N, T, g·g·D)`` grid (flattened per frame)
        or ``(N, T, g, g, D)`` patches. ``as_grid`` gives the pooled view as a 1×1 grid ``(N, T, 1, 1, D)``.

        Reads only that split's rows and only the one feature column the view needs, one Parquet row group
        at a time: a first pass reads the ``split`` column alone, the second decodes the feature column of
        the row groups that hold the split and copies their rows into one preallocated array (``allocate``
        makes it, given its shape: a shared memory map, say; default ``np.empty``). The memory that grows
        with the data is one copy of the features read, plus one row group of the store, whatever else the
        store holds."""
        view = view or self.meta.default_view
        self.check(view=view)
        m = self.meta
        column = "frames" if view == "pooled" else "patches"
        width = m.frames * m.view_dim("pooled" if view == "pooled" else "grid")
        # A Parquet reader keeps the last column chunk it decoded: each file is opened for one step and closed.
        shards = self._shards()
        masks = []
        for path in shards:
            with self._open(path) as parquet:
                masks.append([_equals(parquet.read_row_group(g, columns=["split"], use_threads=False)["split"], split)
                              for g in range(parquet.metadata.num_row_groups)])
        n = int(sum(mask.sum() for groups in masks for mask in groups))
        if n == 0:
            raise FeatureStoreError(f"feature store {self.root} has no videos in split {split!r} (has {self.splits()})")
        features = (allocate or (lambda shape: np.empty(shape, dtype="<f2")))((n, width))
        parts, filled = [], 0
        pool = pa.default_memory_pool()
        for path, groups in zip(shards, masks, strict=True):
            if not any(mask.any() for mask in groups):
                continue
            with self._open(path) as parquet:
                for g, mask in enumerate(groups):
                    if mask.any():
                        rows = parquet.read_row_group(g, columns=["video_id", "label", "class_name", "frame_indices",
                                                                  column], use_threads=False).filter(pa.array(mask))
                        features[filled : filled + rows.num_rows] = fixed_width_values(
                            rows.column(column).combine_chunks(), width, self.root)
                        filled += rows.num_rows
                        parts.append(rows.drop_columns([column]))
                        del rows
            pool.release_unused()  # Arrow's allocator would keep the decoded pages for reuse
        table = pa.concat_tables(parts)
        features = self._shaped(features, view, as_grid)
        labels, names = self._labels(table)
        return SplitFeatures(table["video_id"].to_pylist(), labels, names, features,
                             frame_indices=frame_indices(table, m.frames))

    def _shaped(self, flat: np.ndarray, view: View, as_grid: bool) -> np.ndarray:
        """Rows of a feature column ``(n, T·F)`` as the view's per-video arrays (see ``load_split``)."""
        m, n = self.meta, flat.shape[0]
        if view == "patches":
            return flat.reshape(n, m.frames, m.patch_grid, m.patch_grid, m.embed_dim)
        if as_grid and view == "pooled":
            return flat.reshape(n, m.frames, 1, 1, m.embed_dim)
        return flat.reshape(n, m.frames, -1)

    def shard_files(self) -> list[Location]:
        """The store's shard files, in shard order: units of work for a job that reads the store piece by piece."""
        return storage.list_files(self.root, "shard-*.parquet")

    def read_shard(self, location: Location, *, view: View, as_grid: bool = False) -> tuple[list[str], np.ndarray]:
        """One shard's video ids and features in ``view`` (shapes as ``load_split``), every split: what a job
        that scores a whole store reads at a time."""
        self.check(view=view)
        column = "frames" if view == "pooled" else "patches"
        width = self.meta.frames * self.meta.view_dim("pooled" if view == "pooled" else "grid")
        with self._open(storage.filesystem(location)[1]) as parquet:
            rows = parquet.read(columns=["video_id", column], use_threads=False)
        flat = fixed_width_values(rows.column(column).combine_chunks(), width, self.root)
        return rows["video_id"].to_pylist(), self._shaped(flat.copy(), view, as_grid)

    def has_class_text(self) -> bool:
        return storage.is_file(storage.join(self.root, CLASS_TEXT_FILE))

    def text_dim(self) -> int | None:
        """Size E of the stored class-name embeddings, None when the store has none (reads the schema-sized
        first row only)."""
        if not self.has_class_text():
            return None
        fs, path = storage.filesystem(storage.join(self.root, CLASS_TEXT_FILE))
        with fs.open_input_file(path) as f:
            first = pq.ParquetFile(f).read_row_group(0, columns=["embedding"])
        return len(first["embedding"][0].as_py()) // 4  # fp32 bytes

    def class_text(self) -> np.ndarray | None:
        """Class-name text embeddings as a table indexed by label, ``(max_label + 1, E)`` fp32 (rows of
        labels without text are zero), or None when the store has none."""
        if not self.has_class_text():
            return None
        table = read_table(storage.join(self.root, CLASS_TEXT_FILE))
        labels = np.asarray(table["label"].to_pylist(), dtype=np.int64)
        vectors = np.stack([np.frombuffer(b, dtype="<f4") for b in table["embedding"].to_pylist()])
        out = np.zeros((int(labels.max()) + 1, vectors.shape[1]), dtype=np.float32)
        out[labels] = vectors
        return out


def _equals(column: pa.ChunkedArray, value: str) -> np.ndarray:
    """Boolean mask of the rows whose string ``column`` equals ``value``."""
    return pc.equal(column, value).to_numpy(zero_copy_only=False).astype(bool)


def write_class_text(root: str | Path, labels: Iterable[int], class_names: Iterable[str], embeddings: np.ndarray,
                     *, template: str) -> Location:
    """Write ``class_text.parquet`` atomically: one row per class, embedding ``(E,)`` as fp32 bytes."""
    vectors = np.ascontiguousarray(embeddings, dtype="<f4")
    labels, names = [int(v) for v in labels], list(class_names)
    if not len(labels) == len(names) == len(vectors):
        raise ValueError(f"{len(labels)} labels, {len(names)} names and {len(vectors)} embeddings")
    table = pa.table({
        "label": pa.array(labels, pa.int64()), "class_name": pa.array(names, pa.string()),
        "template": pa.array([template] * len(labels), pa.string()),
        "embedding": pa.array([v.tobytes() for v in vectors], pa.binary()),
    })
    path = storage.join(root, CLASS_TEXT_FILE)
    write_table(path, table)
    return path
