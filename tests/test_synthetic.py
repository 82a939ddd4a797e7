"""Synthetic motion dataset: class library, rendering, mp4 round trips, class splits, generation."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fsar.data.manifest import read_manifest, validate_manifest
from fsar.data.synthetic import (
    SynthConfig,
    SynthError,
    motion_classes,
    render_clip,
    select_classes,
    video_rng,
    write_mp4,
)

CLASSES = {c.name: c for c in motion_classes()}


def _render(name: str, seed: int, *, frames: int = 16, size: int = 64) -> np.ndarray:
    return render_clip(CLASSES[name], np.random.default_rng(seed), frames=frames, size=size)


def _decode_pyav(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _decode_decord(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# ---------------------------------------------------------------- library
def test_library_has_reverse_pairs_with_unique_names():
    classes = motion_classes()
    assert len(classes) >= 100
    assert [c.id for c in classes] == list(range(len(classes)))
    assert len({c.name for c in classes}) == len(classes)
    assert len({c.slug for c in classes}) == len(classes)
    assert len({c.family for c in classes}) >= 8
    for c in classes:
        p = classes[c.partner]
        assert p.partner == c.id and p.id != c.id
        assert p.reversed != c.reversed and p.motion == c.motion and p.family == c.family
        assert c.slug and c.slug == c.slug.lower() and " " not in c.slug
    assert CLASSES["moving left to right"].partner == CLASSES["moving right to left"].id


# ---------------------------------------------------------------- rendering
def test_render_shape_dtype_and_length_range():
    lengths = set()
    for seed in range(12):
        video = _render("growing", seed, frames=16, size=48)
        assert video.dtype == np.uint8 and video.shape[1:] == (48, 48, 3)
        lengths.add(video.shape[0])
    assert min(lengths) >= 12 and max(lengths) <= 16 and len(lengths) > 1


def test_same_seed_same_frames_different_seed_different():
    for name in ("moving left to right", "knocking an object rightwards", "swinging to a stop"):
        a, b = _render(name, 7), _render(name, 7)
        assert np.array_equal(a, b)
        c = _render(name, 8)
        assert a.shape != c.shape or not np.array_equal(a, c)


def test_reversed_class_is_the_partner_played_backwards():
    classes = motion_classes()
    for pair in range(0, len(classes) // 2, 5):
        forward, backward = classes[2 * pair], classes[2 * pair + 1]
        assert not forward.reversed and backward.reversed
        fwd = render_clip(forward, np.random.default_rng(100 + pair), frames=12, size=32)
        bwd = render_clip(backward, np.random.default_rng(100 + pair), frames=12, size=32)
        assert np.array_equal(bwd, fwd[::-1]), forward.name
        assert not np.array_equal(fwd[0], fwd[-1]), f"{forward.name}: first and last frames are identical"


def _object_mask(name: str, seed: int, *, frames: int = 24, size: int = 64) -> np.ndarray:
    """(T, H, W) bool: where the object of ``name``'s video is. The background comes from the same seed's
    "fading in" video, whose first frame is the bare scene: render_clip draws the clip length and the
    scene (background, shapes, colours) before any motion parameter, and both classes use one object."""
    video = _render(name, seed, frames=frames, size=size)
    background = _render("fading in", seed, frames=frames, size=size)[0]
    return np.abs(video.astype(np.int16) - background).sum(axis=-1) > 45


def _centre_of_mass(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[: mask.shape[1], : mask.shape[2]]
    area = mask.sum(axis=(1, 2)).clip(min=1)
    return (mask * xs).sum(axis=(1, 2)) / area, (mask * ys).sum(axis=(1, 2)) / area


@pytest.mark.parametrize(("name", "axis", "sign"), [
    ("moving left to right", 0, 1), ("moving right to left", 0, -1),
    ("moving top to bottom", 1, 1), ("moving bottom to top", 1, -1),
])
def test_motion_direction_is_visible(name, axis, sign):
    for seed in range(10):
        mask = _object_mask(name, seed)
        assert mask.sum(axis=(1, 2)).min() > 0, "the object must be visible in every frame"
        position = _centre_of_mass(mask)[axis]
        travel = sign * (position[-1] - position[0])
        assert travel > 0.25 * 64, (name, seed, position)
        # Not just the end points: the path advances monotonically up to mask noise.
        assert (sign * np.diff(position) > -1.0).all(), (name, seed, position)


def test_approach_grows_and_recede_shrinks():
    for seed in range(10):
        area = _object_mask("approaching the camera", seed).sum(axis=(1, 2))
        assert area[0] > 0 and area[-1] > 3 * area[0], area
        area = _object_mask("moving away from the camera", seed).sum(axis=(1, 2))
        assert area[-1] > 0 and area[0] > 3 * area[-1], area


def test_videos_of_a_class_differ_in_appearance_and_length():
    cls = CLASSES["moving left to right"]
    videos = [render_clip(cls, video_rng(0, cls.id, i), frames=24, size=48) for i in range(6)]
    means = np.array([v.reshape(-1, 3).mean(axis=0) for v in videos])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(6, 1)]
    assert gaps.min() > 3.0, gaps
    assert len({len(v) for v in videos}) >= 3


# ---------------------------------------------------------------- mp4
def test_write_mp4_decodes_close_with_pyav_and_decord(tmp_path):
    for i, name in enumerate(("rotating clockwise", "pushing an object rightwards", "fading in")):
        video = _render(name, i, frames=20, size=64)
        path = write_mp4(tmp_path / f"v{i}.mp4", video, 12)
        assert path.is_file() and not list(tmp_path.glob(".*.tmp"))
        by_av, by_decord = _decode_pyav(path), _decode_decord(path)
        assert by_av.shape == video.shape and by_decord.shape == video.shape
        assert _mae(by_av, video) < 6.0
        assert _mae(by_decord, video) < 6.0
        assert _mae(by_av, by_decord) < 2.0
        # Frame-accurate: every decoded frame is nearest to its own rendered frame.
        assert _mae(by_decord[-1], video[-1]) < _mae(by_decord[-1], video[0])


def test_write_mp4_rejects_odd_sizes_and_wrong_dtype(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "odd.mp4", np.zeros((3, 33, 32, 3), np.uint8), 12)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "float.mp4", np.zeros((3, 32, 32, 3), np.float32), 12)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- class choice and splits
def test_default_split_is_64_12_24_of_whole_reverse_pairs():
    chosen = select_classes(SynthConfig(out=Path("unused")))
    assert [len(chosen[s]) for s in ("train", "val", "test")] == [64, 12, 24]
    ids = [c.id for cs in chosen.values() for c in cs]
    assert len(set(ids)) == 100
    for classes in chosen.values():
        members = {c.id for c in classes}
        assert all(c.partner in members for c in classes)
    again = select_classes(SynthConfig(out=Path("unused")))
    assert again == chosen
    other = select_classes(SynthConfig(out=Path("unused"), seed=1))
    assert {c.id for c in other["test"]} != {c.id for c in chosen["test"]}


@pytest.mark.parametrize(("classes", "split"), [(7, None), (6, None), (128, (63, 33, 32)), (120, (64, 31, 25))])
def test_odd_split_counts_keep_classes_unique(classes, split):
    config = SynthConfig(out=Path("unused"), classes=classes, class_split=split)
    chosen = select_classes(config)
    counts = config.split_counts()
    assert tuple(len(chosen[s]) for s in ("train", "val", "test")) == counts
    ids = [c.id for cs in chosen.values() for c in cs]
    assert len(ids) == len(set(ids)) == classes
    split_of = {c.id: s for s, cs in chosen.items() for c in cs}
    straddling = sum(1 for i, s in split_of.items() if split_of.get(motion_classes()[i].partner, s) != s) // 2
    # A pair is split across two splits only when no spare pair is left (the full 128-class library).
    assert straddling == (1 if classes == 128 else 0)


def test_config_errors_name_the_setting():
    with pytest.raises(SynthError, match="classes=500"):
        SynthConfig(out=Path("x"), classes=500).validate()
    with pytest.raises(SynthError, match="size=63"):
        SynthConfig(out=Path("x"), size=63).validate()
    with pytest.raises(SynthError, match="class_split"):
        SynthConfig(out=Path("x"), classes=10, class_split=(6, 2, 1)).validate()
    with pytest.raises(SynthError, match="seed"):
        SynthConfig(out=Path("x"), seed=-1).validate()


# ---------------------------------------------------------------- generation
def _tiny(out: Path, **kw) -> SynthConfig:
    return SynthConfig(out=out, **({"classes": 6, "videos_per_class": 3, "frames": 12, "size": 64, "workers": 1} | kw))


def test_generate_writes_manifest_classes_and_resumes(tmp_path):
    out = tmp_path / "synth"
    manifest = _tiny(out).out / "manifest.parquet"
    assert _generate(_tiny(out)) == manifest
    table = read_manifest(manifest)
    validate_manifest(table)
    rows = table.to_pylist()
    assert len(rows) == 18
    splits_of = defaultdict(set)
    for r in rows:
        splits_of[r["class_name"]].add(r["split"])
        assert Path(r["path"]).is_file()
        assert Path(r["path"]).relative_to(out.resolve()).parts[:2] == ("videos", r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    per_split = defaultdict(set)
    for r in rows:
        per_split[r["split"]].add(r["class_name"])
    assert {s: len(c) for s, c in per_split.items()} == {"train": 4, "val": 1, "test": 1}

    classes = json.loads((out / "classes.json").read_text())
    assert sorted(c["name"] for c in classes) == sorted(splits_of)
    for c in classes:
        assert {c["split"]} == splits_of[c["name"]]
        assert motion_classes()[c["id"]].name == c["name"] and c["partner"] == motion_classes()[c["id"]].partner
    # Paths in the file are relative to the dataset folder, so the folder can move.
    import pyarrow.parquet as pq

    assert all(not Path(p).is_absolute() for p in pq.read_table(manifest)["path"].to_pylist())

    # num_frames is the true decoded length, and the content is the rendered clip of that video.
    first = rows[0]
    decoded = _decode_decord(Path(first["path"]))
    assert len(decoded) == first["num_frames"]
    cid, index = int(first["video_id"][1:4]), int(first["video_id"].split("_v")[1])
    rendered = render_clip(motion_classes()[cid], video_rng(0, cid, index), frames=12, size=64)
    assert _mae(decoded, rendered) < 6.0

    files = sorted(p for p in out.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    _generate(_tiny(out))
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files

    # A missing video is written again, and only that one.
    victim = Path(rows[5]["path"])
    victim.unlink()
    _generate(_tiny(out))
    assert victim.is_file()
    assert {p: p.stat().st_mtime_ns for p in files if p != victim and p.suffix == ".mp4"} == {
        p: t for p, t in stamps.items() if p != victim and p.suffix == ".mp4"}

    with pytest.raises(SynthError, match="size"):
        _generate(_tiny(out, size=48))


def test_generate_is_independent_of_worker_count(tmp_path):
    one = read_manifest(_generate(_tiny(tmp_path / "one", classes=4, class_split=(2, 1, 1), videos_per_class=2)))
    two = read_manifest(_generate(_tiny(tmp_path / "two", classes=4, class_split=(2, 1, 1), videos_per_class=2,
                                        workers=2)))
    assert one.drop_columns(["path"]).equals(two.drop_columns(["path"]))
    for a, b in zip(one["path"].to_pylist(), two["path"].to_pylist(), strict=True):
        assert np.array_equal(_decode_pyav(Path(a)), _decode_pyav(Path(b)))


def _generate(config: SynthConfig) -> Path:
    from fsar.data.synthetic import generate

    return generate(config, progress=False)
