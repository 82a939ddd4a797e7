"""Manifests: one Parquet table listing every video of a dataset.

Columns (see DESIGN "Data flow"): ``video_id`` (str, unique), ``path`` (str; absolute, or relative to
the manifest file's folder), ``label`` (int64, global class index), ``class_name`` (str), ``split``
(``train``/``val``/``test``) and ``num_frames`` (int64, nullable: known for generated videos).

Three ways to build one:

- :func:`from_folder_tree`: ``videos/<split>/<class>/<file>`` or ``videos/<class>/<file>`` (whole
  classes then go to train/val/test by a seeded shuffle);
- :func:`from_split_lists`: the standard few-shot split lists (``shared/splits``, registry
  :data:`BENCHMARKS`), looking each listed ``class/video_id`` up under a video root;
- :func:`from_records`: row dicts (the synthetic generator).

Labels are global class indices, deterministic: classes of the train split first, then val, then
test, each in natural order of their names (digit runs compare as numbers, so ``val2`` < ``val10``).
:func:`validate_manifest` checks a table before it is written; :func:`summarize` prints one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fsar.atomic import atomic_path

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

_SAMPLE = 5  # how many offending names an error message or report lists


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


# The synthetic generator's name for the same thing: its rows are already complete.
from_records = manifest_table


def write_manifest(table_or_records: pa.Table | Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write a manifest atomically to ``path`` (Parquet) and return the path (no validation here)."""
    table = table_or_records if isinstance(table_or_records, pa.Table) else manifest_table(table_or_records)
    if "num_frames" not in table.column_names:
        table = table.append_column("num_frames", pa.nulls(table.num_rows, pa.int64()))
    table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(path: str | Path, *, resolve_paths: bool = True) -> pa.Table:
    """Read a manifest; relative video paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; build one with `fsar manifest` or `fsar synth`")
    table = pq.read_table(path)
    missing = [c for c in MANIFEST_SCHEMA.names if c not in table.column_names and c != "num_frames"]
    if missing:
        raise ManifestError(f"manifest {path} lacks column(s) {missing}; rebuild it with `fsar manifest`")
    if "num_frames" not in table.column_names:
        table = table.append_column("num_frames", pa.nulls(table.num_rows, pa.int64()))
    table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    if resolve_paths:
        root = path.resolve().parent
        # normpath folds "../" without a stat per row; symlinks inside the video tree stay as written.
        paths = [p if os.path.isabs(p) or "://" in p else os.path.normpath(os.path.join(root, p))
                 for p in table["path"].to_pylist()]
        i = table.schema.get_field_index("path")
        table = table.set_column(i, MANIFEST_SCHEMA.field("path"), pa.array(paths, pa.string()))
    return table


# ---------------------------------------------------------------- shared helpers
def _natural_key(name: str) -> tuple[Any, ...]:
    # re.split with a capturing group alternates text (even positions) and digit runs (odd positions),
    # so two keys never compare a str with an int; the raw name breaks ties ("a01" vs "a1").
    parts = re.split(r"(\d+)", name)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def _assign_labels(classes_by_split: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Global label per class name: train classes first, then val, then test, natural order inside."""
    labels: dict[str, int] = {}
    for split in SPLITS:
        for name in sorted(set(classes_by_split.get(split, ())), key=_natural_key):
            # A class in two splits keeps its first label; validate_manifest reports the leak.
            labels.setdefault(name, len(labels))
    return labels


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    exts = frozenset(("." + e.lstrip(".")).lower() for e in extensions)
    if not exts:
        raise ManifestError("no video extensions given; pass e.g. extensions=('.mp4', '.webm')")
    return exts


def _video_suffix(name: str, exts: frozenset[str]) -> str | None:
    """The video suffix of a file name (case-insensitive), or None when it is not a video."""
    dot = name.rfind(".")
    if dot <= 0:  # no suffix, or a dot-file
        return None
    suffix = name[dot:].lower()
    return suffix if suffix in exts else None


def _sample(items: Sequence[str], n: int = _SAMPLE) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", … ({len(items)} in all)" if len(items) > n else "")


def _check_root(videos: Path) -> Path:
    videos = Path(videos).expanduser()
    if not videos.is_dir():
        raise ManifestError(f"video folder {videos} does not exist or is not a folder; check --videos")
    return videos.resolve()


# ---------------------------------------------------------------- folder trees
def class_split_counts(num_classes: int, class_split: Sequence[float] = DEFAULT_CLASS_SPLIT) -> tuple[int, int, int]:
    """How many of ``num_classes`` classes go to train, val and test.

    Largest-remainder rounding: each split gets ``floor(n * fraction)`` classes, and the classes left
    over go one each to the splits with the largest fractional remainders (ties: train, val, test). So
    100 classes at 0.64/0.12/0.24 give exactly 64/12/24, and the counts always sum to ``n``. Then every
    split with a positive fraction that got no class takes one from the largest split, so with at least
    three classes (and three positive fractions) no split is empty. A fraction of 0 keeps its split empty.
    """
    fractions = _check_class_split(class_split)
    positive = [i for i, f in enumerate(fractions) if f > 0]
    if num_classes < len(positive):
        raise ManifestError(
            f"{num_classes} class(es) cannot fill {len(positive)} split(s); a class-per-folder tree needs at "
            f"least {len(positive)} classes with videos (or set a split's fraction to 0 in --class-split)"
        )
    # Rounding to 9 places first keeps float noise (0.29 * 100 = 28.999999999999996) out of floor().
    exact = [round(num_classes * f, 9) for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: num_classes - sum(counts)]:
        counts[i] += 1
    for i in positive:
        if counts[i] == 0:
            donor = max(range(3), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts[0], counts[1], counts[2]


def _check_class_split(class_split: Sequence[float]) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in class_split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ManifestError(
            f"class split must be three non-negative fractions (train, val, test) summing to 1, "
            f"e.g. --class-split 0.64,0.12,0.24; got {class_split!r}"
        )
    return fractions  # type: ignore[return-value]


def _shuffled_classes(names: Iterable[str], seed: int) -> list[str]:
    # A hash of (seed, name) as the sort key is a seeded shuffle that no library version can change,
    # and a class's position does not depend on which other classes happen to exist.
    return sorted(names, key=lambda n: (hashlib.sha256(f"{seed}\0{n}".encode()).digest(), n))


@dataclass
class FolderReport:
    """What :func:`scan_folder_tree` read and what it skipped; ``summary()`` is the printable form."""

    videos: Path  # the video root that was scanned
    layout: str  # "split folders" (<split>/<class>/<file>) or "class folders" (<class>/<file>)
    classes: dict[str, int] = field(default_factory=dict)  # split -> classes with at least one video
    found: dict[str, int] = field(default_factory=dict)  # split -> videos
    non_video: Counter[str] = field(default_factory=Counter)  # suffix -> files skipped for a non-video suffix
    non_video_sample: list[str] = field(default_factory=list)  # a few of those files, relative paths
    outside_classes: list[str] = field(default_factory=list)  # files not inside a class folder (skipped)
    empty_classes: list[str] = field(default_factory=list)  # class folders without any video (skipped)
    other_folders: list[str] = field(default_factory=list)  # top folders beside train/val/test (skipped)

    @property
    def has_warnings(self) -> bool:
        """Whether anything was skipped that the user may not expect."""
        return bool(self.non_video or self.outside_classes or self.empty_classes or self.other_folders)

    def summary(self) -> str:
        """A few lines: what was found per split, then what was skipped and why."""
        per_split = ", ".join(f"{s} {self.classes.get(s, 0)} classes / {self.found.get(s, 0)} videos" for s in SPLITS)
        lines = [f"{self.videos} ({self.layout}): {per_split}"]
        if self.non_video:
            kinds = ", ".join(f"{k or '(none)'}: {v}" for k, v in self.non_video.most_common())
            lines.append(f"skipped {sum(self.non_video.values())} non-video file(s) by suffix ({kinds}); "
                         f"e.g. {_sample(self.non_video_sample)}")
        if self.outside_classes:
            lines.append(f"skipped {len(self.outside_classes)} file(s) outside any class folder: "
                         f"{_sample(self.outside_classes)}")
        if self.empty_classes:
            lines.append(f"skipped {len(self.empty_classes)} class folder(s) without videos: "
                         f"{_sample(self.empty_classes)}")
        if self.other_folders:
            lines.append(f"skipped {len(self.other_folders)} folder(s) beside train/val/test: "
                         f"{_sample(self.other_folders)}")
        return "\n".join(lines)


def _walk_class_folder(folder: Path, rel: str, exts: frozenset[str], report: FolderReport) -> list[tuple[str, str]]:
    """(video_id, absolute path) for every video under one class folder, subfolders included."""
    found: list[tuple[str, str]] = []
    stack = [(str(folder), rel)]
    while stack:
        here, here_rel = stack.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # hidden: .DS_Store, ._resource forks, partial downloads
                entry_rel = f"{here_rel}/{entry.name}"
                if entry.is_dir():
                    stack.append((entry.path, entry_rel))
                elif entry.is_file():
                    suffix = _video_suffix(entry.name, exts)
                    if suffix is None:
                        report.non_video[os.path.splitext(entry.name)[1].lower()] += 1
                        if len(report.non_video_sample) < _SAMPLE:
                            report.non_video_sample.append(entry_rel)
                    else:
                        found.append((entry_rel[: -len(suffix)], entry.path))
    return found


def _subfolders(folder: Path) -> tuple[list[os.DirEntry[str]], list[str]]:
    """Visible subfolders (sorted by name) and visible plain files of ``folder``."""
    dirs, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry)
            elif entry.is_file():
                files.append(entry.name)
    return sorted(dirs, key=lambda e: e.name), sorted(files)


def scan_folder_tree(
    videos: Path,
    *,
    class_split: Sequence[float] = DEFAULT_CLASS_SPLIT,
    seed: int = 0,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
) -> tuple[pa.Table, FolderReport]:
    """:func:`from_folder_tree`, also returning the :class:`FolderReport` of what was skipped."""
    root = _check_root(videos)
    exts = _normalise_extensions(extensions)
    top_dirs, top_files = _subfolders(root)
    split_dirs = {e.name: e for e in top_dirs if e.name in SPLITS}
    layout = "split folders" if split_dirs else "class folders"
    report = FolderReport(videos=root, layout=layout)
    report.outside_classes.extend(top_files)

    # (split or None, class) -> videos; split is None until the seeded class split decides it.
    per_class: dict[tuple[str | None, str], list[tuple[str, str]]] = {}
    if split_dirs:
        absent = [s for s in SPLITS if s not in split_dirs]
        if absent:
            raise ManifestError(
                f"{root} holds {', '.join(f'{s}/' for s in SPLITS if s in split_dirs)} but not "
                f"{', '.join(f'{s}/' for s in absent)}: a split-folder tree needs all three "
                f"(<videos>/<split>/<class>/<file>); add the missing folder(s), or use a class-per-folder "
                f"tree (<videos>/<class>/<file>) without folders named train, val or test"
            )
        report.other_folders.extend(e.name for e in top_dirs if e.name not in SPLITS)
        for split in SPLITS:
            class_dirs, files = _subfolders(Path(split_dirs[split].path))
            report.outside_classes.extend(f"{split}/{f}" for f in files)
            for entry in class_dirs:
                per_class[(split, entry.name)] = _walk_class_folder(Path(entry.path), entry.name, exts, report)
    else:
        for entry in top_dirs:
            per_class[(None, entry.name)] = _walk_class_folder(Path(entry.path), entry.name, exts, report)

    for (split, name), vids in per_class.items():
        if not vids:
            report.empty_classes.append(f"{split}/{name}" if split else name)
    per_class = {k: v for k, v in per_class.items() if v}
    if not per_class:
        raise ManifestError(
            f"no videos ({', '.join(sorted(exts))}) found under {root}; expected <videos>/<class>/<file> "
            f"or <videos>/<split>/<class>/<file> with split in train, val, test"
            + (f"\n{report.summary()}" if report.has_warnings else "")
        )

    if not split_dirs:
        names = _shuffled_classes((name for _, name in per_class), seed)
        n_train, n_val, _ = class_split_counts(len(names), class_split)
        split_of = {n: ("train" if i < n_train else "val" if i < n_train + n_val else "test") for i, n in enumerate(names)}
        per_class = {(split_of[name], name): vids for (_, name), vids in per_class.items()}

    classes_by_split: dict[str, list[str]] = defaultdict(list)
    for split, name in per_class:
        classes_by_split[split].append(name)  # type: ignore[index]
    labels = _assign_labels(classes_by_split)

    rows: list[dict[str, Any]] = []
    for split in SPLITS:
        for name in sorted(classes_by_split.get(split, ()), key=_natural_key):
            vids = sorted(per_class[(split, name)])
            report.classes[split] = report.classes.get(split, 0) + 1
            report.found[split] = report.found.get(split, 0) + len(vids)
            rows.extend({"video_id": vid, "path": path, "label": labels[name], "class_name": name, "split": split}
                        for vid, path in vids)

    dup = sorted(k for k, c in Counter(r["video_id"] for r in rows).items() if c > 1)
    if dup:
        raise ManifestError(
            f"{len(dup)} video id(s) occur twice under {root} (the same name with two extensions, or the "
            f"same class/name under two splits): {_sample(dup)}; keep one file per video"
        )
    table = manifest_table(rows)
    validate_manifest(table, check_paths=False)
    return table, report


def from_folder_tree(
    videos: Path,
    *,
    class_split: Sequence[float] = DEFAULT_CLASS_SPLIT,
    seed: int = 0,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
) -> pa.Table:
    """Manifest of a folder tree of videos.

    ``videos/<split>/<class>/<file>`` when ``videos`` holds ``train/``, ``val/`` and ``test/`` (then
    ``class_split`` and ``seed`` are unused); else ``videos/<class>/<file>``, and whole classes go to
    train/val/test by a seeded shuffle in the ``class_split`` proportions (see
    :func:`class_split_counts` for the rounding). Class folders may nest subfolders. ``video_id`` is
    the path below the split folder without the suffix (``class/name``); paths are absolute.

    Hidden files and folders are skipped silently; files without a video suffix, files outside class
    folders and class folders without videos are skipped and reported with a logged warning (use
    :func:`scan_folder_tree` to get the :class:`FolderReport` itself).
    """
    table, report = scan_folder_tree(videos, class_split=class_split, seed=seed, extensions=extensions)
    if report.has_warnings:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())
    return table


# ---------------------------------------------------------------- standard split lists
@dataclass(frozen=True)
class BenchmarkSpec:
    """One standard few-shot benchmark: where its split lists are and what they should contain."""

    name: str  # registry key, as given to --benchmark
    title: str  # human-readable name, for reports
    folder: str  # folder under the splits dir holding the lists
    list_number: int  # N in trainlist0N.txt / vallist0N.txt / testlist0N.txt
    classes: tuple[int, int, int]  # classes per split (train, val, test), as published
    videos: tuple[int, int, int]  # listed videos per split (train, val, test), as published
    hflip: bool  # whether horizontal-flip augmentation keeps labels valid (never for SSv2: "left to right")
    class_names: Mapping[str, str] = field(default_factory=dict)  # split -> file of names for "<split><i>" classes

    def list_path(self, splits_dir: Path, split: str) -> Path:
        """The list file of one split."""
        return Path(splits_dir) / self.folder / f"{split}list{self.list_number:02d}.txt"


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("ssv2_otam", "SSv2-Full (OTAM split)", "ssv2_OTAM", 7, (64, 12, 24), (67013, 1926, 2857),
                      hflip=False,
                      class_names={"train": "classnames_train.txt", "test": "classnames_test.txt"}),
        BenchmarkSpec("ssv2_cmn", "SSv2-Small (CMN split)", "ssv2_CMN", 3, (64, 12, 24), (6400, 1200, 2400),
                      hflip=False),
        BenchmarkSpec("kinetics_cmn", "Kinetics-100 (CMN split)", "kinetics_CMN", 3, (64, 12, 24),
                      (6400, 1200, 2400), hflip=True),
        BenchmarkSpec("ucf_arn", "UCF101 (ARN split)", "ucf_ARN", 3, (70, 10, 21), (9154, 1421, 2745), hflip=True),
        BenchmarkSpec("hmdb_arn", "HMDB51 (ARN split)", "hmdb_ARN", 3, (31, 10, 10), (4280, 1194, 1292), hflip=True),
    )
}


@dataclass(frozen=True)
class ListEntry:
    """One line of a split list."""

    split: str  # train / val / test
    class_key: str  # the class part of the line as written (``train8`` for SSv2-Full)
    class_name: str  # the class's name (``class_key`` mapped through the class-name file, if any)
    vid: str  # the video part of the line (file name without suffix)

    @property
    def video_id(self) -> str:
        """The line itself, ``class/video``: unique within a benchmark, traceable to its list."""
        return f"{self.class_key}/{self.vid}"


def get_benchmark(name: str) -> BenchmarkSpec:
    """The registered benchmark ``name`` (case-insensitive), or a ManifestError listing the known ones."""
    spec = BENCHMARKS.get(name.lower()) if isinstance(name, str) else None
    if spec is None:
        raise ManifestError(f"unknown benchmark {name!r}; --benchmark is one of {', '.join(BENCHMARKS)}")
    return spec


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise ManifestError(
            f"{what} {path} not found; --splits must name the folder holding {path.parent.name}/ "
            f"(the standard split lists, e.g. shared/splits)"
        )
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def read_split_lists(splits_dir: Path, benchmark: str) -> dict[str, list[ListEntry]]:
    """Parse a benchmark's three split lists: split -> entries in list order (blank lines skipped)."""
    spec = get_benchmark(benchmark)
    splits_dir = Path(splits_dir).expanduser()
    if not (splits_dir / spec.folder).is_dir():
        raise ManifestError(
            f"{splits_dir / spec.folder} not found: --splits must name the folder that holds {spec.folder}/ "
            f"(the standard split lists, e.g. shared/splits)"
        )
    names: dict[str, list[str]] = {
        split: [n for n in _read_lines(splits_dir / spec.folder / file, "class-name file") if n]
        for split, file in spec.class_names.items()
    }
    out: dict[str, list[ListEntry]] = {}
    for split in SPLITS:
        path = spec.list_path(splits_dir, split)
        entries = []
        for number, line in enumerate(_read_lines(path, "split list"), start=1):
            if not line:
                continue
            class_key, sep, vid = line.rpartition("/")
            if not sep or not class_key or not vid:
                raise ManifestError(f"{path}:{number}: expected 'class/video_id', got {line!r}")
            entries.append(ListEntry(split, class_key, _class_name(class_key, split, names, path, number), vid))
        out[split] = entries
    return out


def _class_name(class_key: str, split: str, names: Mapping[str, list[str]], path: Path, number: int) -> str:
    """SSv2-Full writes classes as ``<split><index>``; map them to label text where a name file exists."""
    if split not in names:
        return class_key  # the line names the class itself (or, SSv2-Full val, no names are published)
    match = re.fullmatch(rf"{split}(\d+)", class_key)
    if match is None:
        raise ManifestError(f"{path}:{number}: class {class_key!r} is not of the form '{split}<index>'")
    index = int(match.group(1))
    if index >= len(names[split]):
        raise ManifestError(f"{path}:{number}: class index {index} is beyond the {len(names[split])} "
                            f"names of the {split} class-name file")
    return names[split][index]


def _index_video_root(root: Path, exts: frozenset[str]) -> dict[str, dict[str, str]]:
    """relative folder ('' = root, 'a', 'a/b') -> {file stem: file name}, for the root and two levels below.

    One scandir pass over at most three levels replaces stat'ing every candidate location of every
    listed video (tens of thousands × several candidates). Where a folder holds one stem in several
    containers, the earlier suffix of VIDEO_EXTENSIONS wins, so the choice does not depend on listing order.
    """
    rank = {e: i for i, e in enumerate(VIDEO_EXTENSIONS)}
    index: dict[str, dict[str, str]] = {}
    stack = [("", str(root), 0)]
    while stack:
        rel, here, depth = stack.pop()
        stems: dict[str, str] = {}
        try:
            entries = list(os.scandir(here))
        except OSError as exc:
            logger.warning("cannot list %s (%s); its videos count as missing", here, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if depth < 2:
                    stack.append((f"{rel}/{entry.name}" if rel else entry.name, entry.path, depth + 1))
                continue
            suffix = _video_suffix(entry.name, exts)
            if suffix is None:
                continue
            stem = entry.name[: -len(suffix)]
            old = stems.get(stem)
            if old is None or (rank.get(suffix, len(rank)), entry.name) < (
                rank.get(os.path.splitext(old)[1].lower(), len(rank)), old):
                stems[stem] = entry.name
        if stems:
            index[rel] = stems
    return index


@dataclass
class SplitCount:
    """Listed vs found videos of one split."""

    split: str  # train / val / test
    listed: int  # lines in the split's list
    found: int  # listed videos found under the video root
    classes_listed: int  # distinct classes in the list
    classes_found: int  # classes with at least one video found
    missing_sample: list[str] = field(default_factory=list)  # first few missing video ids, in list order

    @property
    def missing(self) -> int:
        """Listed videos not found."""
        return self.listed - self.found


@dataclass
class SplitReport:
    """What :func:`from_split_lists` found; the caller prints ``summary()`` (missing videos are never silent)."""

    benchmark: BenchmarkSpec  # which benchmark's lists were read
    lists: Path  # folder of the lists
    videos: Path  # video root searched
    counts: dict[str, SplitCount]  # split -> counts

    @property
    def listed(self) -> int:
        """Listed videos, all splits."""
        return sum(c.listed for c in self.counts.values())

    @property
    def found(self) -> int:
        """Found videos, all splits."""
        return sum(c.found for c in self.counts.values())

    @property
    def missing(self) -> int:
        """Missing videos, all splits."""
        return self.listed - self.found

    def summary(self) -> str:
        """A small table of listed/found/missing per split, then samples of missing ids and notes."""
        spec = self.benchmark
        lines = [f"{spec.title} [{spec.name}]: lists {self.lists}, videos under {self.videos}",
                 f"{'split':<6} {'classes':>9} {'listed':>8} {'found':>8} {'missing':>8}"]
        for c in self.counts.values():
            lines.append(f"{c.split:<6} {f'{c.classes_found}/{c.classes_listed}':>9} {c.listed:>8} {c.found:>8} {c.missing:>8}")
        lines.append(f"{'total':<6} {'':>9} {self.listed:>8} {self.found:>8} {self.missing:>8}")
        for c in self.counts.values():
            if c.missing:
                lines.append(f"missing in {c.split}: {_sample(c.missing_sample)}"
                             + (f" (and {c.missing - len(c.missing_sample)} more)" if c.missing > len(c.missing_sample) else ""))
        for i, c in enumerate(self.counts.values()):
            if (c.classes_listed, c.listed) != (spec.classes[i], spec.videos[i]):
                lines.append(f"note: the {c.split} list has {c.classes_listed} classes / {c.listed} videos; "
                             f"{spec.title} is published with {spec.classes[i]} / {spec.videos[i]}")
        if self.missing:
            lines.append(f"{self.missing} listed video(s) are missing and left out of the manifest; "
                         f"results on it are not comparable to published ones (require_all=true refuses this)")
        return "\n".join(lines)


def from_split_lists(
    splits_dir: Path,
    benchmark: str,
    videos: Path,
    *,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    require_all: bool = False,
) -> tuple[pa.Table, SplitReport]:
    """Manifest of a standard benchmark: its split lists, with each listed video looked up under ``videos``.

    A line ``class/id`` of split ``s`` matches a file ``id.<ext>`` (any of ``extensions``) in the first
    of these folders that has one: ``videos/<class>/``, ``videos/`` (SSv2 is one flat folder of
    ``<id>.webm``), ``videos/<s>/<class>/``, then ``videos/<other>/<class>/`` for any other top folder
    (Kinetics-100's val/test videos sit in Kinetics' own ``train/``). ``<class>`` is tried as written,
    as its mapped name (SSv2-Full) and with spaces as underscores. The tree is listed once, three
    levels deep. Labels come from the listed classes, so a missing video never shifts them.

    Missing videos are left out of the table and counted in the returned :class:`SplitReport`;
    ``require_all=True`` raises a ManifestError instead.
    """
    spec = get_benchmark(benchmark)
    entries = read_split_lists(splits_dir, spec.name)
    root = _check_root(videos)
    index = _index_video_root(root, _normalise_extensions(extensions))
    # Folder name -> the two-level folders ending in it, for the "any top folder" candidates.
    by_leaf: dict[str, list[str]] = defaultdict(list)
    for rel in sorted(index):
        top, sep, leaf = rel.partition("/")
        if sep:
            by_leaf[leaf].append(rel)

    labels = _assign_labels({s: (e.class_name for e in es) for s, es in entries.items()})
    rows: list[dict[str, Any]] = []
    counts: dict[str, SplitCount] = {}
    for split, split_entries in entries.items():
        found = 0
        missing_sample: list[str] = []
        classes_found: set[str] = set()
        candidates: dict[tuple[str, str], list[str]] = {}
        for e in split_entries:
            dirs = candidates.get((e.class_key, e.class_name))
            if dirs is None:
                dirs = candidates[(e.class_key, e.class_name)] = _candidate_dirs(e, by_leaf)
            path = None
            for rel in dirs:
                name = index.get(rel, {}).get(e.vid)
                if name is not None:
                    path = os.path.join(root, rel, name) if rel else os.path.join(root, name)
                    break
            if path is None:
                if len(missing_sample) < _SAMPLE:
                    missing_sample.append(e.video_id)
                continue
            found += 1
            classes_found.add(e.class_name)
            rows.append({"video_id": e.video_id, "path": path, "label": labels[e.class_name],
                         "class_name": e.class_name, "split": split})
        counts[split] = SplitCount(split, len(split_entries), found, len({e.class_name for e in split_entries}),
                                   len(classes_found), missing_sample)
    report = SplitReport(spec, Path(splits_dir) / spec.folder, root, counts)
    if require_all and report.missing:
        raise ManifestError(f"require_all: {report.missing} of {report.listed} listed videos are missing "
                            f"under {root}\n{report.summary()}")
    if not rows:
        raise ManifestError(
            f"none of the {report.listed} videos listed for {spec.name} were found under {root}; expected "
            f"<videos>/<class>/<id>.<ext>, <videos>/<id>.<ext> or <videos>/<split>/<class>/<id>.<ext>, "
            f"e.g. {entries['train'][0].video_id}"
        )
    table = manifest_table(rows)
    validate_manifest(table, check_paths=False)
    return table, report


def _candidate_dirs(e: ListEntry, by_leaf: Mapping[str, list[str]]) -> list[str]:
    """Folders (relative to the video root) that may hold a listed video, most specific first."""
    names = list(dict.fromkeys([e.class_key, e.class_name, e.class_key.replace(" ", "_"),
                                e.class_name.replace(" ", "_")]))
    dirs = [*names, "", *(f"{e.split}/{n}" for n in names)]
    dirs += [rel for n in names for rel in by_leaf.get(n, ()) if rel not in dirs]
    return dirs


# ---------------------------------------------------------------- validation and summary
def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def validate_manifest(table: pa.Table, *, check_paths: bool = True, root: Path | None = None) -> None:
    """Raise a ManifestError listing every problem found, or return None for a sound manifest.

    Checks: required columns, empty table, empty values, unknown splits, duplicate ``video_id``s, a
    class in two splits (few-shot classes must be disjoint), a label with two class names or a class
    with two labels, and (``check_paths``) that every local path is a readable file; relative paths
    are taken from ``root`` (default: the working folder) and ``scheme://`` URIs are not checked.
    """
    absent = [c for c in MANIFEST_SCHEMA.names if c != "num_frames" and c not in table.column_names]
    if absent:
        raise ManifestError(f"manifest lacks column(s) {absent}; expected {list(MANIFEST_SCHEMA.names)}")
    if table.num_rows == 0:
        raise ManifestError("manifest is empty: no videos; check --videos (and --splits/--benchmark)")
    cols = {c: table[c].to_pylist() for c in ("video_id", "path", "label", "class_name", "split")}
    problems: list[str] = []

    for c, values in cols.items():
        empty = sum(v is None or v == "" for v in values)
        if empty:
            problems.append(f"{empty} row(s) have no {c}")

    unknown = Counter(s for s in cols["split"] if s not in SPLITS and s)
    if unknown:
        problems.append(f"unknown split value(s) {dict(unknown)}; split is one of {', '.join(SPLITS)}")

    dup = sorted(v for v, n in Counter(cols["video_id"]).items() if n > 1 and v)
    if dup:
        problems.append(f"{len(dup)} duplicate video_id(s): {_sample(dup)}")

    splits_of: dict[str, set[str]] = defaultdict(set)
    names_of: dict[Any, set[str]] = defaultdict(set)
    labels_of: dict[str, set[Any]] = defaultdict(set)
    for name, split, label in zip(cols["class_name"], cols["split"], cols["label"], strict=True):
        if name:
            splits_of[name].add(split)
            labels_of[name].add(label)
        if label is not None:
            names_of[label].add(name)
    leaks = sorted((n for n, s in splits_of.items() if len(s) > 1), key=_natural_key)
    if leaks:
        shown = "; ".join(f"{n!r} in {', '.join(sorted(splits_of[n], key=_split_order))}" for n in leaks[:_SAMPLE])
        problems.append(f"{len(leaks)} class(es) appear in more than one split (train/val/test classes must be "
                        f"disjoint): {shown}" + (" …" if len(leaks) > _SAMPLE else ""))
    two_names = sorted(lb for lb, ns in names_of.items() if len(ns) > 1)
    if two_names:
        shown = "; ".join(f"{lb} -> {sorted(map(str, names_of[lb]))}" for lb in two_names[:_SAMPLE])
        problems.append(f"{len(two_names)} label(s) map to more than one class name: {shown}")
    two_labels = sorted((n for n, ls in labels_of.items() if len(ls) > 1), key=_natural_key)
    if two_labels:
        shown = "; ".join(f"{n!r} -> {sorted(labels_of[n])}" for n in two_labels[:_SAMPLE])
        problems.append(f"{len(two_labels)} class name(s) map to more than one label: {shown}")

    if check_paths:
        base = Path.cwd() if root is None else Path(root)
        local = [p if os.path.isabs(p) else str(base / p) for p in cols["path"] if p and "://" not in p]
        # Threads overlap the stat latency of network file systems; local disks lose nothing by it.
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(local) // 2000 + 1))) as pool:
            ok = list(pool.map(_readable, local, chunksize=512))
        bad = [p for p, good in zip(local, ok, strict=True) if not good]
        if bad:
            problems.append(f"{len(bad)} of {len(local)} video path(s) do not exist or are not readable files: "
                            f"{_sample(bad)}")

    if problems:
        raise ManifestError(f"manifest has {len(problems)} problem(s):\n- " + "\n- ".join(problems))


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), str(split))


def summarize(table: pa.Table) -> str:
    """Per split: classes, videos and the fewest/most videos of a class, as a small text table."""
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    for split, name in zip(table["split"].to_pylist(), table["class_name"].to_pylist(), strict=True):
        per_class[split][name] += 1
    lines = [f"{'split':<6} {'classes':>8} {'videos':>8} {'min/class':>10} {'max/class':>10}"]
    for split in sorted(set(SPLITS) | set(per_class), key=_split_order):
        counts = per_class.get(split, Counter())
        lo, hi = (min(counts.values()), max(counts.values())) if counts else ("-", "-")
        lines.append(f"{split:<6} {len(counts):>8} {sum(counts.values()):>8} {lo:>10} {hi:>10}")
    lines.append(f"{'total':<6} {sum(len(c) for c in per_class.values()):>8} {table.num_rows:>8}")
    return "\n".join(lines)
