"""Manifests: folder trees, the standard split lists, validation, summary and Parquet round trip."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from fsar.data import manifest as mf

SPLITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "splits"
needs_splits = pytest.mark.skipif(
    not SPLITS_DIR.is_dir(), reason=f"standard split lists not found at {SPLITS_DIR} (../shared/splits beside the repo)"
)

# The published sizes, copied by hand from shared/splits/README.md: classes and videos per split.
PUBLISHED = {
    "ssv2_otam": ((64, 12, 24), (67013, 1926, 2857)),
    "ssv2_cmn": ((64, 12, 24), (6400, 1200, 2400)),
    "kinetics_cmn": ((64, 12, 24), (6400, 1200, 2400)),
    "ucf_arn": ((70, 10, 21), (9154, 1421, 2745)),
    "hmdb_arn": ((31, 10, 10), (4280, 1194, 1292)),
}


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def class_tree(root: Path, classes: int, per_class: int = 3) -> None:
    for c in range(classes):
        for v in range(per_class):
            touch(root / f"class{c:02d}" / f"clip{v}.mp4")


# ---------------------------------------------------------------- folder trees
def test_class_split_counts_rounding():
    assert mf.class_split_counts(100) == (64, 12, 24)
    assert mf.class_split_counts(3) == (1, 1, 1)  # each split gets a class even though 0.12 * 3 < 1
    assert mf.class_split_counts(10) == (7, 1, 2)  # 6.4 / 1.2 / 2.4: floor 6/1/2; the .4 remainders tie, train wins
    for n in range(3, 60):
        counts = mf.class_split_counts(n, (0.5, 0.25, 0.25))
        assert sum(counts) == n and min(counts) >= 1
    assert mf.class_split_counts(5, (0.8, 0.0, 0.2)) == (4, 0, 1)  # a zero fraction keeps its split empty
    with pytest.raises(mf.ManifestError, match="summing to 1"):
        mf.class_split_counts(10, (0.5, 0.2, 0.2))
    with pytest.raises(mf.ManifestError, match="three non-negative"):
        mf.class_split_counts(10, (0.5, 0.5))
    with pytest.raises(mf.ManifestError, match="at least 3 classes"):
        mf.class_split_counts(2)


def test_folder_tree_class_per_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    class_tree(tmp_path, 25, per_class=3)
    touch(tmp_path / "class00" / "notes.txt")
    touch(tmp_path / "class01" / "labels.json")
    touch(tmp_path / "class02" / ".hidden.mp4")  # hidden: skipped without a word
    touch(tmp_path / "class03" / "CLIP9.MP4")  # suffixes are case-insensitive
    (tmp_path / "empty_class").mkdir()
    touch(tmp_path / ".cache" / "x.mp4")  # hidden folder: not a class

    with caplog.at_level(logging.WARNING, logger="fsar.data.manifest"):
        table = mf.from_folder_tree(tmp_path, seed=3)
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
    assert Counter(split_of.values()) == dict(zip(mf.SPLITS, mf.class_split_counts(25), strict=True))  # 16/3/6

    # Labels: train classes first (sorted), then val, then test; one label per class.
    ordered = [sorted(n for n, s in split_of.items() if s == split) for split in mf.SPLITS]
    expected = {name: i for i, name in enumerate(n for group in ordered for n in group)}
    assert {r["class_name"]: r["label"] for r in rows} == expected

    again = mf.from_folder_tree(tmp_path, seed=3)
    assert again.equals(table)  # same seed, same manifest
    other = {r["class_name"]: r["split"] for r in mf.from_folder_tree(tmp_path, seed=4).to_pylist()}
    assert other != split_of  # another seed reshuffles (25 classes: a tie is vanishingly unlikely)


def test_folder_tree_report(tmp_path: Path):
    class_tree(tmp_path, 3, per_class=1)
    touch(tmp_path / "class00" / "a.txt")
    touch(tmp_path / "README.md")
    (tmp_path / "zz").mkdir()
    table, report = mf.scan_folder_tree(tmp_path)
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
    table, report = mf.scan_folder_tree(tmp_path, seed=123)  # seed and class_split play no part here
    rows = table.to_pylist()
    assert report.layout == "split folders"
    assert {(r["split"], r["class_name"], r["label"]) for r in rows} == {
        ("train", "a", 0), ("train", "b", 1), ("train", "c", 2), ("val", "d", 3), ("test", "e", 4), ("test", "f", 5)
    }
    assert {r["video_id"] for r in rows if r["class_name"] == "a"} == {"a/v1", "a/sub/v2"}
    assert report.non_video == {".txt": 1}


def test_folder_tree_errors(tmp_path: Path):
    with pytest.raises(mf.ManifestError, match="does not exist"):
        mf.from_folder_tree(tmp_path / "nope")
    touch(tmp_path / "x" / "notes.txt")
    with pytest.raises(mf.ManifestError, match=r"no videos .* found under .*<videos>/<class>/<file>"):
        mf.from_folder_tree(tmp_path)
    class_tree(tmp_path, 4)
    with pytest.raises(mf.ManifestError, match="summing to 1"):
        mf.from_folder_tree(tmp_path, class_split=(0.7, 0.2, 0.2))
    touch(tmp_path / "class00" / "clip0.webm")  # same video id as clip0.mp4
    with pytest.raises(mf.ManifestError, match="class00/clip0"):
        mf.from_folder_tree(tmp_path)

    partial = tmp_path / "partial"
    touch(partial / "train" / "a" / "v.mp4")
    touch(partial / "test" / "b" / "v.mp4")
    with pytest.raises(mf.ManifestError, match="not val/"):
        mf.from_folder_tree(partial)


# ---------------------------------------------------------------- standard split lists
@needs_splits
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_split_lists_match_published_sizes(name: str):
    entries = mf.read_split_lists(SPLITS_DIR, name)
    classes, videos = PUBLISHED[name]
    assert tuple(len({e.class_name for e in entries[s]}) for s in mf.SPLITS) == classes
    assert tuple(len(entries[s]) for s in mf.SPLITS) == videos
    spec = mf.BENCHMARKS[name]
    assert (spec.classes, spec.videos) == PUBLISHED[name]
    assert spec.hflip is not name.startswith("ssv2")  # never flip SSv2: "left to right" labels


# How each fake video root is laid out, to exercise every lookup location.
LAYOUTS = {
    "ssv2_otam": ("flat", ".webm"),  # the SSv2 release: one folder of <id>.webm
    "ssv2_cmn": ("flat", ".webm"),
    "kinetics_cmn": ("class", ".mp4"),  # <class>/<id>.mp4
    "ucf_arn": ("class", ".avi"),
    "hmdb_arn": ("split", ".avi"),  # <split>/<class>/<id>.avi
}


def fake_video_root(root: Path, entries: dict[str, list[mf.ListEntry]], layout: str, ext: str) -> dict[str, set[str]]:
    """Create a subset of the listed videos: every video of the 2 smallest classes per split, plus every
    97th line of the rest; returns split -> created video ids."""
    created: dict[str, set[str]] = {}
    for split, es in entries.items():
        sizes = Counter(e.class_key for e in es)
        full = {c for c, _ in sorted(sizes.items(), key=lambda kv: (kv[1], kv[0]))[:2]}
        chosen = [e for i, e in enumerate(es) if e.class_key in full or i % 97 == 0]
        for e in chosen:
            rel = {"flat": f"{e.vid}{ext}", "class": f"{e.class_key}/{e.vid}{ext}",
                   "split": f"{split}/{e.class_key}/{e.vid}{ext}"}[layout]
            touch(root / rel)
        created[split] = {e.video_id for e in chosen}
    # Decoys that must not count as found: a listed id with a non-video suffix, and a hidden file.
    missing = next(e for e in entries["test"] if e.video_id not in created["test"])
    touch(root / f"{missing.vid}.txt")
    touch(root / f".{missing.vid}{ext}")
    return created


@needs_splits
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_split_lists_found_and_missing(tmp_path: Path, name: str):
    entries = mf.read_split_lists(SPLITS_DIR, name)
    created = fake_video_root(tmp_path, entries, *LAYOUTS[name])
    table, report = mf.from_split_lists(SPLITS_DIR, name, tmp_path)

    for split in mf.SPLITS:
        c = report.counts[split]
        assert c.listed == len(entries[split])
        assert c.found == len(created[split])
        assert c.missing == c.listed - len(created[split])
        assert c.missing_sample and all(v not in created[split] for v in c.missing_sample)
    assert table.num_rows == sum(len(v) for v in created.values())
    rows = table.to_pylist()
    assert {r["video_id"] for r in rows} == set().union(*created.values())
    assert all(Path(r["path"]).is_file() and Path(r["path"]).suffix == LAYOUTS[name][1] for r in rows)
    assert "missing" in report.summary() and str(report.missing) in report.summary()
    mf.validate_manifest(table)

    # Labels come from the listed classes, so they do not depend on which videos were found.
    listed = {s: {e.class_name for e in es} for s, es in entries.items()}
    n_train, n_val = len(listed["train"]), len(listed["val"])
    for r in rows:
        lo, hi = {"train": (0, n_train), "val": (n_train, n_train + n_val),
                  "test": (n_train + n_val, n_train + n_val + len(listed["test"]))}[r["split"]]
        assert lo <= r["label"] < hi

    with pytest.raises(mf.ManifestError, match=f"require_all: {report.missing} of {report.listed}"):
        mf.from_split_lists(SPLITS_DIR, name, tmp_path, require_all=True)


@needs_splits
def test_split_lists_all_present_hmdb(tmp_path: Path):
    entries = mf.read_split_lists(SPLITS_DIR, "hmdb_arn")
    for es in entries.values():
        for e in es:
            touch(tmp_path / e.class_key / f"{e.vid}.avi")
    table, report = mf.from_split_lists(SPLITS_DIR, "hmdb_arn", tmp_path, require_all=True)
    assert report.missing == 0
    classes, videos = PUBLISHED["hmdb_arn"]
    per_split = {s: [r for r in table.to_pylist() if r["split"] == s] for s in mf.SPLITS}
    assert tuple(len({r["class_name"] for r in per_split[s]}) for s in mf.SPLITS) == classes
    assert tuple(len(per_split[s]) for s in mf.SPLITS) == videos
    assert "note:" not in report.summary()  # the lists have the published sizes
    summary = mf.summarize(table)
    assert "train" in summary and "4280" in summary and "1292" in summary


@needs_splits
def test_ssv2_otam_class_names(tmp_path: Path):
    names = {s: (SPLITS_DIR / "ssv2_OTAM" / f"classnames_{s}.txt").read_text().splitlines() for s in ("train", "test")}
    lines = {s: (SPLITS_DIR / "ssv2_OTAM" / f"{s}list07.txt").read_text().splitlines()[:40] for s in mf.SPLITS}
    for s in mf.SPLITS:
        for line in lines[s]:
            touch(tmp_path / f"{line.split('/')[1]}.webm")
    table, _ = mf.from_split_lists(SPLITS_DIR, "ssv2_otam", tmp_path)
    by_id = {r["video_id"]: r for r in table.to_pylist()}
    for s in mf.SPLITS:
        for line in lines[s]:
            key = line.split("/")[0]
            index = int(key[len(s):])
            expected = key if s == "val" else names[s][index]  # val class names are not published
            assert by_id[line]["class_name"] == expected
    assert by_id["train8/78687"]["class_name"] == names["train"][8]
    assert by_id["train8/78687"]["path"] == str(tmp_path.resolve() / "78687.webm")


def test_split_lists_lookup_order_and_errors(tmp_path: Path):
    splits = tmp_path / "splits"
    lists = {"train": ["air drumming/a1", "air drumming/a2", "bowling/b1"], "val": ["cooking/c1"],
             "test": ["dancing/d1", "dancing/d2"]}
    for s, lines in lists.items():
        touch(splits / "kinetics_CMN" / f"{s}list03.txt").write_text("\n".join(lines) + "\n\n")
    videos = tmp_path / "videos"
    touch(videos / "air drumming" / "a1.mp4")
    touch(videos / "a1.webm")  # the class folder comes first
    touch(videos / "air_drumming" / "a2.MKV")  # spaces as underscores, any case of suffix
    touch(videos / "train" / "bowling" / "b1.avi")  # <split>/<class>/
    touch(videos / "train" / "cooking" / "c1.mp4")  # Kinetics' own train/ holding a few-shot val video
    touch(videos / "dancing" / "d1.mov")
    touch(videos / "dancing" / "d1.avi")  # one video in two containers: mp4 > webm > mkv > avi > mov
    touch(videos / "dancing" / "d2.txt")

    table, report = mf.from_split_lists(splits, "kinetics_cmn", videos)
    paths = {r["video_id"]: Path(r["path"]).relative_to(videos.resolve()).as_posix() for r in table.to_pylist()}
    assert paths == {"air drumming/a1": "air drumming/a1.mp4", "air drumming/a2": "air_drumming/a2.MKV",
                     "bowling/b1": "train/bowling/b1.avi", "cooking/c1": "train/cooking/c1.mp4",
                     "dancing/d1": "dancing/d1.avi"}
    assert report.counts["test"].missing_sample == ["dancing/d2"]
    assert [r["label"] for r in table.to_pylist()] == [0, 0, 1, 2, 3]
    assert "note: the train list has 2 classes / 3 videos" in report.summary()

    with pytest.raises(mf.ManifestError, match="unknown benchmark 'k400'.*ssv2_otam"):
        mf.from_split_lists(splits, "k400", videos)
    with pytest.raises(mf.ManifestError, match=r"ucf_ARN.*--splits"):
        mf.from_split_lists(splits, "ucf_arn", videos)
    (splits / "kinetics_CMN" / "vallist03.txt").unlink()
    with pytest.raises(mf.ManifestError, match=r"vallist03\.txt not found.*--splits"):
        mf.from_split_lists(splits, "kinetics_cmn", videos)
    touch(splits / "kinetics_CMN" / "vallist03.txt").write_text("no-slash-here\n")
    with pytest.raises(mf.ManifestError, match=r"vallist03\.txt:1: expected 'class/video_id'"):
        mf.from_split_lists(splits, "kinetics_cmn", videos)
    touch(splits / "kinetics_CMN" / "vallist03.txt").write_text("cooking/c1\n")
    with pytest.raises(mf.ManifestError, match="none of the 6 videos"):
        mf.from_split_lists(splits, "kinetics_cmn", tmp_path / "splits")


# ---------------------------------------------------------------- validation, summary, I/O
def good_records(root: Path) -> list[dict]:
    rows = []
    for split, classes in {"train": ["a", "b"], "val": ["c"], "test": ["d"]}.items():
        for c in classes:
            for v in range(2):
                path = touch(root / c / f"{v}.mp4")
                rows.append({"video_id": f"{c}/{v}", "path": str(path), "label": "abcd".index(c),
                             "class_name": c, "split": split})
    return rows


def test_validate_accepts_good_manifest(tmp_path: Path):
    rows = good_records(tmp_path)
    rows.append({**rows[0], "video_id": "a/remote", "path": "s3://bucket/a/remote.mp4"})  # URIs are not checked
    mf.validate_manifest(mf.from_records(rows))


def test_validate_reports_each_problem(tmp_path: Path):
    rows = good_records(tmp_path)
    with pytest.raises(mf.ManifestError, match="duplicate video_id.*'a/0'"):
        mf.validate_manifest(mf.manifest_table([*rows, dict(rows[0])]))
    with pytest.raises(mf.ManifestError, match=r"more than one split.*'a' in train, test"):
        mf.validate_manifest(mf.manifest_table([*rows, {**rows[0], "video_id": "a/9", "split": "test"}]))
    with pytest.raises(mf.ManifestError, match=r"label\(s\) map to more than one class name: 0 -> \['a', 'z'\]"):
        mf.validate_manifest(mf.manifest_table([*rows, {**rows[0], "video_id": "z/0", "class_name": "z"}]))
    with pytest.raises(mf.ManifestError, match=r"class name\(s\) map to more than one label: 'a' -> \[0, 7\]"):
        mf.validate_manifest(mf.manifest_table([*rows, {**rows[0], "video_id": "a/7", "label": 7}]))
    with pytest.raises(mf.ManifestError, match=r"unknown split value\(s\) \{'validation': 1\}"):
        mf.validate_manifest(mf.manifest_table([*rows, {**rows[0], "video_id": "a/8", "split": "validation"}]))
    os.remove(rows[1]["path"])
    os.remove(rows[2]["path"])
    with pytest.raises(mf.ManifestError, match=r"2 of 8 video path\(s\) do not exist.*a/1\.mp4.*b/0\.mp4"):
        mf.validate_manifest(mf.manifest_table(rows))
    mf.validate_manifest(mf.manifest_table(rows), check_paths=False)
    with pytest.raises(mf.ManifestError, match="empty"):
        mf.validate_manifest(mf.manifest_table([]))
    with pytest.raises(mf.ManifestError, match=r"lacks column\(s\) \['split'\]"):
        mf.validate_manifest(mf.manifest_table(rows).drop(["split"]))


def test_validate_lists_all_problems_at_once(tmp_path: Path):
    rows = good_records(tmp_path)
    bad = [*rows, dict(rows[0]), {**rows[0], "video_id": "a/9", "split": "test"}]
    with pytest.raises(mf.ManifestError, match="2 problem") as info:
        mf.validate_manifest(mf.manifest_table(bad))
    assert "duplicate" in str(info.value) and "more than one split" in str(info.value)


def test_validate_relative_paths_against_root(tmp_path: Path):
    rows = [{**r, "path": os.path.relpath(r["path"], tmp_path)} for r in good_records(tmp_path)]
    mf.validate_manifest(mf.manifest_table(rows), root=tmp_path)
    with pytest.raises(mf.ManifestError, match="do not exist"):
        mf.validate_manifest(mf.manifest_table(rows), root=tmp_path / "elsewhere")


def test_summarize(tmp_path: Path):
    rows = good_records(tmp_path)
    rows.append({**rows[0], "video_id": "a/extra"})
    lines = mf.summarize(mf.manifest_table(rows)).splitlines()
    assert lines[0].split() == ["split", "classes", "videos", "min/class", "max/class"]
    assert lines[1].split() == ["train", "2", "5", "2", "3"]
    assert lines[2].split() == ["val", "1", "2", "2", "2"]
    assert lines[3].split() == ["test", "1", "2", "2", "2"]
    assert lines[4].split() == ["total", "4", "9"]


def test_write_read_round_trip(tmp_path: Path):
    rows = good_records(tmp_path / "videos")
    rows = [{**r, "path": os.path.relpath(r["path"], tmp_path / "out")} for r in rows]  # relative to the manifest
    rows[0]["num_frames"] = 32
    out = mf.write_manifest(mf.from_records(rows), tmp_path / "out" / "manifest.parquet")
    assert [p.name for p in out.parent.iterdir()] == ["manifest.parquet"]  # no temporary left behind
    table = mf.read_manifest(out)
    assert table.schema.equals(mf.MANIFEST_SCHEMA)
    back = table.to_pylist()
    assert [r["video_id"] for r in back] == [r["video_id"] for r in rows]
    assert back[0]["num_frames"] == 32 and back[1]["num_frames"] is None
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in back)
    assert back[0]["path"] == str((tmp_path / "videos" / "a" / "0.mp4").resolve())
    raw = mf.read_manifest(out, resolve_paths=False)
    assert raw["path"][0].as_py() == os.path.join("..", "videos", "a", "0.mp4")
    mf.validate_manifest(table)

    # A table without num_frames is written with the column as nulls.
    out2 = mf.write_manifest(mf.from_records(rows).drop(["num_frames"]), tmp_path / "m2.parquet")
    assert mf.read_manifest(out2)["num_frames"].null_count == len(rows)
    with pytest.raises(mf.ManifestError, match="does not exist.*fsar manifest"):
        mf.read_manifest(tmp_path / "missing.parquet")


def test_from_records_is_manifest_table():
    assert mf.from_records is mf.manifest_table
    with pytest.raises(mf.ManifestError, match=r"lack key\(s\) \['split'\]"):
        mf.from_records([{"video_id": "a", "path": "p", "label": 0, "class_name": "a"}])
    assert isinstance(mf.from_records([]), pa.Table)
