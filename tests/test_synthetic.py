"""Synthetic motion dataset: class library, rendering, mp4 round trips, class splits, generation, and the
mechanism variants (ground-truth masks, clutter, misalignment)."""

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
    action_clock,
    action_timing,
    motion_classes,
    render_clip,
    render_video,
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
    with pytest.raises(SynthError, match="clutter=-1"):
        SynthConfig(out=Path("x"), clutter=-1).validate()
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(SynthError, match="misalign"):
            SynthConfig(out=Path("x"), misalign=bad).validate()


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


# ---------------------------------------------------------------- variants: misalignment, clutter, masks
def _video(name: str, seed: int, *, frames: int = 16, size: int = 64, **variants):
    return render_video(CLASSES[name], np.random.default_rng(seed), frames=frames, size=size, **variants)


def test_variants_off_render_the_plain_frames_bit_for_bit():
    for c in motion_classes()[::9]:
        plain = render_clip(c, video_rng(0, c.id, 1), frames=12, size=32)
        off = render_video(c, video_rng(0, c.id, 1), frames=12, size=32, clutter=0, misalign=0.0, masks=True)
        assert np.array_equal(plain, off.frames), c.name
        assert off.masks is not None and off.masks.shape == plain.shape[:3] and off.masks.dtype == np.uint8
        assert render_video(c, video_rng(0, c.id, 1), frames=12, size=32).masks is None


def test_action_timing_law():
    t = np.linspace(0.0, 1.0, 9)
    assert np.array_equal(action_clock(t, 1.0, 0.0), t)  # the neutral clock is the clip's own, exactly
    rng = np.random.default_rng(0)
    for strength in (0.0, 0.5, 1.0):
        draws = np.array([action_timing(rng, strength) for _ in range(2000)])
        share, start = draws[:, 0], draws[:, 1]
        assert (share >= 1 - 0.6 * strength).all() and (share <= 1).all()
        assert (start >= 0).all() and (start + share <= 1 + 1e-12).all()
        if strength == 0:
            assert (share == 1).all() and (start == 0).all()
        else:  # the whole range is used: uniform in [1 − 0.6·s, 1], the start anywhere in the room left
            assert share.min() < 1 - 0.55 * strength and share.max() > 1 - 0.05 * strength
            assert np.quantile(start / (1 - share), [0.05, 0.95]) == pytest.approx([0.05, 0.95], abs=0.04)
    clock = action_clock(np.linspace(0.0, 1.0, 11), 0.5, 0.2)
    assert clock.tolist() == pytest.approx([0, 0, 0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1])


def _idle_ends(video: np.ndarray) -> int:
    """Frames at the start identical to the first plus frames at the end identical to the last."""
    same = [np.array_equal(a, b) for a, b in zip(video[:-1], video[1:], strict=True)]
    lead = next((i for i, s in enumerate(same) if not s), len(same))
    trail = next((i for i, s in enumerate(same[::-1]) if not s), len(same))
    return lead + trail


@pytest.mark.parametrize("name", ["moving left to right", "circling clockwise", "swinging to a stop"])
def test_misalignment_idles_around_the_same_motion(name):
    idle_plain, idle_misaligned = 0, 0
    for seed in range(10):
        plain = _video(name, seed, frames=24, size=32).frames
        shifted = _video(name, seed, frames=24, size=32, misalign=1.0).frames
        assert shifted.shape == plain.shape  # the clip length does not change
        # Same scene and motion, retimed: it starts at its start pose and ends at its end pose.
        assert np.array_equal(shifted[0], plain[0]) and np.array_equal(shifted[-1], plain[-1])
        idle_plain += _idle_ends(plain)
        idle_misaligned += _idle_ends(shifted)
    assert idle_misaligned > idle_plain + 2 * 10, (idle_plain, idle_misaligned)


@pytest.mark.parametrize("variants", [{"masks": True}, {"clutter": 2, "masks": True}, {"misalign": 1.0, "masks": True},
                                      {"clutter": 3, "misalign": 0.7, "masks": True}])
def test_reversed_partner_stays_the_exact_reverse_with_variants(variants):
    classes = motion_classes()
    for pair in range(0, len(classes) // 2, 7):
        forward, backward = classes[2 * pair], classes[2 * pair + 1]
        fwd = render_video(forward, np.random.default_rng(100 + pair), frames=12, size=32, **variants)
        bwd = render_video(backward, np.random.default_rng(100 + pair), frames=12, size=32, **variants)
        assert np.array_equal(bwd.frames, fwd.frames[::-1]), forward.name
        assert np.array_equal(bwd.masks, fwd.masks[::-1]), forward.name


def test_masks_are_what_is_drawn():
    for seed in range(8):
        for name in ("moving left to right", "growing", "rotating clockwise"):
            rendering = _video(name, seed, frames=16, size=64, masks=True)
            video, masks = rendering.frames, rendering.masks
            background = _render("fading in", seed, frames=16, size=64)[0]  # the bare scene, see _object_mask
            changed = np.abs(video.astype(np.int16) - background).sum(axis=-1)
            strong = changed > 45
            assert set(np.unique(masks).tolist()) <= {0, 1}  # one object: instance 1
            # Nothing but background where the mask is 0 and far from the object; the object where it is 1.
            assert (changed[masks == 1] > 0).all(), (name, seed)
            visible = strong.any(axis=(1, 2))
            assert (masks.sum(axis=(1, 2))[visible] > 0).all(), (name, seed)
            iou = (strong & (masks > 0)).sum() / (strong | (masks > 0)).sum()
            assert iou > 0.75, (name, seed, iou)
    # Two-object classes: the mover is instance 1 and the other object instance 2, both present.
    masks = _video("pushing an object rightwards", 3, masks=True).masks
    assert set(np.unique(masks).tolist()) == {0, 1, 2}


def test_clutter_moves_outside_the_actor_and_stays_out_of_the_masks():
    for seed in range(6):
        plain = _video("moving left to right", seed, frames=16, size=64, masks=True)
        cluttered = _video("moving left to right", seed, frames=16, size=64, masks=True, clutter=3)
        actor, actor_cluttered = plain.masks > 0, cluttered.masks > 0
        # Distractors only hide the actor (when in front); they never add to its mask.
        assert not (actor_cluttered & ~actor).any()
        distractor = (np.abs(cluttered.frames.astype(np.int16) - plain.frames).sum(axis=-1) > 30) & ~actor
        assert (distractor.sum(axis=(1, 2)) > 0).all(), seed  # distractors are in every frame
        assert not actor_cluttered[distractor].any()
        # They move all the time: where the actor never goes, consecutive frames differ, so subtracting
        # the video's temporal mean (temporal_centre) does not remove them.
        never_actor = (plain.frames == plain.frames[0]).all(axis=(0, -1))
        moved = (cluttered.frames[1:] != cluttered.frames[:-1]).any(axis=-1) & never_actor
        assert (moved.sum(axis=(1, 2)) > 0).all(), seed
        centred = cluttered.frames.astype(np.float32) - cluttered.frames.mean(axis=0)
        assert (np.abs(centred).max(axis=-1)[:, never_actor].max(axis=1) > 20).all(), seed


def test_clutter_differs_per_video_and_does_not_depend_on_misalignment():
    a = _video("growing", 0, clutter=2, masks=True)
    b = _video("growing", 1, clutter=2, masks=True)
    c = _video("growing", 0, clutter=2, masks=True, misalign=1.0)
    assert not np.array_equal(a.frames[0], b.frames[0])
    # Same distractors at every strength: where the actor is in neither video, the frames agree.
    neither = (a.masks == 0) & (c.masks == 0)
    plain, retimed = _video("growing", 0).frames, _video("growing", 0, misalign=1.0).frames
    untouched = neither & (plain == plain[0]).all(axis=(0, -1)) & (retimed == retimed[0]).all(axis=(0, -1))
    assert untouched.sum() > 0.5 * untouched[0].size
    assert np.array_equal(a.frames[untouched], c.frames[untouched])


def test_generate_variants_writes_masks_and_refuses_other_settings(tmp_path):
    from fsar.data.masks import load_masks, read_mask_file
    from fsar.data.sampling import segment_indices

    out = tmp_path / "variants"
    config = _tiny(out, classes=4, class_split=(2, 1, 1), videos_per_class=2, clutter=2, misalign=0.5, masks=True)
    manifest = _generate(config)
    stamp = json.loads((out / "synth.json").read_text())
    assert (stamp["masks"], stamp["clutter"], stamp["misalign"]) == (True, 2, 0.5)
    rows = read_manifest(manifest).to_pylist()
    assert len(rows) == 8
    for r in rows:
        masks, indices = read_mask_file(out / "masks" / f"{r['video_id']}.npz")
        assert masks.shape == (r["num_frames"], 64, 64) and indices.tolist() == list(range(r["num_frames"]))
        cid, index = int(r["video_id"][1:4]), int(r["video_id"].split("_v")[1])
        rendering = render_video(motion_classes()[cid], video_rng(0, cid, index), frames=12, size=64, clutter=2,
                                 misalign=0.5, masks=True)
        assert np.array_equal(masks, rendering.masks)
        assert _mae(_decode_decord(Path(r["path"])), rendering.frames) < 6.0
    # Usable as mask_files: load_masks at a store's sampled frames, pooled to its grid.
    ids = [r["video_id"] for r in rows]
    sampled = np.stack([segment_indices(r["num_frames"], 8) for r in rows])
    pooled, valid = load_masks(out / "masks", ids, sampled, 4)
    assert valid.all() and pooled.shape == (8, 8, 4, 4)
    assert (pooled.sum(axis=(1, 2, 3)) > 0).all() and pooled.max() <= 1.0

    files = sorted(p for p in out.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    _generate(config)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    # A lost mask file is rendered again; its video is not re-encoded.
    victim = out / "masks" / f"{rows[3]['video_id']}.npz"
    before = read_mask_file(victim)[0]
    victim.unlink()
    _generate(config)
    assert np.array_equal(read_mask_file(victim)[0], before)
    assert {p: p.stat().st_mtime_ns for p in files if p != victim} == {p: t for p, t in stamps.items() if p != victim}

    for other, key in [({"clutter": 3}, "clutter"), ({"misalign": 0.0}, "misalign"), ({"masks": False}, "masks")]:
        with pytest.raises(SynthError, match=rf"other settings \(differ: {key} \(folder: .*, asked: "):
            _generate(_tiny(out, **({"classes": 4, "class_split": (2, 1, 1), "videos_per_class": 2, "clutter": 2,
                                     "misalign": 0.5, "masks": True} | other)))


def test_folder_from_before_the_variants_is_resumed_at_their_defaults(tmp_path):
    out = tmp_path / "old"
    config = _tiny(out, classes=3, class_split=(1, 1, 1), videos_per_class=1)
    _generate(config)
    stamp = json.loads((out / "synth.json").read_text())
    for key in ("masks", "clutter", "misalign"):
        del stamp[key]
    (out / "synth.json").write_text(json.dumps(stamp))
    _generate(config)  # accepted: those settings were the only ones there were
    with pytest.raises(SynthError, match="clutter"):
        _generate(_tiny(out, classes=3, class_split=(1, 1, 1), videos_per_class=1, clutter=1))


def test_synth_command_takes_the_variant_flags(tmp_path):
    from pipelines.cli import main

    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--classes", "3", "--videos-per-class", "1", "--frames", "8", "--size",
                 "32", "--workers", "1", "--masks", "--clutter", "1", "misalign=0.25"]) == 0
    stamp = json.loads((out / "synth.json").read_text())
    assert (stamp["masks"], stamp["clutter"], stamp["misalign"]) == (True, 1, 0.25)
    assert len(list((out / "masks").glob("*.npz"))) == 3
