"""Manifests from a folder tree: ``videos/<split>/<class>/<file>`` or ``videos/<class>/<file>``.

In the second layout whole classes go to train/val/test by a seeded shuffle (default 64/12/24%).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fsar.data.manifest import (
    DEFAULT_CLASS_SPLIT,
    SAMPLE_SIZE,
    SPLITS,
    VIDEO_EXTENSIONS,
    ManifestError,
    assign_labels,
    check_video_root,
    duplicate_values,
    manifest_columns,
    natural_key,
    normalise_extensions,
    sample_text,
    validate_manifest,
    video_suffix,
)

logger = logging.getLogger(__name__)

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
                         f"e.g. {sample_text(self.non_video_sample)}")
        if self.outside_classes:
            lines.append(f"skipped {len(self.outside_classes)} file(s) outside any class folder: "
                         f"{sample_text(self.outside_classes)}")
        if self.empty_classes:
            lines.append(f"skipped {len(self.empty_classes)} class folder(s) without videos: "
                         f"{sample_text(self.empty_classes)}")
        if self.other_folders:
            lines.append(f"skipped {len(self.other_folders)} folder(s) beside train/val/test: "
                         f"{sample_text(self.other_folders)}")
        return "\n".join(lines)


class _Walk:
    """What the walk of the class folders collects: per class folder, each video's id and suffix."""

    def __init__(self, exts: frozenset[str], report: FolderReport, bar: Any) -> None:
        self.exts, self.report, self.bar = exts, report, bar
        self.suffixes: dict[str, str] = {}  # one string object per suffix as written (".mp4", ".MP4")

    def class_folder(self, folder: str, rel: str) -> tuple[list[str], list[str]]:
        """Video ids (``rel/.../name`` without the suffix) and suffixes as written, of every video under
        one class folder, subfolders included. The path of a video is its folder's prefix + id + suffix."""
        vids: list[str] = []
        suffixes: list[str] = []
        stack = [(folder, rel)]
        while stack:
            here, here_rel = stack.pop()
            seen = 0
            with os.scandir(here) as entries:
                for entry in entries:
                    seen += 1
                    if entry.name.startswith("."):
                        continue  # hidden: .DS_Store, ._resource forks, partial downloads
                    if entry.is_dir():
                        stack.append((entry.path, f"{here_rel}/{entry.name}"))
                    elif entry.is_file():
                        suffix = video_suffix(entry.name, self.exts)
                        if suffix is None:
                            self.report.non_video[os.path.splitext(entry.name)[1].lower()] += 1
                            if len(self.report.non_video_sample) < SAMPLE_SIZE:
                                self.report.non_video_sample.append(f"{here_rel}/{entry.name}")
                        else:
                            cut = len(entry.name) - len(suffix)
                            vids.append(f"{here_rel}/{entry.name[:cut]}")
                            written = entry.name[cut:]
                            suffixes.append(self.suffixes.setdefault(written, written))
            self.bar.update(seen)
        return vids, suffixes


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
    progress: bool = False,
) -> tuple[pa.Table, FolderReport]:
    """:func:`from_folder_tree`, also returning the :class:`FolderReport` of what was skipped.

    ``progress`` shows a bar of the files seen on a terminal. Videos are kept as columns (an id and a
    shared suffix string each; the path is joined by Arrow), so a million files fit in a few hundred MB."""
    from tqdm.auto import tqdm

    root = check_video_root(videos)
    exts = normalise_extensions(extensions)
    top_dirs, top_files = _subfolders(root)
    split_dirs = {e.name: e for e in top_dirs if e.name in SPLITS}
    layout = "split folders" if split_dirs else "class folders"
    report = FolderReport(videos=root, layout=layout)
    report.outside_classes.extend(top_files)

    # (split or None, class) -> (video ids, suffixes); split is None until the seeded class split decides it.
    per_class: dict[tuple[str | None, str], tuple[list[str], list[str]]] = {}
    with tqdm(desc=f"scan {root}", unit=" files", disable=None if progress else True) as bar:
        walk = _Walk(exts, report, bar)
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
                    per_class[(split, entry.name)] = walk.class_folder(str(Path(entry.path)), entry.name)
        else:
            for entry in top_dirs:
                per_class[(None, entry.name)] = walk.class_folder(str(Path(entry.path)), entry.name)

    for (split, name), (vids, _) in per_class.items():
        if not vids:
            report.empty_classes.append(f"{split}/{name}" if split else name)
    per_class = {k: v for k, v in per_class.items() if v[0]}
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
    labels = assign_labels(classes_by_split)

    # Columns, one list entry per video (shared objects for the repeated values); path = prefix + id + suffix,
    # the prefix being the split folder (split layout) or the root, exactly as os.scandir spelled the path.
    video_ids: list[str] = []
    suffixes: list[str] = []
    prefixes: list[str] = []
    label_col: list[int] = []
    class_col: list[str] = []
    split_col: list[str] = []
    for split in SPLITS:
        prefix = os.path.join(str(root), split, "") if split_dirs else os.path.join(str(root), "")
        for name in sorted(classes_by_split.get(split, ()), key=natural_key):
            pairs = sorted(zip(*per_class.pop((split, name)), strict=True))
            video_ids.extend(vid for vid, _ in pairs)
            suffixes.extend(suffix for _, suffix in pairs)
            n = len(pairs)
            report.classes[split] = report.classes.get(split, 0) + 1
            report.found[split] = report.found.get(split, 0) + n
            prefixes.extend([prefix] * n)
            label_col.extend([labels[name]] * n)
            class_col.extend([name] * n)
            split_col.extend([split] * n)

    id_array = pa.array(video_ids, pa.string())
    del video_ids
    dup = duplicate_values(id_array)
    if dup:
        raise ManifestError(
            f"{len(dup)} video id(s) occur twice under {root} (the same name with two extensions, or the "
            f"same class/name under two splits): {sample_text(dup)}; keep one file per video"
        )
    paths = pc.binary_join_element_wise(pa.array(prefixes, pa.string()), id_array, pa.array(suffixes, pa.string()), "")
    del prefixes, suffixes
    table = manifest_columns(id_array, paths, label_col, class_col, split_col)
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
