"""The embedded default dataset: synthetic motion videos (H.264 mp4) plus a manifest.

Something-Something-like: a class is a *motion* (moving left to right, falling over, pushing an object
into another, ...), never an appearance. Every video draws its own shapes, colours, sizes, textured
background, clip length, and the start, duration and extent of the motion from a generator seeded by
``(seed, class id, video index)``, so two videos of a class share nothing but the motion, and the result
does not depend on how many workers render it.

Classes come in **time-reverse pairs**: each base motion has a forward class and a reversed partner
whose video is, literally, the forward rendering played backwards (:func:`render_clip` renders forward
and reverses the frame list). A method that ignores frame order cannot tell the partners apart, so test
splits that hold whole pairs measure temporal modelling.

Library: :func:`motion_classes` lists 128 classes (64 pairs) in 11 families; class ``2k`` is the
forward member of pair ``k`` and ``2k + 1`` its reverse. Those ids (and the video ids ``c017_v003``)
are stable across configs; the manifest's ``label`` follows the manifest convention instead (train
classes first, then val, then test, natural order of names; see :mod:`fsar.data.manifest`).

Class choice and splits (:func:`select_classes`): the pairs are shuffled by a generator seeded with
``seed``; whole pairs fill train, then val, then test (``count // 2`` pairs each); a split with an odd
count takes one member (chosen by the same generator) of a further pair, so no pair straddles two
splits unless ``classes`` is so close to 128 that no spare pair is left. Fewer classes than the library
thus means "the first pairs of a seeded shuffle"; the same seed always picks the same classes.

Output of :func:`generate` (all paths relative to ``out``)::

    videos/<split>/<class_slug>/<video_id>.mp4   one video, written atomically
    classes.json                                 chosen classes: id, name, family, partner, split, label
    synth.json                                   the settings the videos were made with (checked on rerun)
    manifest.parquet                             written last: its presence means the dataset is complete
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsar.atomic import atomic_path, atomic_write_text
from fsar.config import ConfigError

# Part of synth.json: bump whenever rendering or the class library changes, so that a rerun into an
from fsar.data.synthetic.motions import (
    _LIBRARY,
    _MOTIONS,
    MotionClass,
    motion_classes,
)
from fsar.data.synthetic.scene import (
    _compose,
    _scene,
)

# old folder refuses to mix videos of two versions instead of silently resuming.
RENDER_VERSION = 2

DEFAULT_FRACTIONS = (0.64, 0.12, 0.24)
SPLITS = ("train", "val", "test")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
TAU = 2.0 * math.pi


class SynthError(ConfigError):
    """A synthetic-data setting is invalid or clashes with an existing output folder (a ConfigError, so
    the command line reports it as a one-line error)."""


# ---------------------------------------------------------------- configuration
def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass
class SynthConfig:
    """``fsar synth``: the synthetic motion dataset and how to write it."""

    out: Path  # output folder: videos/, manifest.parquet, classes.json, synth.json
    classes: int = 100  # motion classes taken from the 128-class library (whole reverse pairs where possible)
    videos_per_class: int = 20  # videos per class
    frames: int = 32  # longest clip in frames; each clip has between ceil(0.75·frames) and frames
    size: int = 112  # frame side in pixels (square, even: yuv420p halves the chroma planes)
    fps: int = 12  # frame rate stored in the mp4
    seed: int = 0  # seeds the class choice, the splits and every video
    class_split: tuple[int, int, int] | None = None  # train/val/test class counts; None: 64/12/24 % of classes
    workers: int = field(default_factory=_default_workers)  # rendering+encoding processes (1: in-process)
    crf: int = 18  # x264 constant rate factor: lower is closer to the rendered frames and bigger
    preset: str = "veryfast"  # x264 speed preset

    def split_counts(self) -> tuple[int, int, int]:
        """Train/val/test class counts: ``class_split`` if given, else the default fractions of ``classes``."""
        if self.class_split is not None:
            counts = tuple(int(c) for c in self.class_split)
            if len(counts) != 3 or any(c < 0 for c in counts) or sum(counts) != self.classes:
                raise SynthError(f"class_split {self.class_split!r} must be three non-negative counts (train, val, "
                                 f"test) summing to classes={self.classes}")
            return counts  # type: ignore[return-value]
        # Largest-remainder rounding, shared with class-per-folder manifests: 100 -> 64/12/24.
        from fsar.data.folder_tree import class_split_counts

        return class_split_counts(self.classes, DEFAULT_FRACTIONS)

    def validate(self) -> None:
        """Raise SynthError naming the first bad setting and the fix."""
        library = len(motion_classes())
        if not 1 <= self.classes <= library:
            raise SynthError(f"classes={self.classes}: the motion library has {library} classes; pick 1..{library}")
        if self.classes < 3 and self.class_split is None:
            raise SynthError(f"classes={self.classes} cannot fill train/val/test; use at least 3 or give class_split")
        if self.videos_per_class < 1:
            raise SynthError(f"videos_per_class={self.videos_per_class} must be at least 1")
        if self.frames < 2:
            raise SynthError(f"frames={self.frames} must be at least 2")
        if self.size < 16 or self.size % 2:
            raise SynthError(f"size={self.size} must be an even number of pixels, at least 16")
        if self.seed < 0:
            raise SynthError(f"seed={self.seed} must be a non-negative integer")
        if self.fps < 1:
            raise SynthError(f"fps={self.fps} must be at least 1")
        if not 0 <= self.crf <= 51:
            raise SynthError(f"crf={self.crf} must be in 0..51 (x264)")
        if self.preset not in X264_PRESETS:
            raise SynthError(f"preset={self.preset!r} is not an x264 preset; pick one of {', '.join(X264_PRESETS)}")
        if self.workers < 1:
            raise SynthError(f"workers={self.workers} must be at least 1")
        self.split_counts()

    def stamp(self) -> dict[str, Any]:
        """The settings that decide what lands on disk (not ``out`` or ``workers``), for synth.json."""
        return {"render_version": RENDER_VERSION, "classes": self.classes, "videos_per_class": self.videos_per_class,
                "frames": self.frames, "size": self.size, "fps": self.fps, "seed": self.seed,
                "class_split": list(self.split_counts()), "crf": self.crf, "preset": self.preset}


# ---------------------------------------------------------------- rendering one clip
def clip_length(rng: np.random.Generator, frames: int) -> int:
    """The clip length a video draws first from its generator: uniform in [ceil(0.75·frames), frames]."""
    return int(rng.integers(max(2, math.ceil(0.75 * frames)), frames + 1))


def render_clip(motion_class: MotionClass, rng: np.random.Generator, *, frames: int, size: int) -> np.ndarray:
    """Render one video of ``motion_class``: (T, size, size, 3) uint8 RGB, T in [ceil(0.75·frames), frames].

    Draw order from ``rng``: clip length, scene (background, shapes, colours, sizes), then the motion's
    own parameters. A reversed class renders its forward motion with the same draws and reverses the
    frame order, so ``render_clip(reverse, rng_a) == render_clip(forward, rng_b)[::-1]`` for generators
    in the same state.
    """
    t_len = clip_length(rng, frames)
    fn, pools = _MOTIONS[motion_class.motion]
    background, objects = _scene(rng, size, pools)
    t = np.linspace(0.0, 1.0, t_len)
    tracks = fn(rng, t, [o.radius for o in objects])
    video = _compose(background, objects, tracks, t_len)
    return np.ascontiguousarray(video[::-1]) if motion_class.reversed else video


def video_rng(seed: int, class_id: int, index: int) -> np.random.Generator:
    """The generator of video ``index`` of class ``class_id``: independent of worker count and order."""
    return np.random.default_rng([seed, class_id, index])


# ---------------------------------------------------------------- encoding
def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 12, *, crf: int = 18,
              preset: str = "veryfast") -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as H.264/yuv420p mp4 at ``path``, atomically.

    No B-frames (``bf=0``): decode order equals display order, which keeps decord's frame-accurate
    seeking reliable. One encoder thread: parallelism comes from encoding many videos at once.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_mp4 {path}: frames must be (T, H, W, 3) uint8 with T > 0, got "
                         f"{frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"write_mp4 {path}: yuv420p needs even width and height, got {width}x{height}")
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, "bf": "0", "threads": "1"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---------------------------------------------------------------- class choice and splits
def select_classes(config: SynthConfig) -> dict[str, list[MotionClass]]:
    """The classes of each split (train/val/test), sorted by id; see the module docstring for the rule."""
    counts = dict(zip(SPLITS, config.split_counts(), strict=True))
    rng = np.random.default_rng([config.seed, 0x5EED])  # its own stream: no video draws from it
    pairs = [(_LIBRARY[2 * k], _LIBRARY[2 * k + 1]) for k in rng.permutation(len(_LIBRARY) // 2)]
    chosen: dict[str, list[MotionClass]] = {s: [] for s in SPLITS}
    cursor = 0
    for split in SPLITS:
        for pair in pairs[cursor:cursor + counts[split] // 2]:
            chosen[split].extend(pair)
        cursor += counts[split] // 2
    odd = [s for s in SPLITS if counts[s] % 2]
    spare = len(pairs) - cursor
    broken = max(0, len(odd) - spare)  # only when the library is nearly used up: a pair serves two splits
    for i in range(broken):
        fwd, rev = pairs[cursor]
        chosen[odd[2 * i]].append(fwd)
        chosen[odd[2 * i + 1]].append(rev)
        cursor += 1
    for split in odd[2 * broken:]:
        chosen[split].append(pairs[cursor][int(rng.integers(2))])
        cursor += 1
    return {s: sorted(cs, key=lambda c: c.id) for s, cs in chosen.items()}


# ---------------------------------------------------------------- dataset generation
def video_id(class_id: int, index: int, videos_per_class: int) -> str:
    """``c017_v003``: library class id and video index, zero-padded."""
    width = max(3, len(str(videos_per_class - 1)))
    return f"c{class_id:03d}_v{index:0{width}d}"


def _render_job(job: tuple[MotionClass, list[tuple[int, str]], int, int, int, int, int, str]) -> int:
    """Worker: render and write the listed videos of one class; returns how many were written."""
    motion_class, todo, seed, frames, size, fps, crf, preset = job
    for index, path in todo:
        if _complete(Path(path)):  # another run may have finished it meanwhile
            continue
        try:
            video = render_clip(motion_class, video_rng(seed, motion_class.id, index), frames=frames, size=size)
            write_mp4(path, video, fps, crf=crf, preset=preset)
        except Exception as exc:
            raise RuntimeError(f"synthetic video {path} (class {motion_class.id} {motion_class.name!r}, "
                               f"index {index}): {exc}") from exc
    return len(todo)


def _complete(path: Path) -> bool:
    # Videos are renamed into place only once fully written, so any non-empty file is a finished one.
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _check_stamp(out: Path, stamp: dict[str, Any]) -> None:
    path = out / "synth.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old != stamp:
            diff = sorted(k for k in stamp.keys() | (old or {}).keys() if (old or {}).get(k) != stamp.get(k))
            raise SynthError(f"{out} holds a synthetic dataset made with other settings (differ: {', '.join(diff)}; "
                             f"see {path}); write to a new --out folder or delete {out}")
        return
    atomic_write_text(path, json.dumps(stamp, indent=2) + "\n")


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return  # a rerun leaves finished outputs untouched
    atomic_write_text(path, text)


def generate(config: SynthConfig, *, progress: bool = True) -> Path:
    """Write the dataset under ``config.out`` and return the manifest path.

    Resumable: finished videos are kept (never re-encoded), missing ones are written, and the manifest
    comes last. Refuses (SynthError) a folder made with different settings. Parallel over classes in
    ``config.workers`` spawned processes; the files do not depend on the worker count. Spawned workers
    re-import the calling script, so a script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard (the ``fsar`` command and pytest have it).
    """
    from tqdm.auto import tqdm

    from fsar.data.manifest import assign_labels, manifest_table, write_manifest

    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_stamp(out, config.stamp())
    by_split = select_classes(config)
    labels = assign_labels({s: [c.name for c in cs] for s, cs in by_split.items()})
    split_of = {c.id: s for s, cs in by_split.items() for c in cs}

    records: list[dict[str, Any]] = []
    jobs = []
    for split, classes in by_split.items():
        for mc in classes:
            todo = []
            for index in range(config.videos_per_class):
                vid = video_id(mc.id, index, config.videos_per_class)
                rel = f"videos/{split}/{mc.slug}/{vid}.mp4"
                records.append({"video_id": vid, "path": rel, "label": labels[mc.name], "class_name": mc.name,
                                "split": split, "num_frames": clip_length(video_rng(config.seed, mc.id, index),
                                                                         config.frames)})
                if not _complete(out / rel):
                    todo.append((index, str(out / rel)))
            if todo:
                jobs.append((mc, todo, config.seed, config.frames, config.size, config.fps, config.crf, config.preset))

    total = len(records)
    pending = sum(len(j[1]) for j in jobs)
    with tqdm(total=total, initial=total - pending, unit="video", desc="synth", disable=not progress) as bar:
        if config.workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                bar.update(_render_job(job))
        else:
            # spawn: no inherited locks or threads from a parent that may run Ray or torch.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(config.workers, len(jobs))) as pool:
                for done in pool.imap_unordered(_render_job, jobs):
                    bar.update(done)

    class_rows = []
    for mc in sorted((c for cs in by_split.values() for c in cs), key=lambda c: labels[c.name]):
        partner = _LIBRARY[mc.partner]
        class_rows.append({"label": labels[mc.name], "id": mc.id, "name": mc.name, "slug": mc.slug,
                           "family": mc.family, "motion": mc.motion, "reversed": mc.reversed,
                           "partner": mc.partner, "partner_name": partner.name,
                           "partner_split": split_of.get(mc.partner), "split": split_of[mc.id]})
    _write_if_changed(out / "classes.json", json.dumps(class_rows, indent=1) + "\n")

    manifest = out / "manifest.parquet"
    table = manifest_table(records)
    if manifest.is_file():
        import pyarrow.parquet as pq

        try:
            if pq.read_table(manifest).equals(table):
                return manifest
        except Exception:  # noqa: BLE001 — an unreadable old manifest is simply rewritten
            pass
    write_manifest(table, manifest)
    return manifest
