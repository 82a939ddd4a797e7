"""Manifest validation, summary and Parquet round trip."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from helpers import touch

from fsar.data import manifest as mf


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



def test_a_manifest_on_object_storage_resolves_relative_paths_to_uris(tmp_path: Path, s3):
    rows = [{**r, "path": f"videos/{r['class_name']}/{i}.mp4"} for i, r in enumerate(good_records(tmp_path / "v"))]
    uri = mf.write_manifest(mf.from_records(rows), f"{s3}/data/manifest.parquet")
    assert uri == f"{s3}/data/manifest.parquet"
    back = mf.read_manifest(uri)
    assert back["path"].to_pylist() == [f"{s3}/data/{r['path']}" for r in rows]
    assert mf.manifest_rows(uri) == len(rows)
    assert mf.read_manifest_rows(uri, 1, 3)["video_id"].to_pylist() == [r["video_id"] for r in rows[1:3]]
    assert mf.manifest_classes(uri) == sorted({(r["label"], r["class_name"]) for r in rows})
    with pytest.raises(mf.ManifestError, match="does not exist"):
        mf.read_manifest(f"{s3}/data/absent.parquet")


def test_rows_of_a_large_manifest_are_read_by_row_group(tmp_path: Path, monkeypatch):
    """A worker reading rows [a, b) of a manifest reads the row groups that hold them, not the file."""
    monkeypatch.setattr(mf, "MANIFEST_ROW_GROUP", 10)
    rows = [{"video_id": f"v{i}", "path": f"/v/{i}.mp4", "label": i % 3, "class_name": f"c{i % 3}", "split": "train"}
            for i in range(95)]
    path = mf.write_manifest(rows, tmp_path / "m.parquet")
    import pyarrow.parquet as pq

    assert pq.ParquetFile(path).metadata.num_row_groups == 10
    read_groups = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: read_groups.append(list(groups)) or real(self, groups, **kw))
    for start, stop in [(0, 7), (8, 33), (90, 95), (40, 40)]:
        got = mf.read_manifest_rows(path, start, stop)["video_id"].to_pylist()
        assert got == [f"v{i}" for i in range(start, stop)]
    assert read_groups == [[0], [0, 1, 2, 3], [9]]


def test_manifest_columns_is_the_table_of_the_rows(tmp_path: Path):
    rows = good_records(tmp_path)
    rows[3]["num_frames"] = 12
    columns = {c: [r[c] for r in rows] for c in ("video_id", "path", "label", "class_name", "split")}
    expected = mf.manifest_table(rows)
    assert mf.manifest_columns(**columns, num_frames=[r.get("num_frames") for r in rows]).equals(expected)
    arrays = {c: pa.array(v) for c, v in columns.items()}  # Arrow arrays are taken as they are
    assert mf.manifest_columns(**arrays).equals(mf.manifest_table([{**r, "num_frames": None} for r in rows]))
    with pytest.raises(mf.ManifestError, match="differ in length"):
        mf.manifest_columns(**{**columns, "split": columns["split"][:-1]})


def test_validate_counts_and_orders_like_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rows = good_records(tmp_path)
    extra = [{**rows[0], "video_id": f"a/{i}", "split": s} for i, s in enumerate(["zz", "dev", "zz", ""], start=10)]
    extra.append({**rows[0], "video_id": "", "class_name": None})
    with pytest.raises(mf.ManifestError) as info:
        mf.validate_manifest(mf.manifest_table([*rows, *extra]), check_paths=False)
    text = str(info.value)
    assert "unknown split value(s) {'zz': 2, 'dev': 1}" in text  # first appearance order, counts per value
    assert "1 row(s) have no video_id" in text and "1 row(s) have no split" in text
    assert "1 row(s) have no class_name" in text

    # The path check runs in chunks on threads; the unreadable paths still come in row order.
    monkeypatch.setattr(mf, "PATH_CHUNK", 3)
    for r in rows[1::3]:
        os.remove(r["path"])
    gone = [r["path"] for r in rows[1::3]]
    for progress in (False, True):
        assert mf.unreadable_paths(mf.manifest_table(rows), progress=progress) == (len(rows), gone)
    with pytest.raises(mf.ManifestError, match=rf"{len(gone)} of {len(rows)} video path\(s\) do not exist"):
        mf.validate_manifest(mf.manifest_table(rows), progress=True)


def test_a_file_that_is_not_parquet_is_refused_as_a_manifest_with_its_path(tmp_path):
    from fsar.data.manifest import ManifestError, read_manifest

    bad = tmp_path / "manifest.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ManifestError, match=f"manifest {bad} is not a Parquet file that reads.*rebuild it"):
        read_manifest(bad)
