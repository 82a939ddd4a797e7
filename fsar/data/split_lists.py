"""Manifests from the standard few-shot split lists plus a video root.

The five benchmarks' lists ship inside the package (``PACKAGED_SPLITS``, ``fsar/data/splits``), so
``fsar manifest --benchmark NAME --videos DIR`` works on any machine; ``--splits DIR`` reads other lists
laid out the same way.

Each listed ``class/video_id`` is looked up under the root with any common video extension; listed
videos that are not found are counted and reported, never silently dropped.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fsar.data.manifest import (
    SAMPLE_SIZE,
    SPLITS,
    VIDEO_EXTENSIONS,
    ManifestError,
    assign_labels,
    check_video_root,
    manifest_columns,
    normalise_extensions,
    sample_text,
    validate_manifest,
    video_suffix,
)

logger = logging.getLogger(__name__)

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


# The standard lists, shipped as package data: <folder>/{train,val,test}list0N.txt (+ SSv2-Full class names).
PACKAGED_SPLITS = Path(__file__).resolve().parent / "splits"

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


@dataclass(frozen=True, slots=True)
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
            f"(or leave --splits out to use the lists that ship with fsar)"
        )
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def read_split_lists(splits_dir: Path | None, benchmark: str) -> dict[str, list[ListEntry]]:
    """Parse a benchmark's three split lists: split -> entries in list order (blank lines skipped).
    ``splits_dir`` None reads the lists that ship with fsar."""
    spec = get_benchmark(benchmark)
    splits_dir = PACKAGED_SPLITS if splits_dir is None else Path(splits_dir).expanduser()
    if not (splits_dir / spec.folder).is_dir():
        raise ManifestError(
            f"{splits_dir / spec.folder} not found: --splits must name the folder that holds {spec.folder}/ "
            f"(or leave --splits out to use the lists that ship with fsar)"
        )
    names: dict[str, list[str]] = {
        split: [n for n in _read_lines(splits_dir / spec.folder / file, "class-name file") if n]
        for split, file in spec.class_names.items()
    }
    out: dict[str, list[ListEntry]] = {}
    for split in SPLITS:
        path = spec.list_path(splits_dir, split)
        entries = []
        # class_key -> (the one string object kept for it, its class name): a list names each class many
        # times, and a million entries then share a few thousand class strings.
        classes: dict[str, tuple[str, str]] = {}
        for number, line in enumerate(_read_lines(path, "split list"), start=1):
            if not line:
                continue
            class_key, sep, vid = line.rpartition("/")
            if not sep or not class_key or not vid:
                raise ManifestError(f"{path}:{number}: expected 'class/video_id', got {line!r}")
            known = classes.get(class_key)
            if known is None:
                known = classes[class_key] = (class_key, _class_name(class_key, split, names, path, number))
            entries.append(ListEntry(split, known[0], known[1], vid))
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


def _index_video_root(root: Path, exts: frozenset[str], bar: Any = None) -> dict[str, dict[str, str]]:
    """relative folder ('' = root, 'a', 'a/b') -> {file stem: suffix as written}, for the root and two
    levels below (the file's name is stem + suffix; one string object per distinct suffix).

    One scandir pass over at most three levels replaces stat'ing every candidate location of every
    listed video (tens of thousands × several candidates). Where a folder holds one stem in several
    containers, the earlier suffix of VIDEO_EXTENSIONS wins, so the choice does not depend on listing order.
    ``bar`` (a tqdm bar, optional) counts the entries seen.
    """
    rank = {e: i for i, e in enumerate(VIDEO_EXTENSIONS)}
    shared: dict[str, str] = {}
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
            suffix = video_suffix(entry.name, exts)
            if suffix is None:
                continue
            cut = len(entry.name) - len(suffix)
            stem, written = entry.name[:cut], entry.name[cut:]
            old = stems.get(stem)
            if old is None or (rank.get(suffix, len(rank)), entry.name) < (rank.get(old.lower(), len(rank)), stem + old):
                stems[stem] = shared.setdefault(written, written)
        if stems:
            index[rel] = stems
        if bar is not None:
            bar.update(len(entries))
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
                lines.append(f"missing in {c.split}: {sample_text(c.missing_sample)}"
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
    splits_dir: Path | None,
    benchmark: str,
    videos: Path,
    *,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    require_all: bool = False,
    progress: bool = False,
) -> tuple[pa.Table, SplitReport]:
    """Manifest of a standard benchmark: its split lists (``splits_dir`` None: the packaged ones), with each
    listed video looked up under ``videos``.

    A line ``class/id`` of split ``s`` matches a file ``id.<ext>`` (any of ``extensions``) in the first
    of these folders that has one: ``videos/<class>/``, ``videos/`` (SSv2 is one flat folder of
    ``<id>.webm``), ``videos/<s>/<class>/``, then ``videos/<other>/<class>/`` for any other top folder
    (Kinetics-100's val/test videos sit in Kinetics' own ``train/``). ``<class>`` is tried as written,
    as its mapped name (SSv2-Full) and with spaces as underscores. The tree is listed once, three
    levels deep. Labels come from the listed classes, so a missing video never shifts them.

    Missing videos are left out of the table and counted in the returned :class:`SplitReport`;
    ``require_all=True`` raises a ManifestError instead. ``progress`` shows a bar of the files seen
    while the root is listed, on a terminal.
    """
    from tqdm.auto import tqdm

    spec = get_benchmark(benchmark)
    entries = read_split_lists(splits_dir, spec.name)
    root = check_video_root(videos)
    with tqdm(desc=f"scan {root}", unit=" files", disable=None if progress else True) as bar:
        index = _index_video_root(root, normalise_extensions(extensions), bar)
    # Folder name -> the two-level folders ending in it, for the "any top folder" candidates.
    by_leaf: dict[str, list[str]] = defaultdict(list)
    for rel in sorted(index):
        top, sep, leaf = rel.partition("/")
        if sep:
            by_leaf[leaf].append(rel)

    labels = assign_labels({s: (e.class_name for e in es) for s, es in entries.items()})
    # Columns of the found videos, as references to strings that already exist (the entry's class key,
    # id and name, the folder's prefix, the suffix); Arrow joins video_id = class/id and path = prefix+id+suffix.
    prefixes = {rel: os.path.join(root, rel, "") for rel in index}
    col: dict[str, list[Any]] = {c: [] for c in ("class_key", "vid", "prefix", "suffix", "label", "class_name", "split")}
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
            for rel in dirs:
                suffix = index.get(rel, _NO_FILES).get(e.vid)
                if suffix is not None:
                    break
            else:
                if len(missing_sample) < SAMPLE_SIZE:
                    missing_sample.append(e.video_id)
                continue
            found += 1
            classes_found.add(e.class_name)
            for c, value in (("class_key", e.class_key), ("vid", e.vid), ("prefix", prefixes[rel]),
                             ("suffix", suffix), ("label", labels[e.class_name]), ("class_name", e.class_name),
                             ("split", split)):
                col[c].append(value)
        counts[split] = SplitCount(split, len(split_entries), found, len({e.class_name for e in split_entries}),
                                   len(classes_found), missing_sample)
    report = SplitReport(spec, (PACKAGED_SPLITS if splits_dir is None else Path(splits_dir)) / spec.folder, root,
                         counts)
    if require_all and report.missing:
        raise ManifestError(f"require_all: {report.missing} of {report.listed} listed videos are missing "
                            f"under {root}\n{report.summary()}")
    if not col["vid"]:
        raise ManifestError(
            f"none of the {report.listed} videos listed for {spec.name} were found under {root}; expected "
            f"<videos>/<class>/<id>.<ext>, <videos>/<id>.<ext> or <videos>/<split>/<class>/<id>.<ext>, "
            f"e.g. {entries['train'][0].video_id}"
        )
    vids = pa.array(col.pop("vid"), pa.string())
    video_ids = pc.binary_join_element_wise(pa.array(col.pop("class_key"), pa.string()), vids, "/")
    paths = pc.binary_join_element_wise(pa.array(col.pop("prefix"), pa.string()), vids,
                                        pa.array(col.pop("suffix"), pa.string()), "")
    del vids
    table = manifest_columns(video_ids, paths, col.pop("label"), col.pop("class_name"), col.pop("split"))
    validate_manifest(table, check_paths=False)
    return table, report


_NO_FILES: Mapping[str, str] = {}


def _candidate_dirs(e: ListEntry, by_leaf: Mapping[str, list[str]]) -> list[str]:
    """Folders (relative to the video root) that may hold a listed video, most specific first."""
    names = list(dict.fromkeys([e.class_key, e.class_name, e.class_key.replace(" ", "_"),
                                e.class_name.replace(" ", "_")]))
    dirs = [*names, "", *(f"{e.split}/{n}" for n in names)]
    dirs += [rel for n in names for rel in by_leaf.get(n, ()) if rel not in dirs]
    return dirs


def write_split_lists(manifest: str | Path, root: str | Path, benchmark: str) -> Path:
    """Split lists naming a manifest's videos (``class_folder/video`` lines, from each row's path), written in
    ``benchmark``'s layout under ``root``: a tree laid out like that benchmark for ``--splits root`` (what
    ``fsar reproduce`` is tried on with synthetic videos). Returns ``root``."""
    import pyarrow.parquet as pq

    spec = get_benchmark(benchmark)
    rows = pq.read_table(manifest, columns=["path", "split"]).to_pylist()
    (Path(root) / spec.folder).mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = [f"{Path(r['path']).parent.name}/{Path(r['path']).stem}" for r in rows if r["split"] == split]
        spec.list_path(Path(root), split).write_text("\n".join(lines) + "\n")
    return Path(root)
