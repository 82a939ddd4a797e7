"""Manifests from the standard split lists."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from helpers import touch

from fsar.data import manifest as mf
from fsar.data import split_lists as sl

SPLITS_DIR = sl.PACKAGED_SPLITS  # the lists that ship with fsar

# The published sizes, copied by hand from the benchmarks' papers: classes and videos per split.
PUBLISHED = {
    "ssv2_otam": ((64, 12, 24), (67013, 1926, 2857)),
    "ssv2_cmn": ((64, 12, 24), (6400, 1200, 2400)),
    "kinetics_cmn": ((64, 12, 24), (6400, 1200, 2400)),
    "ucf_arn": ((70, 10, 21), (9154, 1421, 2745)),
    "hmdb_arn": ((31, 10, 10), (4280, 1194, 1292)),
}


# ---------------------------------------------------------------- standard split lists
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_split_lists_match_published_sizes(name: str):
    entries = sl.read_split_lists(SPLITS_DIR, name)
    classes, videos = PUBLISHED[name]
    assert tuple(len({e.class_name for e in entries[s]}) for s in mf.SPLITS) == classes
    assert tuple(len(entries[s]) for s in mf.SPLITS) == videos
    spec = sl.BENCHMARKS[name]
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


def fake_video_root(root: Path, entries: dict[str, list[sl.ListEntry]], layout: str, ext: str) -> dict[str, set[str]]:
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


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_split_lists_found_and_missing(tmp_path: Path, name: str):
    entries = sl.read_split_lists(SPLITS_DIR, name)
    created = fake_video_root(tmp_path, entries, *LAYOUTS[name])
    table, report = sl.from_split_lists(SPLITS_DIR, name, tmp_path)

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
        sl.from_split_lists(SPLITS_DIR, name, tmp_path, require_all=True)


def test_split_lists_all_present_hmdb(tmp_path: Path):
    entries = sl.read_split_lists(SPLITS_DIR, "hmdb_arn")
    for es in entries.values():
        for e in es:
            touch(tmp_path / e.class_key / f"{e.vid}.avi")
    table, report = sl.from_split_lists(SPLITS_DIR, "hmdb_arn", tmp_path, require_all=True)
    assert report.missing == 0
    classes, videos = PUBLISHED["hmdb_arn"]
    per_split = {s: [r for r in table.to_pylist() if r["split"] == s] for s in mf.SPLITS}
    assert tuple(len({r["class_name"] for r in per_split[s]}) for s in mf.SPLITS) == classes
    assert tuple(len(per_split[s]) for s in mf.SPLITS) == videos
    assert "note:" not in report.summary()  # the lists have the published sizes
    summary = mf.summarize(table)
    assert "train" in summary and "4280" in summary and "1292" in summary


def test_ssv2_otam_class_names(tmp_path: Path):
    names = {s: (SPLITS_DIR / "ssv2_OTAM" / f"classnames_{s}.txt").read_text().splitlines() for s in ("train", "test")}
    lines = {s: (SPLITS_DIR / "ssv2_OTAM" / f"{s}list07.txt").read_text().splitlines()[:40] for s in mf.SPLITS}
    for s in mf.SPLITS:
        for line in lines[s]:
            touch(tmp_path / f"{line.split('/')[1]}.webm")
    table, _ = sl.from_split_lists(SPLITS_DIR, "ssv2_otam", tmp_path)
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

    table, report = sl.from_split_lists(splits, "kinetics_cmn", videos)
    paths = {r["video_id"]: Path(r["path"]).relative_to(videos.resolve()).as_posix() for r in table.to_pylist()}
    assert paths == {"air drumming/a1": "air drumming/a1.mp4", "air drumming/a2": "air_drumming/a2.MKV",
                     "bowling/b1": "train/bowling/b1.avi", "cooking/c1": "train/cooking/c1.mp4",
                     "dancing/d1": "dancing/d1.avi"}
    assert report.counts["test"].missing_sample == ["dancing/d2"]
    assert [r["label"] for r in table.to_pylist()] == [0, 0, 1, 2, 3]
    assert "note: the train list has 2 classes / 3 videos" in report.summary()

    with pytest.raises(mf.ManifestError, match="unknown benchmark 'k400'.*ssv2_otam"):
        sl.from_split_lists(splits, "k400", videos)
    with pytest.raises(mf.ManifestError, match=r"ucf_ARN.*--splits"):
        sl.from_split_lists(splits, "ucf_arn", videos)
    (splits / "kinetics_CMN" / "vallist03.txt").unlink()
    with pytest.raises(mf.ManifestError, match=r"vallist03\.txt not found.*--splits"):
        sl.from_split_lists(splits, "kinetics_cmn", videos)
    touch(splits / "kinetics_CMN" / "vallist03.txt").write_text("no-slash-here\n")
    with pytest.raises(mf.ManifestError, match=r"vallist03\.txt:1: expected 'class/video_id'"):
        sl.from_split_lists(splits, "kinetics_cmn", videos)
    touch(splits / "kinetics_CMN" / "vallist03.txt").write_text("cooking/c1\n")
    with pytest.raises(mf.ManifestError, match="none of the 6 videos"):
        sl.from_split_lists(splits, "kinetics_cmn", tmp_path / "splits")




def test_split_lists_columns_match_rows_by_hand(tmp_path: Path):
    """The columnar build gives the table of one dict per found video, in list order; the bar changes nothing."""
    entries = sl.read_split_lists(SPLITS_DIR, "ucf_arn")
    labels = mf.assign_labels({s: [e.class_name for e in es] for s, es in entries.items()})
    rows = []
    for split, es in entries.items():
        for i, e in enumerate(es):
            if i % 4 == 0:
                continue  # missing
            folder, suffix = [("", ".avi"), (f"{e.class_key}/", ".MP4"), (f"{split}/{e.class_key}/", ".mkv")][i % 4 - 1]
            found = touch(tmp_path / f"{folder}{e.vid}{suffix}").relative_to(tmp_path).as_posix()
            if i % 7 == 0:  # a second container beside it: webm goes before mkv and avi, after mp4
                other = touch(tmp_path / f"{folder}{e.vid}.webm").relative_to(tmp_path).as_posix()
                found = found if suffix == ".MP4" else other
            rows.append({"video_id": e.video_id, "path": str(tmp_path.resolve() / found), "label": labels[e.class_name],
                         "class_name": e.class_name, "split": split})
    for progress in (False, True):
        table, report = sl.from_split_lists(SPLITS_DIR, "ucf_arn", tmp_path, progress=progress)
        assert table.equals(mf.manifest_table(rows))
        assert report.found == len(rows)


def test_written_lists_name_a_manifests_videos_and_read_back_to_the_same_manifest(tmp_path: Path, synth):
    import pyarrow.parquet as pq

    from fsar.data.split_lists import from_split_lists, write_split_lists

    root = write_split_lists(synth, tmp_path / "lists", "hmdb_arn")
    assert (root / "hmdb_ARN" / "testlist03.txt").is_file()
    table, report = from_split_lists(root, "hmdb_arn", synth.parent / "videos")
    original = pq.read_table(synth)
    assert report.summary() and table.num_rows == original.num_rows
    by_path = {Path(p).name: s for p, s in zip(original["path"].to_pylist(), original["split"].to_pylist(), strict=True)}
    assert {Path(p).name: s for p, s in zip(table["path"].to_pylist(), table["split"].to_pylist(), strict=True)} == by_path
