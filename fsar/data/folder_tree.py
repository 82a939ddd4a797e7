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

from fsar.data.manifest import (
    DEFAULT_CLASS_SPLIT,
    SAMPLE_SIZE,
    SPLITS,
    VIDEO_EXTENSIONS,
    ManifestError,
    assign_labels,
    check_video_root,
    manifest_table,
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
                    suffix = video_suffix(entry.name, exts)
                    if suffix is None:
                        report.non_video[os.path.splitext(entry.name)[1].lower()] += 1
                        if len(report.non_video_sample) < SAMPLE_SIZE:
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
    root = check_video_root(videos)
    exts = normalise_extensions(extensions)
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
    labels = assign_labels(classes_by_split)

    rows: list[dict[str, Any]] = []
    for split in SPLITS:
        for name in sorted(classes_by_split.get(split, ()), key=natural_key):
            vids = sorted(per_class[(split, name)])
            report.classes[split] = report.classes.get(split, 0) + 1
            report.found[split] = report.found.get(split, 0) + len(vids)
            rows.extend({"video_id": vid, "path": path, "label": labels[name], "class_name": name, "split": split}
                        for vid, path in vids)

    dup = sorted(k for k, c in Counter(r["video_id"] for r in rows).items() if c > 1)
    if dup:
        raise ManifestError(
            f"{len(dup)} video id(s) occur twice under {root} (the same name with two extensions, or the "
            f"same class/name under two splits): {sample_text(dup)}; keep one file per video"
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
