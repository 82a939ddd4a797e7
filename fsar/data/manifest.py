"""Manifests: one Parquet table listing every video of a dataset.

Columns (see DESIGN "Data flow"): ``video_id`` (str, unique), ``path`` (str; absolute, or relative to
the manifest file's folder), ``label`` (int64, global class index), ``class_name`` (str), ``split``
(``train``/``val``/``test``) and ``num_frames`` (int64, nullable: known for generated videos; left null
for real ones, whose length ``fsar embed`` learns when it decodes them, so building a manifest never
opens a video and a million files take seconds: ``python -m pipelines.bench.manifest``).

Three ways to build one:

- ``fsar.data.folder_tree.from_folder_tree``: ``videos/<split>/<class>/<file>`` or
  ``videos/<class>/<file>`` (whole classes then go to train/val/test by a seeded shuffle);
- ``fsar.data.split_lists.from_split_lists``: the standard few-shot split lists (shipped in ``fsar/data/splits``),
  looking each listed ``class/video_id`` up under a video root;
- :func:`from_records` here: row dicts (the synthetic generator).

This module holds the table itself, its I/O, validation and summary, and the helpers both builders share.

Labels are global class indices, deterministic: classes of the train split first, then val, then
test, each in natural order of their names (digit runs compare as numbers, so ``val2`` < ``val10``).
:func:`validate_manifest` checks a table before it is written; :func:`summarize` prints one.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fsar import storage
from fsar.storage import Location

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("num_frames", pa.int64(), nullable=True),
    ]
)

# Lower-case suffixes recognised as videos. The order is a preference: when one folder holds the same
# video in two containers (``a.mp4`` and ``a.avi``), the split-list lookup takes the earlier one.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv", ".3gp",
)

DEFAULT_CLASS_SPLIT = (0.64, 0.12, 0.24)

SAMPLE_SIZE = 5  # how many offending names an error message or report lists


class ManifestError(ValueError):
    """A manifest is malformed or inconsistent; the message names the rows and the fix."""


# ---------------------------------------------------------------- table I/O
def manifest_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a manifest table from row dicts (``num_frames`` optional)."""
    rows = [dict(r) for r in records]
    for r in rows:
        r.setdefault("num_frames", None)
    missing = [c for c in MANIFEST_SCHEMA.names if c != "num_frames" and rows and c not in rows[0]]
    if missing:
        raise ManifestError(f"manifest records lack key(s) {missing}; each row needs {list(MANIFEST_SCHEMA.names)}")
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def manifest_columns(
    video_id: Sequence[str] | pa.Array,
    path: Sequence[str] | pa.Array,
    label: Sequence[int] | pa.Array,
    class_name: Sequence[str] | pa.Array,
    split: Sequence[str] | pa.Array,
    num_frames: Sequence[int | None] | pa.Array | None = None,
) -> pa.Table:
    """Build a manifest table from its columns (lists or Arrow arrays of equal length): the same table as
    :func:`manifest_table` of the rows, without a dict per row. ``num_frames`` None: all null."""
    columns = [video_id, path, label, class_name, split]
    n = len(video_id)
    if any(len(c) != n for c in columns) or (num_frames is not None and len(num_frames) != n):
        raise ManifestError(f"manifest columns differ in length: {[len(c) for c in columns]}")
    arrays = [c if isinstance(c, pa.Array | pa.ChunkedArray) else pa.array(c, type=f.type)
              for c, f in zip(columns, MANIFEST_SCHEMA, strict=False)]
    frames = pa.nulls(n, pa.int64()) if num_frames is None else (
        num_frames if isinstance(num_frames, pa.Array | pa.ChunkedArray) else pa.array(num_frames, pa.int64()))
    return pa.Table.from_arrays([*arrays, frames], names=MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


# The synthetic generator's name for the same thing: its rows are already complete.
from_records = manifest_table


MANIFEST_ROW_GROUP = 8192  # rows per Parquet row group: a worker reading one chunk of rows decodes ~this many


def write_manifest(table_or_records: pa.Table | Iterable[Mapping[str, Any]], path: str | Path) -> Location:
    """Write a manifest atomically to ``path`` (Parquet; a local path or a URI) and return it (no validation here).

    Row groups of ``MANIFEST_ROW_GROUP`` rows let an embed worker read its own rows of a million-row manifest
    (``read_manifest_rows``) without reading the rest."""
    table = table_or_records if isinstance(table_or_records, pa.Table) else manifest_table(table_or_records)
    if "num_frames" not in table.column_names:
        table = table.append_column("num_frames", pa.nulls(table.num_rows, pa.int64()))
    table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    with storage.open_output(path) as f:
        pq.write_table(table, f, row_group_size=MANIFEST_ROW_GROUP)
    return storage.as_location(path)


def _manifest_file(path: str | Path) -> pq.ParquetFile:
    if not storage.is_file(path):
        raise ManifestError(f"manifest {path} does not exist; build one with `fsar manifest` or `fsar synth`")
    fs, inner = storage.filesystem(path)
    try:
        parquet = pq.ParquetFile(fs.open_input_file(inner))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"manifest {path} is not a Parquet file that reads ({str(exc)[:100]}): it is truncated "
                            "or not a manifest; rebuild it with `fsar manifest` or `fsar synth`") from None
    missing = [c for c in MANIFEST_SCHEMA.names if c not in parquet.schema_arrow.names and c != "num_frames"]
    if missing:
        raise ManifestError(f"manifest {path} lacks column(s) {missing}; rebuild it with `fsar manifest`")
    return parquet


def _conform(table: pa.Table, path: str | Path, resolve_paths: bool) -> pa.Table:
    if "num_frames" not in table.column_names:
        table = table.append_column("num_frames", pa.nulls(table.num_rows, pa.int64()))
    table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    if resolve_paths:
        root = storage.parent(storage.absolute(path))
        i = table.schema.get_field_index("path")
        table = table.set_column(i, MANIFEST_SCHEMA.field("path"),
                                 pa.array([resolve_video_path(root, p) for p in table["path"].to_pylist()], pa.string()))
    return table


def resolve_video_path(root: str | Path, path: str) -> str:
    """A manifest's video path as a local path or URI: absolute paths and URIs as written, relative ones
    against the manifest's folder ``root``."""
    if os.path.isabs(path) or "://" in path:
        return path
    if storage.is_uri(root):
        scheme, rest = str(root).split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    # normpath folds "../" without a stat per row; symlinks inside the video tree stay as written.
    return os.path.normpath(os.path.join(root, path))


def read_manifest(path: str | Path, *, resolve_paths: bool = True) -> pa.Table:
    """Read a manifest (a local path or a URI); relative video paths are resolved against its folder."""
    return _conform(_manifest_file(path).read(), path, resolve_paths)


def manifest_rows(path: str | Path) -> int:
    """Number of videos in a manifest, from its footer alone."""
    return _manifest_file(path).metadata.num_rows


def read_manifest_rows(path: str | Path, start: int, stop: int) -> pa.Table:
    """Rows ``[start, stop)`` of a manifest, paths resolved, reading only the row groups that hold them."""
    parquet = _manifest_file(path)
    meta, groups, first, offset = parquet.metadata, [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if offset < stop and offset + n > start:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return _conform(parquet.schema_arrow.empty_table(), path, resolve_paths=False)
    table = parquet.read_row_groups(groups).slice(start - first, stop - start)
    return _conform(table, path, resolve_paths=True)


def manifest_classes(path: str | Path) -> list[tuple[int, str]]:
    """Every ``(label, class_name)`` of a manifest, sorted, reading those two columns batch by batch (memory
    grows with the classes, not the videos)."""
    classes: set[tuple[int, str]] = set()
    for batch in _manifest_file(path).iter_batches(batch_size=65536, columns=["label", "class_name"]):
        pairs = pa.Table.from_batches([batch]).group_by(["label", "class_name"]).aggregate([])
        classes.update(zip(pairs["label"].to_pylist(), pairs["class_name"].to_pylist(), strict=True))
    return sorted(classes)


# ---------------------------------------------------------------- shared helpers
def natural_key(name: str) -> tuple[Any, ...]:
    # re.split with a capturing group alternates text (even positions) and digit runs (odd positions),
    # so two keys never compare a str with an int; the raw name breaks ties ("a01" vs "a1").
    parts = re.split(r"(\d+)", name)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def assign_labels(classes_by_split: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Global label per class name: train classes first, then val, then test, natural order inside."""
    labels: dict[str, int] = {}
    for split in SPLITS:
        for name in sorted(set(classes_by_split.get(split, ())), key=natural_key):
            # A class in two splits keeps its first label; validate_manifest reports the leak.
            labels.setdefault(name, len(labels))
    return labels


def normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    exts = frozenset(("." + e.lstrip(".")).lower() for e in extensions)
    if not exts:
        raise ManifestError("no video extensions given; pass e.g. extensions=('.mp4', '.webm')")
    return exts


def video_suffix(name: str, exts: frozenset[str]) -> str | None:
    """The video suffix of a file name (case-insensitive), or None when it is not a video."""
    dot = name.rfind(".")
    if dot <= 0:  # no suffix, or a dot-file
        return None
    suffix = name[dot:].lower()
    return suffix if suffix in exts else None


def sample_text(items: Sequence[str], n: int = SAMPLE_SIZE) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", … ({len(items)} in all)" if len(items) > n else "")


def check_video_root(videos: Path) -> Path:
    videos = Path(videos).expanduser()
    if not videos.is_dir():
        raise ManifestError(f"video folder {videos} does not exist or is not a folder; check --videos")
    return videos.resolve()



# ---------------------------------------------------------------- validation and summary
PATH_CHUNK = 4096  # paths one thread checks at a time (and the progress bar's step)


def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _count_empty(column: pa.ChunkedArray) -> int:
    """Rows that are null, or the empty string in a string column."""
    empty = pc.is_null(column)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        empty = pc.or_(empty, pc.fill_null(pc.equal(column, ""), False))
    return int(pc.sum(empty).as_py() or 0)


def duplicate_values(column: pa.ChunkedArray) -> list[Any]:
    """Values (not null or empty) occurring more than once, sorted."""
    counts = pc.value_counts(column)
    if len(counts) == len(column):
        return []
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
    return sorted(v for v in repeated if v)


def _unreadable_chunk(column: pa.ChunkedArray, start: int, base: Path) -> tuple[int, list[str]]:
    """(local paths, unreadable ones) among rows ``start .. start + PATH_CHUNK`` of the path column."""
    local = [p if os.path.isabs(p) else str(base / p)
             for p in column.slice(start, PATH_CHUNK).to_pylist() if p and "://" not in p]
    return len(local), [p for p in local if not _readable(p)]


def unreadable_paths(table: pa.Table, *, root: Path | None = None, progress: bool = False) -> tuple[int, list[str]]:
    """(local paths, the ones that are not readable files, in row order) of a manifest's ``path`` column.

    Relative paths are taken from ``root`` (default: the working folder); ``scheme://`` URIs are skipped.
    Threads check chunks of :data:`PATH_CHUNK` paths; ``progress`` shows a bar on a terminal.
    """
    from tqdm.auto import tqdm

    base = Path.cwd() if root is None else Path(root)
    column = table["path"]
    starts = range(0, len(column), PATH_CHUNK)
    local, bad = 0, []
    # Threads overlap the stat latency of network file systems; local disks lose nothing by it.
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(column) // 2000 + 1))) as pool, \
            tqdm(total=len(column), desc="check paths", unit=" videos", disable=None if progress else True) as bar:
        for start, (n, bad_here) in zip(starts, pool.map(lambda s: _unreadable_chunk(column, s, base), starts),
                                        strict=True):
            local += n
            bad.extend(bad_here)
            bar.update(min(PATH_CHUNK, len(column) - start))
    return local, bad


def validate_manifest(table: pa.Table, *, check_paths: bool = True, root: Path | None = None,
                      progress: bool = False) -> None:
    """Raise a ManifestError listing every problem found, or return None for a sound manifest.

    Checks: required columns, empty table, empty values, unknown splits, duplicate ``video_id``s, a
    class in two splits (few-shot classes must be disjoint), a label with two class names or a class
    with two labels, and (``check_paths``) that every local path is a readable file; relative paths
    are taken from ``root`` (default: the working folder) and ``scheme://`` URIs are not checked.
    ``progress`` shows a bar for the path check on a terminal.

    The checks run on the table's columns (Arrow kernels, then Python over the distinct
    (class, split, label) triples only), so a million rows take seconds, not a copy of every row.
    """
    absent = [c for c in MANIFEST_SCHEMA.names if c != "num_frames" and c not in table.column_names]
    if absent:
        raise ManifestError(f"manifest lacks column(s) {absent}; expected {list(MANIFEST_SCHEMA.names)}")
    if table.num_rows == 0:
        raise ManifestError("manifest is empty: no videos; check --videos (and --splits/--benchmark)")
    problems: list[str] = []

    for c in ("video_id", "path", "label", "class_name", "split"):
        empty = _count_empty(table[c])
        if empty:
            problems.append(f"{empty} row(s) have no {c}")

    # Distinct (class, split, label) triples with their row counts, in order of first appearance
    # (one thread keeps that order), stand in for the rows in every check below but the last two.
    triples = table.select(["class_name", "split", "label"]).group_by(
        ["class_name", "split", "label"], use_threads=False).aggregate([([], "count_all")])
    names, splits, labels, counts = (triples[c].to_pylist() for c in ("class_name", "split", "label", "count_all"))

    unknown: Counter[Any] = Counter()
    for s, n in zip(splits, counts, strict=True):
        if s not in SPLITS and s:
            unknown[s] += n
    if unknown:
        problems.append(f"unknown split value(s) {dict(unknown)}; split is one of {', '.join(SPLITS)}")

    dup = duplicate_values(table["video_id"])
    if dup:
        problems.append(f"{len(dup)} duplicate video_id(s): {sample_text(dup)}")

    splits_of: dict[str, set[str]] = defaultdict(set)
    names_of: dict[Any, set[str]] = defaultdict(set)
    labels_of: dict[str, set[Any]] = defaultdict(set)
    for name, split, label in zip(names, splits, labels, strict=True):
        if name:
            splits_of[name].add(split)
            labels_of[name].add(label)
        if label is not None:
            names_of[label].add(name)
    leaks = sorted((n for n, s in splits_of.items() if len(s) > 1), key=natural_key)
    if leaks:
        shown = "; ".join(f"{n!r} in {', '.join(sorted(splits_of[n], key=_split_order))}" for n in leaks[:SAMPLE_SIZE])
        problems.append(f"{len(leaks)} class(es) appear in more than one split (train/val/test classes must be "
                        f"disjoint): {shown}" + (" …" if len(leaks) > SAMPLE_SIZE else ""))
    two_names = sorted(lb for lb, ns in names_of.items() if len(ns) > 1)
    if two_names:
        shown = "; ".join(f"{lb} -> {sorted(map(str, names_of[lb]))}" for lb in two_names[:SAMPLE_SIZE])
        problems.append(f"{len(two_names)} label(s) map to more than one class name: {shown}")
    two_labels = sorted((n for n, ls in labels_of.items() if len(ls) > 1), key=natural_key)
    if two_labels:
        shown = "; ".join(f"{n!r} -> {sorted(labels_of[n])}" for n in two_labels[:SAMPLE_SIZE])
        problems.append(f"{len(two_labels)} class name(s) map to more than one label: {shown}")

    if check_paths:
        local, bad = unreadable_paths(table, root=root, progress=progress)
        if bad:
            problems.append(f"{len(bad)} of {local} video path(s) do not exist or are not readable files: "
                            f"{sample_text(bad)}")

    if problems:
        raise ManifestError(f"manifest has {len(problems)} problem(s):\n- " + "\n- ".join(problems))


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), str(split))


def summarize(table: pa.Table) -> str:
    """Per split: classes, videos and the fewest/most videos of a class, as a small text table."""
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    groups = table.select(["split", "class_name"]).group_by(["split", "class_name"]).aggregate([([], "count_all")])
    for split, name, n in zip(*(groups[c].to_pylist() for c in ("split", "class_name", "count_all")), strict=True):
        per_class[split][name] += n
    lines = [f"{'split':<6} {'classes':>8} {'videos':>8} {'min/class':>10} {'max/class':>10}"]
    for split in sorted(set(SPLITS) | set(per_class), key=_split_order):
        counts = per_class.get(split, Counter())
        lo, hi = (min(counts.values()), max(counts.values())) if counts else ("-", "-")
        lines.append(f"{split:<6} {len(counts):>8} {sum(counts.values()):>8} {lo:>10} {hi:>10}")
    lines.append(f"{'total':<6} {sum(len(c) for c in per_class.values()):>8} {table.num_rows:>8}")
    return "\n".join(lines)
