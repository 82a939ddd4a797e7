"""Manifests from folder trees."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest
from helpers import class_tree, touch

from fsar.data import folder_tree as ft
from fsar.data import manifest as mf


# ---------------------------------------------------------------- folder trees
def test_class_split_counts_rounding():
    assert ft.class_split_counts(100) == (64, 12, 24)
    assert ft.class_split_counts(3) == (1, 1, 1)  # each split gets a class even though 0.12 * 3 < 1
    assert ft.class_split_counts(10) == (7, 1, 2)  # 6.4 / 1.2 / 2.4: floor 6/1/2; the .4 remainders tie, train wins
    for n in range(3, 60):
        counts = ft.class_split_counts(n, (0.5, 0.25, 0.25))
        assert sum(counts) == n and min(counts) >= 1
    assert ft.class_split_counts(5, (0.8, 0.0, 0.2)) == (4, 0, 1)  # a zero fraction keeps its split empty
    with pytest.raises(mf.ManifestError, match="summing to 1"):
        ft.class_split_counts(10, (0.5, 0.2, 0.2))
    with pytest.raises(mf.ManifestError, match="three non-negative"):
        ft.class_split_counts(10, (0.5, 0.5))
    with pytest.raises(mf.ManifestError, match="at least 3 classes"):
        ft.class_split_counts(2)


def test_folder_tree_class_per_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    class_tree(tmp_path, 25, per_class=3)
    touch(tmp_path / "class00" / "notes.txt")
    touch(tmp_path / "class01" / "labels.json")
    touch(tmp_path / "class02" / ".hidden.mp4")  # hidden: skipped without a word
    touch(tmp_path / "class03" / "CLIP9.MP4")  # suffixes are case-insensitive
    (tmp_path / "empty_class").mkdir()
    touch(tmp_path / ".cache" / "x.mp4")  # hidden folder: not a class

    with caplog.at_level(logging.WARNING, logger="fsar.data.manifest"):
        table = ft.from_folder_tree(tmp_path, seed=3)
    assert "skipped 2 non-video file(s)" in caplog.text and "empty_class" in caplog.text

    rows = table.to_pylist()
    assert len(rows) == 25 * 3 + 1
    assert {r["class_name"] for r in rows} == {f"class{c:02d}" for c in range(25)}
    assert "class03/CLIP9" in table["video_id"].to_pylist()
    assert all(r["video_id"] == f"{r['class_name']}/{Path(r['path']).stem}" for r in rows)
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)

    split_of = {}
    for r in rows:  # whole classes: every video of a class lands in the same split
        assert split_of.setdefault(r["class_name"], r["split"]) == r["split"]
    assert Counter(split_of.values()) == dict(zip(mf.SPLITS, ft.class_split_counts(25), strict=True))  # 16/3/6

    # Labels: train classes first (sorted), then val, then test; one label per class.
    ordered = [sorted(n for n, s in split_of.items() if s == split) for split in mf.SPLITS]
    expected = {name: i for i, name in enumerate(n for group in ordered for n in group)}
    assert {r["class_name"]: r["label"] for r in rows} == expected

    again = ft.from_folder_tree(tmp_path, seed=3)
    assert again.equals(table)  # same seed, same manifest
    other = {r["class_name"]: r["split"] for r in ft.from_folder_tree(tmp_path, seed=4).to_pylist()}
    assert other != split_of  # another seed reshuffles (25 classes: a tie is vanishingly unlikely)


def test_folder_tree_report(tmp_path: Path):
    class_tree(tmp_path, 3, per_class=1)
    touch(tmp_path / "class00" / "a.txt")
    touch(tmp_path / "README.md")
    (tmp_path / "zz").mkdir()
    table, report = ft.scan_folder_tree(tmp_path)
    assert table.num_rows == 3
    assert report.layout == "class folders"
    assert report.non_video == {".txt": 1}
    assert report.non_video_sample == ["class00/a.txt"]
    assert report.outside_classes == ["README.md"]
    assert report.empty_classes == ["zz"]
    assert report.found == {"train": 1, "val": 1, "test": 1}
    text = report.summary()
    assert "non-video" in text and "README.md" in text and "zz" in text


def test_folder_tree_split_layout(tmp_path: Path):
    for split, classes in {"train": ["b", "a", "c"], "val": ["d"], "test": ["f", "e"]}.items():
        for c in classes:
            touch(tmp_path / split / c / "v1.avi")
            touch(tmp_path / split / c / "sub" / "v2.webm")  # nested folders inside a class are read
    touch(tmp_path / "train" / "a" / "v1.txt")
    table, report = ft.scan_folder_tree(tmp_path, seed=123)  # seed and class_split play no part here
    rows = table.to_pylist()
    assert report.layout == "split folders"
    assert {(r["split"], r["class_name"], r["label"]) for r in rows} == {
        ("train", "a", 0), ("train", "b", 1), ("train", "c", 2), ("val", "d", 3), ("test", "e", 4), ("test", "f", 5)
    }
    assert {r["video_id"] for r in rows if r["class_name"] == "a"} == {"a/v1", "a/sub/v2"}
    assert report.non_video == {".txt": 1}


def test_folder_tree_errors(tmp_path: Path):
    with pytest.raises(mf.ManifestError, match="does not exist"):
        ft.from_folder_tree(tmp_path / "nope")
    touch(tmp_path / "x" / "notes.txt")
    with pytest.raises(mf.ManifestError, match=r"no videos .* found under .*<videos>/<class>/<file>"):
        ft.from_folder_tree(tmp_path)
    class_tree(tmp_path, 4)
    with pytest.raises(mf.ManifestError, match="summing to 1"):
        ft.from_folder_tree(tmp_path, class_split=(0.7, 0.2, 0.2))
    touch(tmp_path / "class00" / "clip0.webm")  # same video id as clip0.mp4
    with pytest.raises(mf.ManifestError, match="class00/clip0"):
        ft.from_folder_tree(tmp_path)

    partial = tmp_path / "partial"
    touch(partial / "train" / "a" / "v.mp4")
    touch(partial / "test" / "b" / "v.mp4")
    with pytest.raises(mf.ManifestError, match="not val/"):
        ft.from_folder_tree(partial)




def _rows_by_hand(root: Path, split_of: dict[str, str]) -> list[dict]:
    """The manifest rows of a class tree, one dict per file (os.walk), in manifest order: split, class
    (natural order), then video id."""
    labels = mf.assign_labels({s: [c for c, cs in split_of.items() if cs == s] for s in mf.SPLITS})
    rows = []
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(here).relative_to(root)
        if rel == Path("."):
            continue
        for f in files:
            if f.startswith(".") or ft.video_suffix(f, ft.normalise_extensions(mf.VIDEO_EXTENSIONS)) is None:
                continue
            name = rel.parts[0]
            vid = f"{rel.as_posix()}/{f[: f.rfind('.')]}"
            rows.append({"video_id": vid, "path": os.path.join(here, f), "label": labels[name], "class_name": name,
                         "split": split_of[name]})
    order = {s: i for i, s in enumerate(mf.SPLITS)}
    rows.sort(key=lambda r: (order[r["split"]], mf.natural_key(r["class_name"]), r["video_id"]))
    return rows


def test_folder_tree_columns_match_rows_by_hand(tmp_path: Path):
    names = ["a.mp4", "a-b.mp4", "a.b.webm", "B.MP4", "é x.mkv", "10.mp4", "9.avi", "sub/x.mp4", "sub/deeper/y.Mov",
             "n.txt", ".hidden.mp4"]
    for c in ["cls 1", "cls2", "cls10", "Zed", "ä", "q"]:
        for n in names:
            touch(tmp_path / c / n)
    table, _ = ft.scan_folder_tree(tmp_path, seed=5)
    split_of = dict(zip(table["class_name"].to_pylist(), table["split"].to_pylist(), strict=True))
    assert table.equals(mf.manifest_table(_rows_by_hand(tmp_path.resolve(), split_of)))
    with_bar, _ = ft.scan_folder_tree(tmp_path, seed=5, progress=True)  # the bar changes nothing
    assert with_bar.equals(table)
